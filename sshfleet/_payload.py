"""What gets shipped to a host: bundles (deterministic .tar.gz files) named by the SHA-256 of their bytes.

Two kinds, cached apart on the host so that editing a servicer never re-ships grpcio:
- the *agent* bundle: the agent's generated modules, its servicer and the remote runtime (tens of KiB), plus
  copies of the generated modules adapted for older grpcio/protobuf runtimes (see ``adapt_pb2``); the runtime
  picks them when the host's grpcio/protobuf predate the gencode, so one agent bundle serves every host Python;
- the *deps* bundle for one host Python/platform tag (``cp39-x86_64``): grpcio, protobuf (and typing_extensions
  when grpcio needs it). Built from the controller's own installed packages when the tag matches, else from the
  newest wheels, no newer than the controller's own versions, published for that Python and platform: fetched
  once with ``pip download`` into a local wheelhouse, or taken from ``$SSHFLEET_WHEELHOUSE`` on a controller
  without index access (filled beforehand by ``sshfleet wheelhouse``).
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
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).parent / "remote"
DEPS_DISTRIBUTIONS = ("grpcio", "protobuf", "typing_extensions")
# What a deps bundle built from wheels may hold: six is what grpcio < 1.49 (the newest for Python 3.6) requires.
WHEEL_DISTRIBUTIONS = (*DEPS_DISTRIBUTIONS, "six")
REQUIRED_DISTRIBUTIONS = ("grpcio", "protobuf")
WHEELHOUSE_ENV = "SSHFLEET_WHEELHOUSE"
# Adapted generated modules go here in the agent bundle; runtime.py puts it first on sys.path when needed.
COMPAT_DIR = "sshfleet_compat"
GENCODE_FILE = "gencode.json"
BUILDER_MODULE = "sshfleet_pb2_builder"  # remote/pb2_builder.py, for protobuf < 3.20
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
    """The agent bundle: ``files`` maps the module file name on the host to the local file, plus the runtime
    and, for generated modules that check their runtime's version, copies adapted for older runtimes."""
    contents = [(arcname, Path(path).read_bytes()) for arcname, path in files.items()]
    contents.append(("sshfleet_runtime.py", (RUNTIME_DIR / "runtime.py").read_bytes()))
    contents += compat_gencode(contents)
    return _bundle("agent", make_tarball(contents))


@functools.lru_cache(maxsize=1)
def bootstrap_source() -> bytes:
    return (RUNTIME_DIR / "bootstrap.py").read_bytes()


# --- generated modules for older runtimes ---------------------------------------------------------------------
#
# A *_pb2.py depends only on its serialized descriptor and protobuf's `builder` (protobuf >= 3.20); a
# *_pb2_grpc.py only on grpc's handler API, stable since grpcio 1.x. What ties them to the generator's runtime
# are two import-time guards, which the adapted copies drop: everything else is kept byte for byte.

_PB2_GUARD = re.compile(
    r"^from google\.protobuf import runtime_version as _runtime_version\n"
    r"|^_runtime_version\.ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.\w+,"
    r"\s*(?P<major>\d+),\s*(?P<minor>\d+),\s*(?P<patch>\d+),[^)]*\)\n",
    re.MULTILINE,
)
_GRPC_GUARD = re.compile(
    r"^GRPC_GENERATED_VERSION = '(?P<version>[^']+)'\n.*?^if _version_not_supported:\n(?:[ \t]+[^\n]*\n)*",
    re.MULTILINE | re.DOTALL,
)
_REGISTERED_METHOD = re.compile(r",\s*_registered_method=True\)")
_ADAPTED = "# sshfleet: adapted for hosts whose {} predates this gencode: its version guard is removed.\n"


_BUILDER_IMPORT = "from google.protobuf.internal import builder as _builder\n"
_BUILDER_FALLBACK = (
    "try:\n"
    "    from google.protobuf.internal import builder as _builder\n"
    "except ImportError:  # protobuf < 3.20 (the newest for Python 3.6): sshfleet's backport of its two functions\n"
    f"    import {BUILDER_MODULE} as _builder\n"
)


