"""`sshfleet wheelhouse` fills a directory that an offline controller (SSHFLEET_WHEELHOUSE) ships from.

Downloads for real through pip (about 6 MB, once): the wheels stay in ~/.cache/sshfleet-tests/wheelhouse-cli and
later runs only re-check them with pip.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sshfleet import _payload
from sshfleet._cli import main

AARCH64_38 = {"tag": "cp38-aarch64", "machine": "aarch64", "libc": "glibc", "libc_version": "2.31"}


@pytest.fixture(scope="module")
def cli_wheelhouse() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sshfleet-tests" / "wheelhouse-cli"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def test_wheelhouse_fetches_for_another_machine_and_an_offline_controller_ships_it(
    cli_wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["wheelhouse", "--python", "3.8", "--platform", "manylinux2014_aarch64", "-o", str(cli_wheelhouse)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("Python 3.8 manylinux2014_aarch64: grpcio 1.")
    assert "protobuf " in out and f"wheelhouse: {cli_wheelhouse}" in out

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no deps bundle cached yet
    monkeypatch.setenv(_payload.WHEELHOUSE_ENV, str(cli_wheelhouse))
    monkeypatch.setattr(_payload, "fetch_wheels", lambda *a, **k: pytest.fail("asked an index while offline"))
    bundle = _payload.deps_bundle(AARCH64_38)
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        names = tar.getnames()
    assert "grpc/__init__.py" in names and "google/protobuf/__init__.py" in names
    assert any(n.startswith("grpc/_cython/cygrpc.cpython-38-aarch64-linux-gnu") for n in names), names


def test_wheelhouse_refuses_what_is_not_a_linux_platform_tag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wheelhouse", "--python", "3.9", "--platform", "win_amd64", "-o", "/nonexistent"]) == 2
    assert "'win_amd64' is not a manylinux or musllinux platform tag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["wheelhouse", "--python", "2.7"])
