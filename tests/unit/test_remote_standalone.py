"""The remote runtime stands alone: every file of sshfleet/remote/ runs under the oldest host Python (MIN_PYTHON in
sshfleet/remote/bootstrap.py, the one place that says it), from a copy outside the repository, and imports nothing
from sshfleet and nothing but the standard library, grpc and protobuf. Every other place that names the oldest
host Python says the same.

How the child proves it: it runs with ``-I -S`` (no site-packages, no PYTHON* variables, no script directory or
cwd on sys.path), with only the copy (and grpcio/protobuf) added to sys.path, and with an import hook installed
before anything else that logs every import with the file it comes from and refuses any ``sshfleet`` module.

The interpreter is pyenv's (``$PYENV_ROOT``, else ``~/.pyenv``); without it these tests skip. grpcio and protobuf
for it are installed once by its own pip into ``~/.cache/sshfleet-tests`` (the newest releases that still support
it); when that fails, only the tests that need grpc skip.
"""

from __future__ import annotations

import ast
import io
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import grpc
import pytest

from sshfleet import _payload
from sshfleet._bootstrap import LOADER, MARKER
from sshfleet.remote.runtime import TOKEN_KEY

ROOT = Path(__file__).resolve().parents[2]
REMOTE = ROOT / "sshfleet" / "remote"
REMOTE_FILES = sorted(REMOTE.glob("*.py"))
BOOTSTRAP = REMOTE / "bootstrap.py"


def _remote_constant(name: str) -> Any:
    """A constant of bootstrap.py, read without running it (importing it runs the bootstrap)."""
    for node in ast.parse(BOOTSTRAP.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"sshfleet/remote/bootstrap.py defines no {name}")


MIN_PYTHON = tuple(_remote_constant("MIN_PYTHON"))
COMPLETE_MARK = _remote_constant("COMPLETE_MARK")
MIN_TEXT = f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}"
HOST_TAG = f"cp{MIN_PYTHON[0]}{MIN_PYTHON[1]}-{platform.machine()}"  # the bootstrap's facts["tag"]

# Logs every import as a JSON line [name, where it was found] and refuses sshfleet. Installed first, before the
# code under test; it finds specs by asking the finders after it, so it sees the origin of each module. Runs on
# the host Pythons, so it is written for them too.
IMPORT_HOOK = """
import json, sys

class ImportRecorder:
    log = open(LOG_PATH, "a", buffering=1)

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "sshfleet":
            cls.log.write(json.dumps([name, "FORBIDDEN"]) + "\\n")
            raise ImportError("%s is not on the host: the remote runtime must not import it" % name)
        for finder in sys.meta_path[sys.meta_path.index(cls) + 1 :]:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                # A namespace package (protobuf 3.x's google/) has origin "namespace" before Python 3.7.
                origin = spec.origin if spec.origin != "namespace" else None
                where = origin or list(spec.submodule_search_locations or ())
                cls.log.write(json.dumps([name, where]) + "\\n")
                return spec
        cls.log.write(json.dumps([name, None]) + "\\n")
        return None

ImportRecorder.log.write(json.dumps(["<sys.path>", sys.path]) + "\\n")
sys.meta_path.insert(0, ImportRecorder)
"""


def isolated(python: Path, code: str, log: Optional[Path] = None) -> list[str]:
    """argv that runs ``code`` under ``python`` with nothing but its standard library; behind the import hook,
    logging to ``log``, if given."""
    if python.parent.parent.name.startswith("2."):
        # Python 2 (only ever asked to refuse itself) has no -I and no find_spec for the hook.
        return [str(python), "-E", "-s", "-S", "-c", code]
    if log is not None:
        code = f"LOG_PATH = {str(log)!r}\n{IMPORT_HOOK}\n{code}"
    return [str(python), "-I", "-S", "-c", code]


# --- interpreters and grpcio/protobuf for them ------------------------------------------------------------------


def pyenv_pythons() -> dict[tuple[int, int, int], Path]:
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = {}
    for python in versions.glob("*/bin/python"):
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", python.parent.parent.name)
        if match:
            major, minor, micro = (int(x) for x in match.groups())
            found[(major, minor, micro)] = python
    return found


@pytest.fixture(scope="session")
def oldest_python() -> Path:
    """The oldest pyenv Python of the MIN_PYTHON series: the interpreter the remote runtime has to run on."""
    candidates = sorted(v for v in pyenv_pythons() if v[:2] == MIN_PYTHON)
    if not candidates:
        pytest.skip(f"no Python {MIN_TEXT} under pyenv: `pyenv install {MIN_TEXT}` to prove the remote runtime")
    return pyenv_pythons()[candidates[0]]


