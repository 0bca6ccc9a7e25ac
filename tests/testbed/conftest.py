"""Tests under tests/testbed/ run against real sshd hosts: they are marked ``testbed`` here, and skipped as a
whole (with the reason) when not root, because nothing in them can run without network namespaces.

``openssh`` runs the real OpenSSH client against a testbed, for tests that compare with what ``ssh`` does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import pytest

if TYPE_CHECKING:
    from sshfleet.testbed import Testbed, TestbedHost

HERE = Path(__file__).parent
NOT_ROOT = "the testbed needs root (network namespaces, veth, bridge, sshd on port 22)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in item.path.parents:
            continue
        if item.get_closest_marker("testbed") is None:
            item.add_marker(pytest.mark.testbed)
        if os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT))


def openssh_run(
    bed: Testbed,
    host: TestbedHost | str,
    command: str,
    user: Optional[str] = None,
    timeout: float = 30.0,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``ssh -F <testbed ssh_config> [-l user] host command``, the real client; never prompts or hangs."""
    # ssh keeps the first value it sees for an option, so ``extra`` goes before the defaults.
    argv = ["ssh", "-F", str(bed.ssh_config), *extra, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    if user is not None:
        argv += ["-l", user]
    argv += [str(host), command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def openssh() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``openssh(bed, host, command, user=None, timeout=30, extra=())`` -> CompletedProcess of ssh."""
    return openssh_run
