"""What gets shipped to a host: bundles (deterministic .tar.gz files) named by the SHA-256 of their bytes.

Two kinds, cached apart on the host so that editing a servicer never re-ships grpcio:
- the *agent* bundle: the agent's generated modules, its servicer and the remote runtime (tens of KiB);
- the *deps* bundle for one host Python/platform tag (``cp311-x86_64``): grpcio, protobuf, typing_extensions.
  Built from the controller's own installed packages when the tag matches, else from wheels downloaded once
  into a local wheelhouse with ``pip download`` for that tag.
Built bundles are cached on the controller under ``~/.cache/sshfleet/controller`` so a warm start hashes nothing.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).parent / "remote"
DEPS_DISTRIBUTIONS = ("grpcio", "protobuf", "typing_extensions")
_lock = threading.Lock()


def controller_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base.mkdir(parents=True, exist_ok=True)
    # ~/.cache/sshfleet is also the payload cache when this machine is a host (shared $HOME): keep it 0700,
    # as the bootstrap checks.
    for path in (base / "sshfleet", base / "sshfleet" / "controller"):
        path.mkdir(exist_ok=True, mode=0o700)
    return path


@dataclass(frozen=True)
class Bundle:
    """One shippable tarball: ``name`` is "agent" or "deps", ``hash`` the SHA-256 of ``data``."""

    name: str
    hash: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def header(self) -> bytes:
        return json.dumps({"name": self.name, "hash": self.hash, "size": self.size}).encode() + b"\n"


def make_tarball(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A byte-for-byte reproducible tar.gz: sorted names, zero times and owners, fixed modes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o755 if name.endswith(".so") else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _bundle(name: str, data: bytes) -> Bundle:
    return Bundle(name=name, hash=hashlib.sha256(data).hexdigest(), data=data)


def agent_bundle(files: Mapping[str, Path]) -> Bundle:
    """The agent bundle: ``files`` maps the module file name on the host to the local file, plus the runtime."""
    contents = [(arcname, Path(path).read_bytes()) for arcname, path in files.items()]
    contents.append(("sshfleet_runtime.py", (RUNTIME_DIR / "runtime.py").read_bytes()))
    return _bundle("agent", make_tarball(contents))


@functools.lru_cache(maxsize=1)
def bootstrap_source() -> bytes:
    return (RUNTIME_DIR / "bootstrap.py").read_bytes()


# --- deps bundles -------------------------------------------------------------------------------------------


def local_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"


@functools.lru_cache(maxsize=1)
def _dist_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in DEPS_DISTRIBUTIONS}


def _installed_files() -> list[tuple[str, bytes]]:
    """The controller's own installed grpcio/protobuf/typing_extensions, as they sit in site-packages."""
    out: list[tuple[str, bytes]] = []
    for name in DEPS_DISTRIBUTIONS:
        dist = importlib.metadata.distribution(name)
        for rel in dist.files or ():
            parts = rel.parts
            if parts[0].startswith("..") or parts[0].endswith(".dist-info") or "__pycache__" in parts:
                continue
            if rel.suffix == ".pyc":
                continue
            path = Path(str(dist.locate_file(rel)))
            if path.is_file():
                out.append((rel.as_posix(), path.read_bytes()))
    return out


def _manylinux_platforms(machine: str, libc_version: str) -> list[str]:
    """Every manylinux platform tag a glibc of ``libc_version`` can run, newest first."""
    try:
        major, minor = (int(x) for x in libc_version.split(".")[:2])
    except ValueError:
        major, minor = 2, 17
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)] if major == 2 else []
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{machine}" for m, name in legacy.items() if major > 2 or minor >= m]
    return tags


def _wheel_files(facts: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Download (once) the wheels for the host's tag, pinned to the controller's versions, and unpack them."""
    tag = facts["tag"]
    pyver = tag[2:].split("-")[0]
    wheelhouse = controller_cache() / "wheelhouse" / tag
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in _dist_versions().items()]
    wheels = sorted(wheelhouse.glob("*.whl"))
    if len(wheels) < len(pins):
        if facts.get("libc") != "glibc":
            raise DepsUnavailable(f"host libc {facts.get('libc') or 'unknown'!r} is not glibc: no wheels to serve it")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", f"{pyver[0]}.{pyver[1:]}", "--implementation", "cp"]
        cmd += ["--abi", f"cp{pyver}", "--abi", "abi3", "--abi", "none"]
        for plat in _manylinux_platforms(facts["machine"], facts.get("libc_version", "")):
            cmd += ["--platform", plat]
        cmd += ["-d", str(wheelhouse), *pins]
        log.info("fetching wheels for %s: %s", tag, " ".join(pins))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise DepsUnavailable(
                f"no wheels of {', '.join(pins)} for Python {pyver[0]}.{pyver[1:]} on {facts['machine']}: "
                + (proc.stderr.strip().splitlines() or ["pip download failed"])[-1]
            )
        wheels = sorted(wheelhouse.glob("*.whl"))
    out: list[tuple[str, bytes]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                top = info.filename.split("/", 1)[0]
                if info.is_dir() or top.endswith((".dist-info", ".data")):
                    continue
                out.append((info.filename, zf.read(info)))
    return out


class DepsUnavailable(Exception):
    """The controller cannot produce grpcio/protobuf for a host's Python (translated to RemotePythonError)."""


def deps_bundle(facts: Mapping[str, Any]) -> Bundle:
    """The deps bundle for the host described by ``facts`` (from the bootstrap probe), built at most once."""
    tag = str(facts["tag"])
    cached = controller_cache() / "bundles" / f"deps-{tag}-{_versions_key()}.tar.gz"
    with _lock:
        if cached.is_file():
            return _bundle("deps", cached.read_bytes())
        files = _installed_files() if tag == local_tag() else _wheel_files(facts)
        data = make_tarball(files)
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, cached)
        _remember(tag, hashlib.sha256(data).hexdigest())
        return _bundle("deps", data)


def _versions_key() -> str:
    return hashlib.sha256(json.dumps(_dist_versions(), sort_keys=True).encode()).hexdigest()[:16]


def _index_path() -> Path:
    """tag -> hash for the installed grpcio/protobuf versions; another version set gets another index."""
    return controller_cache() / f"deps-index-{_versions_key()}.json"


def _remember(tag: str, digest: str) -> None:
    index = known_deps()
    index[tag] = digest
    fd, tmp = tempfile.mkstemp(dir=_index_path().parent)
    with os.fdopen(fd, "w") as f:
        json.dump(index, f)
    os.replace(tmp, _index_path())


def known_deps() -> dict[str, str]:
    """tag -> hash of every deps bundle built for the current package versions, for the warm-start probe."""
    try:
        index = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in index.items()} if isinstance(index, dict) else {}


def prepare_local_deps() -> Optional[Bundle]:
    """Build the controller-tag deps bundle ahead of time, so a warm start never waits for it."""
    return deps_bundle({"tag": local_tag(), "machine": platform.machine()})
