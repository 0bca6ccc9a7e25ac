"""Which grpcio/protobuf wheels a host gets, from the facts its bootstrap reports (pure logic: file names and
wheel metadata, no index). This machine has no ARM or musl host, so those hosts are described by their facts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from sshfleet import _payload
from sshfleet._payload import DepsUnavailable, HostRuntime, python_admitted, runtime_for_platform, select_wheels

CEILINGS = {"grpcio": "1.85.3", "protobuf": "7.36.2", "typing_extensions": "4.16.0"}


def wheel(directory: Path, name: str, requires: tuple[str, ...] = (), requires_python: str = "") -> Path:
    """A minimal wheel file: its name and, in its METADATA, what it requires."""
    path = directory / name
    dist, version = name.split("-")[:2]
    lines = [f"Name: {dist}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    lines += [f"Requires-Python: {requires_python}"] if requires_python else []
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def host(tag: str, machine: str, libc: str = "glibc", libc_version: str = "2.31") -> HostRuntime:
    return HostRuntime.from_facts({"tag": tag, "machine": machine, "libc": libc, "libc_version": libc_version})


def chosen_names(wheels: list[Path], runtime: HostRuntime) -> tuple[dict[str, str], list[str]]:
    chosen, missing = select_wheels(wheels, runtime, CEILINGS)
    return {dist: w.path.name for dist, w in chosen.items()}, missing


@pytest.fixture
def mixed_wheelhouse(tmp_path: Path) -> list[Path]:
    """grpcio and protobuf for several Pythons, machines and C libraries in one directory, as `sshfleet
    wheelhouse` fills it."""
    names = [
        "grpcio-1.80.1-cp39-cp39-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "grpcio-1.80.1-cp39-cp39-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
        "grpcio-1.80.1-cp39-cp39-musllinux_1_1_aarch64.whl",
        "grpcio-1.80.1-cp39-cp39-musllinux_1_2_x86_64.whl",
        "grpcio-1.70.0-cp38-cp38-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "grpcio-1.62.3-cp37-cp37m-manylinux_2_17_aarch64.whl",
        "grpcio-1.85.3-cp312-cp312-manylinux_2_28_aarch64.whl",
        "grpcio-1.86.0-cp312-cp312-manylinux_2_17_aarch64.whl",  # newer than the controller's: never shipped
        "grpcio-1.85.4rc1-cp312-cp312-manylinux_2_17_aarch64.whl",  # a pre-release: never shipped
        "protobuf-6.33.6-cp39-abi3-manylinux2014_aarch64.whl",
        "protobuf-6.33.6-cp39-abi3-musllinux_1_1_aarch64.whl",
        "protobuf-6.33.6-cp39-abi3-manylinux2014_x86_64.whl",
        "protobuf-6.33.6-cp39-abi3-musllinux_1_2_x86_64.whl",
        "protobuf-5.29.6-cp38-abi3-manylinux2014_aarch64.whl",
        "protobuf-4.24.4-cp37-abi3-manylinux2014_aarch64.whl",
        "protobuf-7.36.2-cp310-abi3-manylinux2014_aarch64.whl",
        "typing_extensions-4.16.0-py3-none-any.whl",
    ]
    out = []
    for name in names:
        requires = ("typing-extensions~=4.12", 'grpcio-tools>=1.80; extra == "protobuf"') if "1.8" in name else ()
        out.append(wheel(tmp_path, name, requires if name.startswith("grpcio") else ()))
    return out


def test_an_aarch64_host_gets_aarch64_wheels_for_its_python(mixed_wheelhouse: list[Path]) -> None:
    chosen, missing = chosen_names(mixed_wheelhouse, host("cp39-aarch64", "aarch64"))
    assert missing == []
    assert chosen == {
        "grpcio": "grpcio-1.80.1-cp39-cp39-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
        "protobuf": "protobuf-6.33.6-cp39-abi3-manylinux2014_aarch64.whl",
        "typing_extensions": "typing_extensions-4.16.0-py3-none-any.whl",  # grpcio 1.80 requires it
    }


def test_older_pythons_get_the_newest_release_they_have_and_only_what_it_requires(
    mixed_wheelhouse: list[Path],
) -> None:
    chosen, missing = chosen_names(mixed_wheelhouse, host("cp38-aarch64", "aarch64"))
    assert (chosen, missing) == (
        {
            "grpcio": "grpcio-1.70.0-cp38-cp38-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "protobuf": "protobuf-5.29.6-cp38-abi3-manylinux2014_aarch64.whl",
        },
        [],
    )
    chosen, _ = chosen_names(mixed_wheelhouse, host("cp37-aarch64", "aarch64"))
    assert chosen["grpcio"] == "grpcio-1.62.3-cp37-cp37m-manylinux_2_17_aarch64.whl"  # 3.7's ABI is cp37m


def test_nothing_newer_than_the_controller_nor_a_pre_release_nor_beyond_the_host_glibc(
    mixed_wheelhouse: list[Path],
) -> None:
    on_new_glibc, _ = chosen_names(mixed_wheelhouse, host("cp312-aarch64", "aarch64", libc_version="2.36"))
    assert on_new_glibc["grpcio"] == "grpcio-1.85.3-cp312-cp312-manylinux_2_28_aarch64.whl"
    assert on_new_glibc["protobuf"] == "protobuf-7.36.2-cp310-abi3-manylinux2014_aarch64.whl"  # abi3 from 3.10
    on_old_glibc, missing = chosen_names(mixed_wheelhouse, host("cp312-aarch64", "aarch64", libc_version="2.17"))
    assert "grpcio" not in on_old_glibc and missing == ["grpcio"]


def test_musl_hosts_get_musllinux_wheels_of_their_musl_version(mixed_wheelhouse: list[Path]) -> None:
    alpine_arm = host("cp39-aarch64-musl", "aarch64", libc="musl", libc_version="1.2")
    chosen, missing = chosen_names(mixed_wheelhouse, alpine_arm)
    assert missing == []
    assert chosen["grpcio"] == "grpcio-1.80.1-cp39-cp39-musllinux_1_1_aarch64.whl"
    assert chosen["protobuf"] == "protobuf-6.33.6-cp39-abi3-musllinux_1_1_aarch64.whl"
    old_musl = host("cp39-x86_64-musl", "x86_64", libc="musl", libc_version="1.1")
    chosen, missing = chosen_names(mixed_wheelhouse, old_musl)
    assert (chosen, missing) == ({}, ["grpcio", "protobuf"])  # only musllinux_1_2 wheels for x86_64 here


def test_platform_tags_name_the_hosts_they_describe() -> None:
    assert runtime_for_platform((3, 9), "manylinux2014_aarch64") == HostRuntime((3, 9), "aarch64", "glibc", (2, 17))
    assert runtime_for_platform((3, 8), "musllinux_1_2_x86_64") == HostRuntime((3, 8), "x86_64", "musl", (1, 2))
    assert runtime_for_platform((3, 9), "manylinux_2_28_aarch64").platforms()[0] == "manylinux_2_28_aarch64"
    with pytest.raises(ValueError, match="win_amd64"):
        runtime_for_platform((3, 9), "win_amd64")


def test_an_offline_controller_names_the_command_that_fetches_a_missing_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_payload.WHEELHOUSE_ENV, str(tmp_path))
    wheel(tmp_path, "protobuf-6.33.6-cp39-abi3-manylinux2014_aarch64.whl")
    with pytest.raises(DepsUnavailable) as error:
        _payload.wheels_for(host("cp39-aarch64", "aarch64"))
    message = str(error.value)
    assert "no wheel of grpcio for Python 3.9 on aarch64 (glibc 2.31)" in message
    assert "sshfleet wheelhouse --python 3.9 --platform manylinux_2_31_aarch64 -o DIR" in message
    assert str(tmp_path) in message


def test_an_offline_controller_ships_from_its_wheelhouse_without_asking_an_index(
    mixed_wheelhouse: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_payload.WHEELHOUSE_ENV, str(mixed_wheelhouse[0].parent))
    monkeypatch.setattr(_payload, "fetch_wheels", lambda *a, **k: pytest.fail("asked an index while offline"))
    chosen = _payload.wheels_for(host("cp38-aarch64", "aarch64"))
    assert {d: w.version for d, w in chosen.items()} == {"grpcio": "1.70.0", "protobuf": "5.29.6"}


def test_a_pure_python_wheel_counts_only_for_the_pythons_it_admits(tmp_path: Path) -> None:
    """protobuf publishes no musllinux wheels: a musl host gets its pure-Python wheel, but only a release whose
    Requires-Python admits the host (the file name says py3 for all of them)."""
    wheels = [
        wheel(tmp_path, "grpcio-1.70.0-cp38-cp38-musllinux_1_1_x86_64.whl"),
        wheel(tmp_path, "protobuf-6.33.6-py3-none-any.whl", requires_python=">=3.9"),
        wheel(tmp_path, "protobuf-5.29.6-py3-none-any.whl", requires_python=">=3.8"),
    ]
    musl_38 = host("cp38-x86_64-musl", "x86_64", libc="musl", libc_version="1.2")
    assert chosen_names(wheels, musl_38)[0]["protobuf"] == "protobuf-5.29.6-py3-none-any.whl"
    musl_39 = host("cp39-x86_64-musl", "x86_64", libc="musl", libc_version="1.2")
    assert chosen_names(wheels, musl_39)[0]["protobuf"] == "protobuf-6.33.6-py3-none-any.whl"


@pytest.mark.parametrize(
    ("specifiers", "python", "admitted"),
    [
        (">=3.9", (3, 8), False),
        (">=3.9", (3, 9), True),
        (">=3.7, !=3.8.*", (3, 8), False),
        (">=3.7, !=3.8.*", (3, 9), True),
        (">=3.6,<4", (3, 13), True),
        ("<3.9", (3, 9), False),
        (">=3.8.1", (3, 8), True),  # some 3.8 admits it: micro versions do not decide
    ],
)
def test_requires_python(specifiers: str, python: tuple[int, int], admitted: bool) -> None:
    assert python_admitted(specifiers, python) is admitted
