"""From an agent's .proto to Python: the pb2 modules, the client class and the servicer template.

``generate()`` writes them next to the user's code (``sshfleet generate``); ``load_agent()`` builds them in a
private cache and returns the client class, for scripts that want an agent straight from a .proto.

For ``NAME.proto`` with ``service X``: ``NAME_pb2.py`` (+ ``.pyi``) and ``NAME_pb2_grpc.py`` from
grpcio-tools, the client ``NAME.py`` with ``class XAgent(sshfleet.Agent)`` ("Agent" appended unless X ends
with it; its methods call the public hooks ``invoke()`` / ``invoke_stream()``) and ``XAgentException`` (what
``raise_for_status()`` of its Responses raises), and the template ``NAME_servicer.py`` with ``class XServicer``
and ``AddServicer(server)``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from sshfleet._codegen._model import ServiceInfo, service_info
from sshfleet._codegen._protoc import (
    CompiledProto,
    compile_proto,
    generator_version,
    header,
    patched_pb2_grpc,
)
from sshfleet._codegen._render import render_client, render_servicer
from sshfleet.errors import ProtoError

if TYPE_CHECKING:
    from sshfleet._agent import Agent

__all__ = ["GeneratedFile", "GeneratedProto", "build", "generate", "load_agent"]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class GeneratedProto:
    """Everything generated for one .proto, as file name -> text; nothing written yet."""

    info: ServiceInfo
    modules: dict[str, str]  # NAME_pb2.py, NAME_pb2.pyi, NAME_pb2_grpc.py, NAME.py: always rewritten
    servicer_name: str  # NAME_servicer.py: written only when missing (or forced)
    servicer: str


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    action: str  # "wrote", "unchanged", or "kept" (an existing servicer left alone)


def build(proto_path: PathLike, include_dirs: Sequence[PathLike] = ()) -> GeneratedProto:
    """Compile ``proto_path`` and render every file for it, in memory. Raises :class:`ProtoError`."""
    compiled: CompiledProto = compile_proto(proto_path, include_dirs)
    info = service_info(compiled)
    name = compiled.name
    modules = {
        f"{name}_pb2.py": header(compiled) + compiled.pb2,
        f"{name}_pb2.pyi": header(compiled) + compiled.pb2_pyi,
        f"{name}_pb2_grpc.py": patched_pb2_grpc(compiled),
        f"{name}.py": render_client(info),
    }
    return GeneratedProto(info, modules, f"{name}_servicer.py", render_servicer(info))


def generate(
    protos: Sequence[PathLike],
    out_dir: PathLike | None = None,
    *,
    force: bool = False,
    include_dirs: Sequence[PathLike] = (),
) -> list[GeneratedFile]:
    """Generate the modules of every proto into ``out_dir`` (default: each proto's own directory).

    Every proto is compiled before anything is written, so an error in one leaves the tree untouched. An
    existing servicer is kept unless ``force``: it holds the agent author's code.
    """
    if not protos:
        raise ProtoError("no .proto file given")
    planned: list[tuple[Path, GeneratedProto]] = []
    targets: dict[Path, Path] = {}
    for proto in protos:
        generated = build(proto, include_dirs)
        directory = Path(out_dir) if out_dir is not None else Path(proto).parent
        client = (directory / f"{generated.info.proto_name}.py").resolve()
        if client in targets:
            raise ProtoError(f"{proto} and {targets[client]} would both generate {client}")
        targets[client] = Path(proto)
        planned.append((directory, generated))
    results = []
    for directory, generated in planned:
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, text in generated.modules.items():
            results.append(_write_if_changed(directory / file_name, text))
        servicer = directory / generated.servicer_name
        if servicer.exists() and not force:
            results.append(GeneratedFile(servicer, "kept"))
        else:
            results.append(_write_if_changed(servicer, generated.servicer))
    return results


def _write_if_changed(path: Path, text: str) -> GeneratedFile:
    try:
        if path.read_text(encoding="utf-8") == text:
            return GeneratedFile(path, "unchanged")
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    _write_atomically(path, text)
    return GeneratedFile(path, "wrote")


def _write_atomically(path: Path, text: str) -> None:
    # A reader (an agent importing the module, an editor) never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sshfleet" / "generated"


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) or check that an existing one is ours and not writable by others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    # We import code from here: another user able to write into it could run code as us.
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ProtoError(f"{path}: not owned by you or writable by others; refusing to import from it")


def _cache_key(proto: Path, proto_bytes: bytes, servicer_bytes: bytes | None) -> str:
    digest = hashlib.sha256()
    for part in (
        generator_version().encode(),
        proto.name.encode(),
        proto_bytes,
        b"template" if servicer_bytes is None else b"servicer:" + servicer_bytes,
    ):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:32]


def load_agent(proto_path: PathLike, *, include_dirs: Sequence[PathLike] = ()) -> type[Agent]:
    """The client class for ``proto_path``, generated into ``~/.cache/sshfleet/generated/<hash>/``.

    Nothing is written next to the proto. The servicer shipped to the hosts is ``NAME_servicer.py`` beside
    the proto when it exists, else the template (every method answers "Not implemented"). The cache is keyed
    by the content of both, so editing either takes effect on the next call. Raises :class:`ProtoError`.
    """
    proto = Path(proto_path)
    try:
        proto_bytes = proto.read_bytes()
    except OSError as exc:
        raise ProtoError(f"{proto}: cannot read: {exc.strerror or exc}") from exc
    servicer_path = proto.with_name(f"{proto.stem}_servicer.py")
    servicer_bytes = servicer_path.read_bytes() if servicer_path.is_file() else None
    key = _cache_key(proto, proto_bytes, servicer_bytes)
    root = _cache_root()
    _private_dir(root)
    directory = root / key
    if not (directory / "__init__.py").is_file():
        generated = build(proto, include_dirs)
        _install(directory, generated, servicer_bytes)
    return _import_client(directory, key, proto)


def _install(directory: Path, generated: GeneratedProto, servicer_bytes: bytes | None) -> None:
    # Build in a sibling directory and rename: a concurrent load_agent sees all of it or none of it.
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".staging-"))
    try:
        for file_name, text in generated.modules.items():
            (staging / file_name).write_text(text, encoding="utf-8")
        servicer = staging / generated.servicer_name
        if servicer_bytes is None:
            servicer.write_text(generated.servicer, encoding="utf-8")
        else:
            servicer.write_bytes(servicer_bytes)
        (staging / "__init__.py").write_text("# Generated by sshfleet.load_agent; a private cache.\n")
        try:
            os.rename(staging, directory)
        except OSError:
            if not (directory / "__init__.py").is_file():
                raise
    except OSError as exc:
        raise ProtoError(f"cannot write the generated agent into {directory}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _import_client(directory: Path, key: str, proto: Path) -> type[Agent]:
    """Import the cached modules as a private package, so relative imports work and sys.path stays clean."""
    package = f"_sshfleet_generated_{key}"
    client_name = f"{package}.{proto.stem}"
    if client_name not in sys.modules:
        if package not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                package, directory / "__init__.py", submodule_search_locations=[str(directory)]
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[package] = module
            spec.loader.exec_module(module)
        try:
            importlib.import_module(client_name)
        except TypeError as exc:
            # protobuf keeps one registry of .proto files per process, keyed by file name.
            raise ProtoError(
                f"{proto}: cannot load it: another {proto.name} with different content is already loaded "
                f"in this process ({exc})"
            ) from exc
    client = sys.modules[client_name]
    agent_class: type[Agent] = getattr(client, client.__all__[0])
    return agent_class
