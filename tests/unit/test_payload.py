"""Bundles are reproducible, content-addressed and contain what the host needs (pure logic, no network)."""

from __future__ import annotations

import hashlib
import io
import tarfile

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
