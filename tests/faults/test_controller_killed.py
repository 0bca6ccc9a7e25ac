"""A controller killed with SIGKILL: its hosts clean up on their own (the leftover check after the test), and the
private directories it left on the controller are removed by the next controller that starts."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from sshfleet._ssh._forward import FORWARD_PREFIX

pytestmark = pytest.mark.testbed

CONTROLLER = """
import sys, time
from agents.sysinfo import SysinfoAgent
from sshfleet.testbed import Testbed
agent = SysinfoAgent(["node01"], ssh_options=Testbed.load(sys.argv[1]).ssh_options())
assert agent.Uname().success()
print("up", flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
agent.close()
"""


def controller(bed, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, bed.name, mode], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )


def test_the_next_controller_sweeps_what_a_killed_one_left(testbed):
    killed = controller(testbed, "hang")
    assert killed.stdout is not None and killed.stdout.readline().strip() == "up"
    left = glob.glob(os.path.join(tempfile.gettempdir(), f"{FORWARD_PREFIX}{killed.pid}-*"))
    assert len(left) == 1
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    killed.stdout.close()
    assert os.path.isdir(left[0])  # nothing could remove it
    follower = controller(testbed, "exit")
    out, _ = follower.communicate(timeout=120)
    assert follower.returncode == 0 and out.strip() == "up"
    assert not os.path.exists(left[0])
    deadline = time.monotonic() + 10
    while testbed.leftovers("node01") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert testbed.leftovers("node01") == []  # the killed controller's servicer stopped on its own