@pytest.fixture(scope="session")
def host_deps(oldest_python: Path) -> Path:
    """A directory with grpcio and protobuf for ``oldest_python``, installed once and kept between runs."""
    version = oldest_python.parent.parent.name
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sshfleet-tests"
    target = cache / f"host-deps-{version}"
    if (target / COMPLETE_MARK).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    pip = [str(oldest_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
    pip += ["--only-binary=:all:", "--timeout", "30", "--retries", "1", "--target", str(tmp), "grpcio", "protobuf"]
    try:
        proc = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"installing grpcio/protobuf for Python {version} took over 300 s")
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        why = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        pytest.skip(f"cannot install grpcio/protobuf for Python {version}: {why}")
    # The mark also makes the directory a complete deps bundle in the eyes of the bootstrap.
    (tmp / COMPLETE_MARK).write_text("grpcio, protobuf\n")
    if target.exists() and not (target / COMPLETE_MARK).is_file():
        shutil.rmtree(target, ignore_errors=True)  # debris of an interrupted run
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a parallel run installed it first
    return target


# --- what the child imported ----------------------------------------------------------------------------------


def read_imports(log: Path) -> tuple[list[str], list[tuple[str, Union[str, list[str], None]]]]:
    """The child's initial sys.path (its standard library only) and every import as (name, where)."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and lines[0][0] == "<sys.path>", f"the import hook did not start: {log.read_text()!r}"
    return lines[0][1], [(name, where) for name, where in lines[1:]]


def check_standalone(log: Path, allowed: dict[str, Path]) -> dict[str, str]:
    """Fail on any sshfleet import or any module loaded from outside the child's standard library and the
    ``allowed`` directories (label -> directory); return the label of each imported module."""
    stdlib_path, imports = read_imports(log)
    stdlib = [os.path.realpath(p) for p in stdlib_path]
    assert not [p for p in stdlib if (p + os.sep).startswith(str(ROOT) + os.sep)], f"the repository is on {stdlib}"
    places = {label: os.path.realpath(d) for label, d in allowed.items()}

    def label_of(path: str) -> str:
        if path in ("built-in", "frozen"):
            return "stdlib"
        real = os.path.realpath(path)
        for label, directory in places.items():
            if real.startswith(directory + os.sep):
                return label
        if "site-packages" not in real.split(os.sep) and any(real.startswith(d + os.sep) for d in stdlib):
            return "stdlib"
        if real.startswith(str(ROOT) + os.sep):
            return "the repository"
        return "elsewhere"

    forbidden = sorted({name for name, where in imports if where == "FORBIDDEN"})
    assert not forbidden, f"the remote runtime imported {forbidden} from sshfleet"
    labels: dict[str, str] = {}
    strays = []
    for name, where in imports:
        if where is None:
            continue  # not found: an optional import that the code handles
        found = {label_of(p) for p in ([where] if isinstance(where, str) else where)}
        labels[name] = found.pop() if len(found) == 1 else f"mixed {sorted(found)}"
        if labels[name] not in ("stdlib", *allowed):
            strays.append(f"{name} from {labels[name]}: {where}")
    assert not strays, "the remote runtime loaded modules from outside its bundles:\n" + "\n".join(strays)
    return labels


# --- the bootstrap's end of an SSH exec channel ----------------------------------------------------------------


class HostEnd:
    """A bootstrap started exactly as the controller starts it on a host, with our end of its stdin/stdout."""

    def __init__(self, python: Path, log: Path, cwd: Path) -> None:
        self.stderr_path = cwd / "stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*isolated(python, LOADER, log), MARKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=cwd,
                start_new_session=True,  # sshd setsid()s the command: the servicer leads its process group
            )
        self.buf = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send_bootstrap(self, config: dict[str, Any]) -> None:
        code = _payload.bootstrap_source()
        self.send(str(len(code)).encode() + b"\n" + code + json.dumps(config).encode() + b"\n")

    def message(self, timeout: float = 30.0) -> tuple[str, dict[str, Any]]:
        """The next "SSHFLEET KIND {json}" line, skipping heartbeats."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(b"SSHFLEET "):
                    kind, _, body = line[len(b"SSHFLEET ") :].partition(b" ")
                    return kind.decode(), json.loads(body)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.fail(f"no message from the bootstrap within {timeout:g}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.fail("the bootstrap exited before its next message")
            self.buf += chunk

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"the bootstrap did not exit within {timeout:g}s")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def fail(self, why: str) -> Any:
        self.close()
        pytest.fail(f"{why}; its stderr:\n{self.stderr()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Any]:
    """Starts bootstraps (``host(python)`` -> HostEnd) and kills whatever is left of them after the test."""
    started: list[HostEnd] = []

    def start(python: Path, log: Optional[Path] = None) -> HostEnd:
        end = HostEnd(python, log or tmp_path / "imports.log", tmp_path)
        started.append(end)
        return end

    yield start
    for end in started:
        end.close()


def bootstrap_config(cache: Path, **extra: Any) -> dict[str, Any]:
    config = {"cache": str(cache), "agent": "0" * 64, "deps": {}, "session": "s1", "secret": "s" * 32}
    config.update(servicers=[], heartbeat=60, grace=0, **extra)
    return config


def shipped_names() -> dict[str, str]:
    """Module name on the host -> file of sshfleet/remote/, as the agent bundle ships them."""
    by_content = {path.read_bytes(): path.name for path in REMOTE_FILES}
    with tarfile.open(fileobj=io.BytesIO(_payload.agent_bundle({}).data), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        contents = {name: f.read() for name, f in members.items() if f is not None}
    return {name[: -len(".py")]: by_content[data] for name, data in contents.items() if data in by_content}


# Runs in the child: compile each file with the host Python's own parser and tell, for each module it imports,
# whether that Python's standard library has it (under -I -S, sys.path is the standard library and nothing else).
STATIC_IMPORTS = """
import ast, importlib.util, json, sys
out = {}
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        tree = compile(f.read(), path, "exec", ast.PyCF_ONLY_AST)
    compile(tree, path, "exec")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    out[path] = dict((n, bool(n[:1] != "." and importlib.util.find_spec(n.partition(".")[0]))) for n in names)
print(json.dumps(out))
"""


# --- the tests ------------------------------------------------------------------------------------------------


def test_remote_files_compile_and_import_only_stdlib_grpc_and_protobuf(oldest_python: Path, tmp_path: Path) -> None:
    copies = []
    for path in REMOTE_FILES:
        shutil.copy(path, tmp_path / path.name)
        copies.append(str(tmp_path / path.name))
    proc = subprocess.run(
        isolated(oldest_python, STATIC_IMPORTS) + copies,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, f"sshfleet/remote/ does not compile under Python {MIN_TEXT}:\n{proc.stderr}"
    siblings = shipped_names()
    assert "sshfleet_runtime" in siblings, "the agent bundle no longer ships runtime.py as sshfleet_runtime"
    wrong = []
    for copy, imports in json.loads(proc.stdout).items():
        for name, is_stdlib in sorted(imports.items()):
            top = name.partition(".")[0]
            if not (is_stdlib or top == "grpc" or name.startswith("google.protobuf") or name in siblings):
                wrong.append(f"{Path(copy).name} imports {name}")
    assert not wrong, f"sshfleet/remote/ may import only Python {MIN_TEXT}'s stdlib, grpc and protobuf: {wrong}"


def test_bootstrap_runs_standalone_and_reports_the_host(oldest_python: Path, host: Any, tmp_path: Path) -> None:
    cache = tmp_path / "home" / ".cache" / "sshfleet"
    end = host(oldest_python)
    end.send_bootstrap(bootstrap_config(cache))

    kind, need = end.message()
    assert kind == "NEED", need
    assert need["missing"] == ["agent", "deps"]
    facts = need["facts"]
    assert facts["python"] == oldest_python.parent.parent.name
    assert facts["tag"] == HOST_TAG
    assert facts["executable"] == str(oldest_python)
    assert (cache.stat().st_mode & 0o777) == 0o700

    end.send(json.dumps({"error": "no wheels for this test", "kind": "no_python"}).encode() + b"\n")
    assert end.message() == ("ERROR", {"kind": "no_python", "message": "no wheels for this test", "facts": facts})
    assert end.wait() == 1
    assert set(check_standalone(tmp_path / "imports.log", {}).values()) == {"stdlib"}


def test_bootstrap_refuses_a_python_older_than_min_python(host: Any) -> None:
    older = sorted(v for v in pyenv_pythons() if v[:2] < MIN_PYTHON)  # Python 2 too: it runs this far
    if not older:
        pytest.skip(f"no Python older than {MIN_TEXT} under pyenv")
    python = pyenv_pythons()[older[-1]]
    end = host(python)
    end.send_bootstrap(bootstrap_config(Path("/nonexistent")))
    kind, error = end.message()
    assert (kind, error["kind"]) == ("ERROR", "no_python")
    assert f"is too old: sshfleet needs Python >= {MIN_TEXT} on the host" in error["message"]
    assert end.wait() == 1


# `sshfleet run`'s helper for a plain command: no grpc on the host, that is its point.
STDLIB_ONLY = {"adhoc"}


@pytest.mark.parametrize("name", [p.name for p in REMOTE_FILES if p != BOOTSTRAP])
def test_remote_module_imports_standalone(name: str, oldest_python: Path, host_deps: Path, tmp_path: Path) -> None:
    copy = tmp_path / "remote"
    copy.mkdir()
    for path in REMOTE_FILES:
        shutil.copy(path, copy / path.name)
    module = name[: -len(".py")]
    code = f"sys.path[:0] = [{str(copy)!r}, {str(host_deps)!r}]\nimport {module}\n"
    proc = subprocess.run(
        isolated(oldest_python, code, tmp_path / "imports.log"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, f"{name} does not import under Python {MIN_TEXT} on its own:\n{proc.stderr}"
    labels = check_standalone(tmp_path / "imports.log", {"remote": copy, "deps": host_deps})
    assert labels[module] == "remote"
    third_party = {name: label for name, label in labels.items() if name.partition(".")[0] in ("grpc", "google")}
    if module in STDLIB_ONLY:
        assert not third_party, f"{name} must need the standard library alone: {third_party}"
    else:
        assert third_party and set(third_party.values()) == {"deps"}, third_party


def test_servicer_starts_and_stops_standalone(oldest_python: Path, host_deps: Path, host: Any, tmp_path: Path) -> None:
    """The whole start on the host: probe, the agent bundle shipped and unpacked, the runtime serving with the
    real grpcio until the controller says STOP, under the oldest host Python."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    deps_hash = "d" * 64
    (cache / deps_hash).symlink_to(host_deps)
    agent = _payload.agent_bundle({})
    end = host(oldest_python)
    end.send_bootstrap(bootstrap_config(cache, agent=agent.hash, deps={HOST_TAG: deps_hash}))

    kind, need = end.message()
    assert (kind, need["missing"]) == ("NEED", ["agent"])
    end.send(agent.header() + agent.data)
    kind, ready = end.message()
    assert kind == "READY", ready
    assert ready["pid"] == end.proc.pid
    session_dir = Path(ready["session_dir"])
    assert session_dir == cache / "sessions" / "s1" and session_dir.is_dir()

    with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
        call = channel.unary_unary("/sshfleet.Test/Nothing")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as unknown:
            call(b"", timeout=10, metadata=((TOKEN_KEY, "s" * 32),))
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    end.send(b"STOP\n")
    assert end.wait() == 0
    assert not session_dir.exists()
    labels = check_standalone(tmp_path / "imports.log", {"agent bundle": cache / agent.hash, "deps": host_deps})
    assert labels["sshfleet_runtime"] == "agent bundle"
    assert labels["grpc"] == "deps"


# --- one oldest host Python everywhere ------------------------------------------------------------------------

# "Python >= 3.9", "Python ≥ 3.9", "Python 3.9+", "Python 3.9 or newer": how a file says which hosts it runs on.
STATEMENT = re.compile(
    r"\bPython\s*(?:>=|≥|=>)\s*(?P<a>3\.\d+)|\bPython\s*(?P<b>3\.\d+)\s*(?:\+|or (?:newer|later|above))",
    re.IGNORECASE,
)


def statement_files() -> list[Path]:
    """Where the oldest host Python may be stated: the host-side code, the servicers and their template, the
    packaging config and every document of the repository."""
    files = [*REMOTE_FILES, *sorted((ROOT / "agents").glob("*_servicer.py"))]
    files += [ROOT / "sshfleet" / "_codegen" / "_render.py", ROOT / "pyproject.toml"]
    skip = {"venv", "build", "dist", "node_modules", "__pycache__"}
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in skip)
        files += [Path(directory) / n for n in sorted(names) if n.endswith((".md", ".rst"))]
    return files


def test_every_statement_of_the_oldest_host_python_is_min_python() -> None:
    found, wrong = [], []
    for path in statement_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in STATEMENT.finditer(line):
                version = match["a"] or match["b"]
                where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                if version == MIN_TEXT:
                    found.append(where)
                else:
                    wrong.append(where)
    listing = "\n".join(wrong)
    assert not wrong, f"MIN_PYTHON in sshfleet/remote/bootstrap.py says {MIN_TEXT}; these say otherwise:\n{listing}"
    assert found, "no file states the oldest host Python any more: is the pattern out of date?"
