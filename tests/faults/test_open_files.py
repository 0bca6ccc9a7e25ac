"""An open-files limit too low for the fleet: raised up to the hard limit when it can be, else a clear error up
front, before any host is contacted, that says what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.testbed

CONTROLLER = """
import resource, sys
from agents.sysinfo import SysinfoAgent
from sshfleet import UsageError
from sshfleet.testbed import Testbed
soft, hard = int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
bed = Testbed.load(sys.argv[1])
try:
    with SysinfoAgent([h.name for h in bed.hosts], ssh_options=bed.ssh_options()) as agent:
        print("ok" if agent.Uname().success() else "failed", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
except UsageError as exc:
    print("usage:", exc)
"""


def controller(bed, soft: int, hard: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CONTROLLER, bed.name, str(soft), str(hard)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_low_soft_limit_is_raised_and_a_low_hard_limit_is_a_clear_error(testbed):
    out = controller(testbed, 40, 4096)
    assert out.startswith("ok "), out
    assert int(out.split()[1]) > 40  # raised for the 8 hosts
    out = controller(testbed, 40, 60)
    assert out.startswith("usage: 8 hosts need about") and "ulimit -n" in out, out
