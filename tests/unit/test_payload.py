"""Bundles are reproducible, content-addressed and contain what the host needs (pure logic, no network)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

from sshfleet import _payload


def test_tarball_is_byte_for_byte_reproducible():
    files = [("b.py", b"print(2)\n"), ("a.py", b"print(1)\n")]
    one = _payload.make_tarball(files)
    two = _payload.make_tarball(list(reversed(files)))
    assert one == two
    with tarfile.open(fileobj=io.BytesIO(one), mode="r:gz") as tar:
        assert tar.getnames() == ["a.py", "b.py"]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_agent_bundle_hash_is_its_content_hash_and_includes_the_runtime(tmp_path):
    servicer = tmp_path / "x_servicer.py"
    servicer.write_text("def AddServicer(server):\n    pass\n")
    bundle = _payload.agent_bundle({"x_servicer.py": servicer})
    assert bundle.hash == hashlib.sha256(bundle.data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        assert set(tar.getnames()) == {"x_servicer.py", "sshfleet_runtime.py"}
    servicer.write_text("def AddServicer(server):\n    return 1\n")
    assert _payload.agent_bundle({"x_servicer.py": servicer}).hash != bundle.hash


def test_manylinux_platforms_cover_older_glibc_only():
    tags = _payload._manylinux_platforms("x86_64", "2.31")
    assert tags[0] == "manylinux_2_31_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_32_x86_64" not in tags
    assert not any("2_34" in t for t in _payload._manylinux_platforms("x86_64", "2.28"))


def test_local_deps_bundle_contains_grpc_and_protobuf(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bundle = _payload.prepare_local_deps()
    assert bundle is not None
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert "grpc/__init__.py" in names
    assert "google/protobuf/__init__.py" in names
    assert "typing_extensions.py" in names
    assert not any("__pycache__" in n or ".dist-info" in n for n in names)
    assert _payload.known_deps()[_payload.local_tag()] == bundle.hash


def test_agent_bundle_adds_gencode_adapted_for_older_runtimes():
    """The bundle's sshfleet_compat/ copies lose only the runtime version guards; gencode.json says what the
    originals need, which the runtime compares with the host's grpcio/protobuf."""
    agents = Path(__file__).resolve().parents[2] / "agents"
    files = {name: agents / name for name in ("sysinfo_pb2.py", "sysinfo_pb2_grpc.py")}
    with tarfile.open(fileobj=io.BytesIO(_payload.agent_bundle(files).data), mode="r:gz") as tar:
        contents = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    needs = json.loads(contents["sshfleet_compat/gencode.json"])

    original, adapted = contents["sysinfo_pb2.py"], contents["sshfleet_compat/sysinfo_pb2.py"]
    guard = re.search(r"^_runtime_version\.ValidateProtobufRuntimeVersion\((.*?)^\)\n", original, re.M | re.S)
    assert guard is not None
    assert [int(x) for x in re.findall(r"\d+", guard[1])[:3]] == [int(x) for x in needs["protobuf"].split(".")]
    expected = original.replace(guard[0], "").replace(
        "from google.protobuf import runtime_version as _runtime_version\n", ""
    )
    builder_import = "from google.protobuf.internal import builder as _builder\n"
    assert expected.count(builder_import) == 1
    adapted_lines = adapted.splitlines(keepends=True)
    assert adapted_lines[0].startswith("# sshfleet: adapted for hosts whose protobuf predates this gencode")
    at = adapted_lines.index("    " + builder_import)  # protobuf < 3.20 has no builder: the backport stands in
    assert adapted_lines[at - 1 : at + 3] == [
        "try:\n",
        "    " + builder_import,
        adapted_lines[at + 1],
        "    import sshfleet_pb2_builder as _builder\n",
    ]
    assert adapted_lines[at + 1].startswith("except ImportError:")
    assert "sshfleet_compat/sshfleet_pb2_builder.py" in contents
    rest = [*adapted_lines[1 : at - 1], builder_import, *adapted_lines[at + 3 :]]
    assert rest == expected.splitlines(keepends=True)  # nothing else differs

    original, adapted = contents["sysinfo_pb2_grpc.py"], contents["sshfleet_compat/sysinfo_pb2_grpc.py"]
    assert f"GRPC_GENERATED_VERSION = '{needs['grpcio']}'" in original
    assert "GRPC_GENERATED_VERSION" not in adapted and "_version_not_supported" not in adapted
    assert "_registered_method=" not in adapted  # grpcio < 1.63 refuses it (the runtime registers handlers)
    for name in ("class SysinfoAgentStub:", "def add_SysinfoAgentServicer_to_server(servicer, server):"):
        assert name in adapted
    for text in (contents["sshfleet_compat/sysinfo_pb2.py"], adapted):
        compile(text, "adapted", "exec")


def test_modules_without_version_guards_are_shipped_as_they_are(tmp_path):
    pb2 = tmp_path / "old_pb2.py"
    pb2.write_text("DESCRIPTOR = None\n")
    with tarfile.open(fileobj=io.BytesIO(_payload.agent_bundle({"old_pb2.py": pb2}).data), mode="r:gz") as tar:
        assert set(tar.getnames()) == {"old_pb2.py", "sshfleet_runtime.py"}
