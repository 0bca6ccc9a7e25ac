"""``sshfleet generate`` and ``load_agent``: generated modules, servicer template, errors, sysinfo agent."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import os
import re
import shutil
import subprocess
import sys
import typing
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

import sshfleet
import sshfleet._codegen as codegen
from sshfleet._cli import EXIT_OK, EXIT_USAGE, main
from sshfleet._codegen import build, generate, load_agent
from sshfleet._codegen._protoc import generator_version
from sshfleet.errors import AgentException, FleetError, ProtoError

ROOT = Path(__file__).resolve().parents[2]
SYSINFO = ROOT / "proto" / "sysinfo.proto"
KITCHEN = Path(__file__).parent / "protos" / "kitchen.proto"
GENERATED = ("kitchen_pb2.py", "kitchen_pb2.pyi", "kitchen_pb2_grpc.py", "kitchen.py", "kitchen_servicer.py")

_packages = itertools.count()


class FakeAgent:
    """Stands in for sshfleet.Agent with only its public hooks: records what a generated method asks of them."""

    def invoke(self, method: str, fields: Any, *, timeout: Any = None, hosts: Any = None) -> tuple[Any, ...]:
        return ("call", method, dict(fields), timeout)

    def invoke_stream(
        self, method: str, request: Any = None, *, timeout: Any = None, hosts: Any = None
    ) -> tuple[Any, ...]:
        return ("stream", method, request, timeout)


class FakeResponses:
    pass


@pytest.fixture(autouse=True)
def fake_base_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Generated clients subclass sshfleet.Agent at import; these tests exercise only what they generate.
    # sshfleet.AgentException stays the real one: the generated exception's place in the error tree is tested.
    monkeypatch.setattr(sshfleet, "Agent", FakeAgent, raising=False)
    monkeypatch.setattr(sshfleet, "Responses", FakeResponses, raising=False)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def import_generated(directory: Path, module: str) -> ModuleType:
    """Import ``directory/module.py`` as part of a fresh package, as agents/ is imported on the controller."""
    package = f"_test_codegen_{next(_packages)}"
    init = directory / "__init__.py"
    init.touch()
    spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(directory)])
    assert spec is not None and spec.loader is not None
    sys.modules[package] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.{module}")


@pytest.fixture
def kitchen(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    generate([KITCHEN], out)
    return out


# --- the built-in sysinfo agent is up to date --------------------------------------------------------


def _serialized_descriptor(pb2_text: str) -> bytes:
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", pb2_text)
    assert match, "no serialized descriptor in the pb2 module"
    value = ast.literal_eval(match.group(1))
    assert isinstance(value, bytes)
    return value


PROTOS = sorted((ROOT / "proto").glob("*.proto"))


def _min_python() -> tuple[int, int]:
    """bootstrap's MIN_PYTHON, the oldest host Python, read from its source (importing it runs the bootstrap)."""
    tree = ast.parse((ROOT / "sshfleet" / "remote" / "bootstrap.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["MIN_PYTHON"]:
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple) and len(value) == 2
            return value
    raise AssertionError("no MIN_PYTHON in sshfleet/remote/bootstrap.py")


MIN_PYTHON = _min_python()


def test_every_built_in_agent_is_checked() -> None:
    assert SYSINFO in PROTOS and len(PROTOS) >= 4, PROTOS


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_generated_files_are_up_to_date(proto: Path) -> None:
    name = proto.stem
    generated = build(proto)
    agents = ROOT / "agents"
    hint = f"agents/ is stale: run `sshfleet generate proto/{proto.name} -o agents`"
    assert (agents / f"{name}.py").read_text() == generated.modules[f"{name}.py"], hint
    committed_pb2 = (agents / f"{name}_pb2.py").read_text()
    assert _serialized_descriptor(committed_pb2) == _serialized_descriptor(generated.modules[f"{name}_pb2.py"]), hint
    if generator_version() in committed_pb2.splitlines()[0]:
        for module in (f"{name}_pb2.py", f"{name}_pb2.pyi", f"{name}_pb2_grpc.py"):
            assert (agents / module).read_text() == generated.modules[module], f"{module}: {hint}"
    # else: another grpcio-tools writes the pb2 modules differently; the descriptor check above still holds.
    assert (agents / f"{name}_servicer.py").is_file()


# --- the sysinfo servicer, served for real in-process ------------------------------------------------


@pytest.fixture
def sysinfo_stub() -> Any:
    from agents import sysinfo_pb2_grpc, sysinfo_servicer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sysinfo_servicer.AddServicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield sysinfo_pb2_grpc.SysinfoAgentStub(channel)
    finally:
        channel.close()
        server.stop(grace=None).wait(timeout=10)


def test_sysinfo_uname(sysinfo_stub: Any) -> None:
    from agents import sysinfo_pb2

    reply = sysinfo_stub.Uname(sysinfo_pb2.UnameArgs(), timeout=10)
    assert reply.success
    assert (reply.sysname, reply.nodename, reply.machine) == (
        os.uname().sysname,
        os.uname().nodename,
        os.uname().machine,
    )
    assert reply.pid == os.getpid()
    assert reply.python_version == ".".join(map(str, sys.version_info[:3]))


def test_sysinfo_sleep(sysinfo_stub: Any) -> None:
    from agents import sysinfo_pb2

    assert sysinfo_stub.Sleep(sysinfo_pb2.SleepArgs(seconds=0.01), timeout=10).success
    refused = sysinfo_stub.Sleep(sysinfo_pb2.SleepArgs(seconds=-1), timeout=10)
    assert not refused.success
    assert "seconds must be >= 0" in refused.comment
    with pytest.raises(grpc.RpcError) as info:
        sysinfo_stub.Sleep(sysinfo_pb2.SleepArgs(seconds=3600), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_sysinfo_fail_raises_in_the_servicer(sysinfo_stub: Any) -> None:
    from agents import sysinfo_pb2

    with pytest.raises(grpc.RpcError) as info:
        sysinfo_stub.Fail(sysinfo_pb2.FailArgs(message="boom 42"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "boom 42" in info.value.details()


def test_sysinfo_count_streams_numbered_chunks(sysinfo_stub: Any) -> None:
    from agents import sysinfo_pb2

    chunks = list(sysinfo_stub.Count(sysinfo_pb2.CountArgs(n=5, size=100_000), timeout=10))
    assert [c.index for c in chunks] == [0, 1, 2, 3, 4]
    assert {len(c.data) for c in chunks} == {100_000}
    assert list(sysinfo_stub.Count(sysinfo_pb2.CountArgs(n=0, size=1), timeout=10)) == []
    with pytest.raises(grpc.RpcError) as info:
        list(sysinfo_stub.Count(sysinfo_pb2.CountArgs(n=-1, size=1), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- generated client -----------------------------------------------------------------------------------


def test_generate_writes_every_file_marked_generated(kitchen: Path) -> None:
    assert sorted(p.name for p in kitchen.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        first_line = (kitchen / name).read_text().splitlines()[0]
        assert "generated by `sshfleet generate`" in first_line.lower(), name
    assert "DO NOT EDIT" in (kitchen / "kitchen.py").read_text().splitlines()[0]


def test_client_class_attributes(kitchen: Path) -> None:
    client = import_generated(kitchen, "kitchen")
    cls = client.KitchenAgent  # "Agent" appended to the service name Kitchen
    assert issubclass(cls, FakeAgent)
    assert client.__all__ == ["KitchenAgent", "KitchenAgentException"]
    assert cls._service_name == "kitchen.Kitchen"
    assert cls._servicer_module == "kitchen_servicer"
    assert Path(cls._module_file) == kitchen / "kitchen.py"
    assert cls._pb2.__name__ == client.__package__ + ".kitchen_pb2"
    assert cls._pb2_grpc.KitchenStub is not None


def test_client_exception_is_the_agents_own_fleet_error(kitchen: Path) -> None:
    client = import_generated(kitchen, "kitchen")
    exception = client.KitchenAgentException
    assert client.KitchenAgent._exception is exception  # what its Responses' raise_for_status() raises
    assert exception is not AgentException
    assert issubclass(exception, AgentException) and issubclass(exception, FleetError)
    assert exception.__module__ == client.__name__
    assert "raise_for_status()" in exception.__doc__ and ".responses" in exception.__doc__


def test_client_uses_only_the_agents_public_hooks(kitchen: Path) -> None:
    tree = ast.parse((kitchen / "kitchen.py").read_text())
    on_self = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    ]
    assert set(on_self) == {"invoke", "invoke_stream"}, on_self


@pytest.mark.parametrize("hook", ["invoke", "invoke_stream"])
def test_fake_agent_hooks_match_the_real_ones(hook: str) -> None:
    # The generated calls are checked against FakeAgent: it must take what sshfleet.Agent's hooks take.
    from sshfleet._agent import Agent

    def shape(function: Any) -> list[tuple[str, Any]]:
        return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]

    assert shape(getattr(FakeAgent, hook)) == shape(getattr(Agent, hook))


def test_client_methods_pass_fields_and_deadline(kitchen: Path) -> None:
    agent = import_generated(kitchen, "kitchen").KitchenAgent()
    call = agent.Cook(i32=1, from_="me", timeout=5)
    assert call[:2] == ("call", "Cook")
    assert call[2]["i32"] == 1
    assert call[2]["from"] == "me"
    assert call[2]["name"] is None  # invoke() drops None: unset fields keep their proto defaults
    assert call[3] == 5
    assert agent.Timed(timeout=1.5, rpc_timeout=3) == ("call", "Timed", {"timeout": 1.5}, 3)
    assert agent.Watch(name="x")[:2] == ("stream", "Watch")
    orders = [{"d": 1.0}]
    assert agent.Batch(orders, timeout=2) == ("stream", "Batch", orders, 2)
    assert agent.Chat(orders) == ("stream", "Chat", orders, None)
    assert agent.Stamp(seconds=1) == ("call", "Stamp", {"seconds": 1, "nanos": None}, None)


def test_client_signatures_and_hints(kitchen: Path) -> None:
    client = import_generated(kitchen, "kitchen")
    cls = client.KitchenAgent
    cook = inspect.signature(cls.Cook).parameters
    assert all(p.kind is p.KEYWORD_ONLY and p.default is None for n, p in cook.items() if n != "self")
    assert list(cook)[-1] == "timeout"
    annotations = {name: p.annotation for name, p in cook.items()}
    assert annotations["d"] == "Optional[float]"
    assert annotations["i64"] == "Optional[int]"
    assert annotations["flag"] == "Optional[bool]"
    assert annotations["blob"] == "Optional[bytes]"
    assert annotations["color"] == "Optional[Union[int, str]]"
    assert annotations["inner"] == "Optional[Union[Mapping[str, object], _pb2.Order.Inner]]"
    assert annotations["tags"] == "Optional[Sequence[str]]"
    assert annotations["counts"] == "Optional[Mapping[str, int]]"
    assert annotations["by_id"] == "Optional[Mapping[int, Union[Mapping[str, object], _pb2.Order.Inner]]]"
    assert annotations["when"] == "Optional[Union[Mapping[str, object], _timestamp_pb2.Timestamp]]"
    assert "from_" in cook
    batch = inspect.signature(cls.Batch).parameters
    assert list(batch) == ["self", "requests", "timeout"]
    assert list(inspect.signature(cls.Timed).parameters) == ["self", "timeout", "rpc_timeout"]
    # Every hint resolves in the module's namespace.
    for method in ("Cook", "Watch", "Batch", "Chat", "Timed", "Stamp"):
        typing.get_type_hints(getattr(cls, method), vars(client))


def test_client_docstrings_come_from_proto_comments(kitchen: Path) -> None:
    cls = import_generated(kitchen, "kitchen").KitchenAgent
    assert cls.__doc__ == "Cooks orders; used only by the unit tests."
    doc = cls.Cook.__doc__
    assert doc.startswith("Cook one order.")
    assert "d (double): A double.\n                Second line of its comment." in doc
    assert "from_ (string): A field whose name is a Python keyword." in doc
    assert "by_id (map<int32, kitchen.Order.Inner>):" in doc
    assert "timeout (double): Not the call's deadline" in cls.Timed.__doc__
    assert "rpc_timeout: deadline of the call" in cls.Timed.__doc__


def test_long_proto_comments_are_wrapped_to_the_line_length(tmp_path: Path) -> None:
    """Proto comments are free text: a long one must not make a generated line longer than ruff allows."""
    words = [f"word{i}" for i in range(60)]
    proto = tmp_path / "wordy.proto"
    proto.write_text(
        'syntax = "proto3";\npackage wordy;\n'
        f"// {' '.join(words)}\nservice Wordy {{\n"
        f"  // {' '.join(words)}\n  // second line of the method comment\n"
        "  rpc Talk(Args) returns (Reply);\n}\n"
        f"message Args {{\n  // {' '.join(words)}\n  string text = 1;\n}}\n"
        "message Reply { bool success = 1; string comment = 2; }\n"
    )
    out = tmp_path / "out"
    generate([proto], out)
    for name in ("wordy.py", "wordy_servicer.py"):
        assert max(len(line) for line in (out / name).read_text().splitlines()) <= 110, name
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--line-length", "110", "--select", "E501", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ruff.returncode == 0, ruff.stdout
    cls = import_generated(out, "wordy").WordyAgent
    flat = " ".join(cls.Talk.__doc__.split())
    assert " ".join(words) + " second line of the method comment" in flat  # no word lost, order kept
    assert "text (string): " + " ".join(words) in flat
    assert " ".join(words) in " ".join(cls.__doc__.split())


def test_generated_modules_import_top_level_as_on_the_host(kitchen: Path) -> None:
    # On the host the modules sit in a plain directory on sys.path: no package, absolute imports.
    code = (
        "import kitchen_pb2_grpc, kitchen_servicer, kitchen_pb2;"
        "assert kitchen_pb2_grpc.kitchen__pb2 is kitchen_pb2;"
        "assert kitchen_servicer.pb is kitchen_pb2; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=kitchen, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


# --- servicer template ------------------------------------------------------------------------------


class FakeContext:
    def __init__(self) -> None:
        self.code: Any = None
        self.details: Any = None

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def test_servicer_template_answers_not_implemented(kitchen: Path) -> None:
    servicer_module = import_generated(kitchen, "kitchen_servicer")
    pb = servicer_module.pb
    servicer = servicer_module.KitchenServicer()
    context = FakeContext()
    not_implemented = pb.Plate(success=False, comment="Not implemented.")

    assert servicer.Cook(pb.Order(name="x"), context) == not_implemented
    assert list(servicer.Watch(pb.Order(), context)) == [not_implemented]
    assert servicer.Batch(iter([pb.Order(), pb.Order()]), context) == not_implemented
    assert context.code is None

    assert list(servicer.Chat(iter([pb.Order()]), context)) == []
    assert (context.code, context.details) == (grpc.StatusCode.UNIMPLEMENTED, "Chat is not implemented.")
    context = FakeContext()
    assert servicer.Timed(pb.TimedArgs(timeout=1), context) == pb.Bare()
    assert (context.code, context.details) == (grpc.StatusCode.UNIMPLEMENTED, "Timed is not implemented.")
    assert servicer.Stamp(servicer_module._timestamp_pb2.Timestamp(), FakeContext()).seconds == 0

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        servicer_module.AddServicer(server)
    finally:
        server.stop(grace=None)


def test_servicer_template_unpacks_request_fields(kitchen: Path) -> None:
    text = (kitchen / "kitchen_servicer.py").read_text()
    assert "        i32 = request.i32\n" in text
    assert '        from_ = getattr(request, "from")\n' in text
    assert "        for request in request_iterator:\n            d = request.d\n" in text
    assert "log = logging.getLogger(__name__)" in text
    assert (
        "def AddServicer(server, controller=None):\n"
        "    pb_grpc.add_KitchenServicer_to_server(KitchenServicer(controller), server)" in text
    )


def test_host_side_code_parses_as_the_oldest_host_python(kitchen: Path) -> None:
    # Servicers run on the hosts' own python3, which may be as old as bootstrap's MIN_PYTHON.
    for path in (kitchen / "kitchen_servicer.py", *sorted((ROOT / "agents").glob("*_servicer.py"))):
        ast.parse(path.read_text(), filename=str(path), feature_version=MIN_PYTHON)


def test_servicer_template_states_the_oldest_host_python(kitchen: Path) -> None:
    oldest = "Python >= {}.{}".format(*MIN_PYTHON)
    assert f"# on {oldest}." in (kitchen / "kitchen_servicer.py").read_text()


# --- CLI: --force, messages, errors -----------------------------------------------------------------


def test_cli_keeps_an_existing_servicer_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["generate", str(KITCHEN), "-o", str(out)]) == EXIT_OK
    servicer = out / "kitchen_servicer.py"
    assert f"wrote {servicer}" in capsys.readouterr().out
    servicer.write_text("# my implementation\n")

    assert main(["generate", str(KITCHEN), "-o", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert f"kept {servicer} (exists; --force overwrites it)" in printed
    assert f"unchanged {out / 'kitchen.py'}" in printed
    assert servicer.read_text() == "# my implementation\n"

    assert main(["generate", str(KITCHEN), "-o", str(out), "--force"]) == EXIT_OK
    assert f"wrote {servicer}" in capsys.readouterr().out
    assert "Not implemented." in servicer.read_text()


def test_cli_default_output_is_the_proto_directory(tmp_path: Path) -> None:
    proto = tmp_path / "kitchen.proto"
    shutil.copy(KITCHEN, proto)
    assert main(["generate", str(proto)]) == EXIT_OK
    assert (tmp_path / "kitchen.py").is_file()


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sshfleet", "generate", str(KITCHEN), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert (tmp_path / "kitchen_pb2_grpc.py").is_file()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("file_name", "text", "expected"),
    [
        ("bad.proto", 'syntax = "proto3";\nmessage A { int32 a = 1 }\n', r"bad\.proto:2:\d+: Expected \";\""),
        (
            "none.proto",
            'syntax = "proto3";\nmessage A {}\n',
            r"must define one service, and optionally a second one named after it .*\(found: none\)",
        ),
        (
            "two.proto",
            'syntax = "proto3";\nmessage A {}\nservice X { rpc F(A) returns (A); }\nservice Y {}\n',
            r"must define one service.*'Controller' appended.*\(found: X, Y\)",
        ),
        ("my-agent.proto", 'syntax = "proto3";\n', r"must be a Python identifier.*my_agent\.proto"),
        (
            "imports.proto",
            'syntax = "proto3";\nimport "other.proto";\nservice X { rpc F(O) returns (O); }\n',
            r"imports 'other\.proto'; an agent \.proto may import only the well-known types",
        ),
        ("agent.txt", "", r"not a \.proto file"),
    ],
)
def test_cli_errors_are_clear_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file_name: str, text: str, expected: str
) -> None:
    _write(tmp_path / "other.proto", 'syntax = "proto3";\nmessage O {}\n')
    proto = _write(tmp_path / file_name, text)
    out = tmp_path / "out"
    assert main(["generate", str(proto), "-o", str(out)]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith("sshfleet: error: ")
    assert re.search(expected, error), error
    assert not out.exists()


def test_missing_proto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(tmp_path / "nope.proto")]) == EXIT_USAGE
    assert f"{tmp_path / 'nope.proto'}: no such file" in capsys.readouterr().err


def test_one_bad_proto_writes_nothing(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.proto", "syntax = nonsense")
    out = tmp_path / "out"
    with pytest.raises(ProtoError):
        generate([KITCHEN, bad], out)
    assert not out.exists()


def test_include_dir_is_passed_to_protoc(tmp_path: Path) -> None:
    # The include directory is searched, so the error is our "well-known types only" rule, not protoc's.
    include = tmp_path / "include"
    include.mkdir()
    _write(include / "shared.proto", 'syntax = "proto3";\nmessage S {}\n')
    proto = _write(tmp_path / "user.proto", 'syntax = "proto3";\nimport "shared.proto";\nservice U {}\n')
    with pytest.raises(ProtoError, match=r"shared\.proto: File not found"):
        generate([proto], tmp_path / "out")
    with pytest.raises(ProtoError, match=r"imports 'shared\.proto'"):
        generate([proto], tmp_path / "out", include_dirs=[include])


# --- load_agent ---------------------------------------------------------------------------------------


def test_load_agent_builds_into_the_cache_only(tmp_path: Path, private_cache: Path) -> None:
    proto_dir = tmp_path / "protos"
    proto_dir.mkdir()
    proto = proto_dir / "kitchen.proto"
    shutil.copy(KITCHEN, proto)

    cls = load_agent(proto)
    assert cls.__name__ == "KitchenAgent"
    assert sorted(p.name for p in proto_dir.iterdir()) == ["kitchen.proto"]  # nothing written beside it
    home = Path(cls._module_file).parent
    assert home.parent == private_cache / "sshfleet" / "generated"
    assert (home.stat().st_mode & 0o777) == 0o700
    assert "Not implemented." in (home / "kitchen_servicer.py").read_text()
    assert cls().Cook(i32=2)[2]["i32"] == 2


def test_load_agent_is_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proto = tmp_path / "kitchen.proto"
    shutil.copy(KITCHEN, proto)
    first = load_agent(proto)

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("recompiled although nothing changed")

    monkeypatch.setattr(codegen, "build", no_compile)
    assert load_agent(str(proto)) is first
    monkeypatch.undo()

    # A servicer beside the proto is the one shipped, and editing it gives a new cache entry.
    (tmp_path / "kitchen_servicer.py").write_text("# mine\n")
    second = load_agent(proto)
    assert second is not first
    assert (Path(second._module_file).parent / "kitchen_servicer.py").read_text() == "# mine\n"


def test_load_agent_errors(tmp_path: Path) -> None:
    with pytest.raises(ProtoError, match="cannot read"):
        load_agent(tmp_path / "missing.proto")
    changed = tmp_path / "kitchen.proto"
    changed.write_text(KITCHEN.read_text().replace("int32 value = 1;", "int32 value = 1; int32 extra = 2;"))
    load_agent(KITCHEN)
    with pytest.raises(ProtoError, match=r"another kitchen\.proto with different content is already loaded"):
        load_agent(changed)


def test_load_agent_refuses_a_cache_others_can_write(private_cache: Path) -> None:
    root = private_cache / "sshfleet" / "generated"
    root.mkdir(parents=True)
    root.chmod(0o777)
    with pytest.raises(ProtoError, match="writable by others"):
        load_agent(KITCHEN)