def adapt_pb2(text: str) -> tuple[str, Optional[str]]:
    """``text`` without protobuf's runtime version check and with a fallback for protobuf's ``builder``, and the
    version the check asked for (None: there is none, the module is shipped as it is)."""
    versions = [m for m in _PB2_GUARD.finditer(text) if m["major"]]
    if not versions:
        return text, None
    version = ".".join(versions[0].group("major", "minor", "patch"))
    adapted = _PB2_GUARD.sub("", text).replace(_BUILDER_IMPORT, _BUILDER_FALLBACK, 1)
    return _ADAPTED.format("protobuf") + adapted, version


def adapt_pb2_grpc(text: str) -> tuple[str, Optional[str]]:
    """``text`` without grpcio's version guard and the ``_registered_method`` flag (grpcio >= 1.63 only)."""
    match = _GRPC_GUARD.search(text)
    if match is None:
        return text, None
    adapted = _GRPC_GUARD.sub("", text)
    return _ADAPTED.format("grpcio") + _REGISTERED_METHOD.sub(")", adapted), match["version"]


def compat_gencode(contents: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Adapted copies of the generated modules in ``contents`` under COMPAT_DIR, with the runtime versions the
    originals require (GENCODE_FILE), or nothing when no module checks its runtime."""
    out: list[tuple[str, bytes]] = []
    needs: dict[str, str] = {}
    for name, data in contents:
        if "/" in name or not name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        text = data.decode("utf-8")
        grpc_module = name.endswith("_pb2_grpc.py")
        adapted, version = adapt_pb2_grpc(text) if grpc_module else adapt_pb2(text)
        if version is None:
            continue
        dist = "grpcio" if grpc_module else "protobuf"
        if dist not in needs or version_key(version) > version_key(needs[dist]):
            needs[dist] = version
        out.append((f"{COMPAT_DIR}/{name}", adapted.encode("utf-8")))
    if out:
        out.append((f"{COMPAT_DIR}/{GENCODE_FILE}", json.dumps(needs, sort_keys=True).encode()))
        out.append((f"{COMPAT_DIR}/{BUILDER_MODULE}.py", (RUNTIME_DIR / "pb2_builder.py").read_bytes()))
    return out


# --- which wheels a host can run (pure logic) -----------------------------------------------------------------


def version_key(version: str) -> tuple[int, ...]:
    """The release numbers of a version ("1.80.1" -> (1, 80, 1)); pre-releases are never picked (see below)."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:4])


_FINAL = re.compile(r"^\d+(\.\d+)*(\.post\d+)?$")


@dataclass(frozen=True)
class HostRuntime:
    """What decides which wheels a host can run: its Python, machine and C library, from the bootstrap's facts."""

    python: tuple[int, int]
    machine: str
    libc: str  # "glibc", "musl", or "" when unknown
    libc_version: tuple[int, int]

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> HostRuntime:
        digits = str(facts["tag"]).split("-")[0][2:]
        python = (int(digits[0]), int(digits[1:]))
        libc = str(facts.get("libc") or "")
        numbers = [int(x) for x in re.findall(r"\d+", str(facts.get("libc_version") or ""))[:2]]
        default = (1, 1) if libc == "musl" else (2, 17)
        libc_version = (numbers[0], numbers[1]) if len(numbers) == 2 else default
        return cls(python, str(facts["machine"]), "glibc" if libc.startswith("glibc") else libc, libc_version)

    @property
    def abi(self) -> str:
        """CPython's ABI tag: 3.7 and older were built with pymalloc's "m" flag."""
        return f"cp{self.python[0]}{self.python[1]}" + ("m" if self.python < (3, 8) else "")

    @property
    def version_text(self) -> str:
        return f"{self.python[0]}.{self.python[1]}"

    def platforms(self) -> list[str]:
        """Platform tags this host runs, newest first."""
        major, minor = self.libc_version
        if self.libc == "musl":
            return [f"musllinux_{major}_{m}_{self.machine}" for m in range(minor, -1, -1)]
        if self.libc == "glibc":
            return _manylinux_platforms(self.machine, f"{major}.{minor}")
        return []

    def tags(self) -> list[str]:
        """Wheel tags ("interpreter-abi-platform") this host runs, best first, as pip orders them."""
        py = f"cp{self.python[0]}{self.python[1]}"
        out = []
        for plat in self.platforms():
            out.append(f"{py}-{self.abi}-{plat}")
            out += [f"cp{self.python[0]}{m}-abi3-{plat}" for m in range(self.python[1], 1, -1)]
            out.append(f"{py}-none-{plat}")
        out += [f"{py}-none-any", f"py{self.python[0]}{self.python[1]}-none-any", f"py{self.python[0]}-none-any"]
        return out

    def fetch_platform(self) -> str:
        """The platform tag to name in a hint: this host's own C library version, which takes older wheels too."""
        major, minor = self.libc_version
        if self.libc == "musl":
            return f"musllinux_{major}_{minor}_{self.machine}"
        return (
            f"manylinux2014_{self.machine}"
            if (major, minor) == (2, 17)
            else f"manylinux_{major}_{minor}_{self.machine}"
        )

    def describe(self) -> str:
        libc = f"{self.libc} {self.libc_version[0]}.{self.libc_version[1]}" if self.libc else "unknown libc"
        return f"Python {self.version_text} on {self.machine} ({libc})"


def runtime_for_platform(python: tuple[int, int], platform_tag: str) -> HostRuntime:
    """The host a platform tag describes: ``manylinux2014_aarch64`` is glibc >= 2.17 on aarch64."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    for prefix, version in legacy.items():
        if platform_tag.startswith(prefix + "_"):
            return HostRuntime(python, platform_tag[len(prefix) + 1 :], "glibc", version)
    match = re.fullmatch(r"(manylinux|musllinux)_(\d+)_(\d+)_(\w+)", platform_tag)
    if match is None:
        raise ValueError(f"{platform_tag!r} is not a manylinux or musllinux platform tag (e.g. manylinux2014_x86_64)")
    libc = "glibc" if match[1] == "manylinux" else "musl"
    return HostRuntime(python, match[4], libc, (int(match[2]), int(match[3])))


@dataclass(frozen=True)
class Wheel:
    """A wheel file named by the standard: ``dist-version(-build)?-python-abi-platform.whl``."""

    path: Path
    dist: str
    version: str
    tags: frozenset[str]

    @classmethod
    def parse(cls, path: Path) -> Optional[Wheel]:
        parts = path.name[: -len(".whl")].split("-") if path.name.endswith(".whl") else []
        if len(parts) not in (5, 6):
            return None
        dist, version = parts[0].lower().replace("-", "_").replace(".", "_"), parts[1]
        tags = frozenset(
            f"{i}-{a}-{p}" for i in parts[-3].split(".") for a in parts[-2].split(".") for p in parts[-1].split(".")
        )
        return cls(path, dist, version, tags)

    def _metadata(self) -> str:
        try:
            with zipfile.ZipFile(self.path) as zf:
                name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
                return zf.read(name).decode("utf-8", "replace")
        except (OSError, StopIteration, zipfile.BadZipFile):
            return ""

    def requires(self) -> set[str]:
        """Distributions this wheel needs at run time (Requires-Dist without extras), normalized."""
        out = set()
        for line in self._metadata().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                match = re.match(r"Requires-Dist:\s*([A-Za-z0-9_.\-]+)", line)
                if match:
                    out.add(match[1].lower().replace("-", "_").replace(".", "_"))
        return out

    def supports(self, python: tuple[int, int]) -> bool:
        """Whether the wheel's Requires-Python admits ``python`` (a pure-Python wheel's tags do not say)."""
        for line in self._metadata().splitlines():
            if line.startswith("Requires-Python:"):
                return python_admitted(line.partition(":")[2], python)
        return True


def python_admitted(specifiers: str, python: tuple[int, int]) -> bool:
    """Whether a Requires-Python such as ">=3.7, !=3.8.*, <4" admits Python ``python``, compared on major.minor
    (micro versions do not decide which wheels a host gets)."""
    compare = {
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "~=": lambda a, b: a >= b,
    }
    for spec in specifiers.split(","):
        match = re.fullmatch(r"\s*(>=|<=|==|!=|>|<|~=)\s*(\d+(?:\.\d+)*)(\.\*)?\s*", spec)
        if match is None:
            continue  # a form we do not know: let pip's own choice stand
        want = tuple(int(x) for x in match[2].split("."))
        if match[3]:  # "==3.8.*" / "!=3.8.*": a prefix
            if (python[: len(want)] == want) != (match[1] == "=="):
                return False
        elif not compare[match[1]](python, (*want, 0)[:2]):
            return False
    return True


def select_wheels(
    wheels: Iterable[Path], host: HostRuntime, ceilings: Mapping[str, str]
) -> tuple[dict[str, Wheel], list[str]]:
    """For each of WHEEL_DISTRIBUTIONS, the newest final release among ``wheels`` that ``host`` runs and that is
    no newer than ``ceilings[dist]`` (the controller's own version, whose gencode is the newest we ship); then
    which required distributions are missing (grpcio, protobuf, and whatever the chosen ones require)."""
    rank = {tag: i for i, tag in enumerate(host.tags())}
    candidates: dict[str, list[tuple[tuple[tuple[int, ...], int], Wheel]]] = {}
    for path in wheels:
        wheel = Wheel.parse(path)
        if wheel is None or wheel.dist not in WHEEL_DISTRIBUTIONS or not _FINAL.match(wheel.version):
            continue
        ceiling = ceilings.get(wheel.dist)
        if ceiling is not None and version_key(wheel.version) > version_key(ceiling):
            continue
        fits = [rank[t] for t in wheel.tags if t in rank]
        if not fits:
            continue
        candidates.setdefault(wheel.dist, []).append(((version_key(wheel.version), -min(fits)), wheel))
    chosen = {}
    for dist, found in candidates.items():
        found.sort(key=lambda item: item[0], reverse=True)
        usable = next((wheel for _, wheel in found if wheel.supports(host.python)), None)
        if usable is not None:
            chosen[dist] = usable
    needed = set(REQUIRED_DISTRIBUTIONS)
    for dist in REQUIRED_DISTRIBUTIONS:
        if dist in chosen:
            needed |= chosen[dist].requires() & set(WHEEL_DISTRIBUTIONS)
    chosen = {dist: wheel for dist, wheel in chosen.items() if dist in needed}
    return chosen, sorted(needed - set(chosen))


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


# --- wheelhouses ----------------------------------------------------------------------------------------------


def offline_wheelhouses() -> list[Path]:
    """``$SSHFLEET_WHEELHOUSE`` (directories separated by ':'): set, the controller never asks an index."""
    value = os.environ.get(WHEELHOUSE_ENV, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def fetch_command(host: HostRuntime) -> str:
    """The command that fills a wheelhouse for ``host`` on a machine with index access."""
    return f"sshfleet wheelhouse --python {host.version_text} --platform {host.fetch_platform()}"


def fetch_wheels(host: HostRuntime, dest: Path, ceilings: Mapping[str, str], *, timeout: float = 600) -> None:
    """``pip download`` the newest grpcio/protobuf (and what they need) that ``host`` runs into ``dest``.

    Raises DepsUnavailable with pip's last line when the index has none or cannot be reached.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
    cmd += ["--python-version", host.version_text, "--implementation", "cp", "--abi", host.abi, "--abi", "abi3"]
    cmd += ["--abi", "none"]
    for plat in host.platforms():
        cmd += ["--platform", plat]
    wanted = [f"{dist}<={ceilings[dist]}" if dist in ceilings else dist for dist in REQUIRED_DISTRIBUTIONS]
    cmd += ["-d", str(dest), *wanted]
    log.info("fetching wheels for %s: %s", host.describe(), " ".join(wanted))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DepsUnavailable(f"pip download of {' '.join(wanted)} took over {timeout:g}s") from exc
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or ["pip download failed"]
        raise DepsUnavailable(f"no wheels of {', '.join(wanted)} for {host.describe()}: {errors[-1]}")


def controller_versions() -> dict[str, str]:
    """The controller's own grpcio/protobuf/typing_extensions versions: the newest any host is given, since the
    agents' gencode comes from them."""
    return dict(_dist_versions())


def wheels_for(host: HostRuntime) -> dict[str, Wheel]:
    """The wheels to ship to ``host``, fetching them first unless the controller is offline (see module doc)."""
    ceilings = controller_versions()
    offline = offline_wheelhouses()
    if offline:
        found = [w for d in offline if d.is_dir() for w in d.rglob("*.whl")]
        chosen, missing = select_wheels(found, host, ceilings)
        if missing:
            where = os.pathsep.join(str(d) for d in offline)
            raise DepsUnavailable(
                f"no wheel of {', '.join(missing)} for {host.describe()} in {WHEELHOUSE_ENV}={where}; on a "
                f"machine with index access run `{fetch_command(host)} -o DIR` and copy DIR there"
            )
        return chosen
    wheelhouse = controller_cache() / "wheelhouse"
    try:
        fetch_wheels(host, wheelhouse / f"cp{host.python[0]}{host.python[1]}-{host.machine}-{host.libc}", ceilings)
    except DepsUnavailable as exc:
        fetch_error: Optional[DepsUnavailable] = exc
    else:
        fetch_error = None
    chosen, missing = select_wheels(wheelhouse.rglob("*.whl"), host, ceilings)
    if missing:
        why = f" ({fetch_error})" if fetch_error else ""
        raise DepsUnavailable(
            f"no wheel of {', '.join(missing)} published for {host.describe()}{why}; an air-gapped controller "
            f"needs `{fetch_command(host)} -o DIR` run elsewhere and {WHEELHOUSE_ENV}=DIR"
        )
    if fetch_error is not None:
        log.warning("%s; using the wheels already in %s", fetch_error, wheelhouse)
    return chosen


def _unpack(wheels: Iterable[Wheel]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel.path) as zf:
            for info in zf.infolist():
                top = info.filename.split("/", 1)[0]
                if info.is_dir() or top.endswith((".dist-info", ".data")):
                    continue
                out.append((info.filename, zf.read(info)))
    return out


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


class DepsUnavailable(Exception):
    """The controller cannot produce grpcio/protobuf for a host's Python (translated to RemotePythonError)."""


def deps_bundle(facts: Mapping[str, Any]) -> Bundle:
    """The deps bundle for the host described by ``facts`` (from the bootstrap probe), built at most once."""
    tag = str(facts["tag"])
    cached = controller_cache() / "bundles" / f"deps-{tag}-{_versions_key()}.tar.gz"
    with _lock:
        if cached.is_file():
            return _bundle("deps", cached.read_bytes())
        if tag == local_tag():
            files = _installed_files()
        else:
            host = HostRuntime.from_facts(facts)
            if host.libc not in ("glibc", "musl"):
                raise DepsUnavailable(
                    f"host libc {facts.get('libc') or 'unknown'!r} is neither glibc nor musl: no wheels to serve it"
                )
            chosen = wheels_for(host)
            log.info("deps for %s: %s", host.describe(), ", ".join(f"{w.dist} {w.version}" for w in chosen.values()))
            files = _unpack(chosen.values())
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
