"""Servicers that misbehave: workers stuck past their deadlines, a method that raises, a log that floods.

Each asserts the per-host outcome, a time bound (deadline + margins + generous slack, never a speed), and that
the other hosts are unaffected; the conftest checks that nothing is left on any host.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

import sshfleet
from sshfleet.errors import CallError

pytestmark = pytest.mark.testbed
PROTO = Path(__file__).parent / "protos" / "faulty.proto"
SLACK = 10.0
# The runtime's STUCK_RESTART (10 s) plus one heartbeat period (5 s), when the servicer checks it.
STUCK_RESTART = 10.0
HEARTBEAT = 5.0


@pytest.fixture(scope="module")
def faulty_class():
    return sshfleet.load_agent(str(PROTO))


def test_a_host_whose_workers_are_all_stuck_says_so_and_is_recovered(testbed, faulty_class):
    """Two workers, both held by calls that ignore their 1 s deadlines: the next call is refused with
    RESOURCE_EXHAUSTED naming the stuck workers, and once they have been stuck for STUCK_RESTART seconds the
    servicer exits and the next call runs on a fresh one. The other host answers throughout. (Before, the
    host stayed wedged until a new agent was made.)"""
    host, other = testbed.hosts[5].name, testbed.hosts[6].name
    hostname = testbed.run(host, "hostname").stdout.strip()
    with faulty_class([host, other], ssh_options=testbed.ssh_options(), max_workers=2) as agent:
        first = agent.Pids()
        assert first.success(), first.status()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            hung = [pool.submit(agent.Hang, seconds=600, text=hostname, timeout=1) for _ in range(2)]
            for future in hung:
                replies = future.result(timeout=30)
                assert not replies.ok(host) and replies.ok(other)
        wedged_at = time.monotonic()
        refused = agent.Pids(timeout=2)
        error = refused[host]
        assert isinstance(error, CallError) and error.code == "RESOURCE_EXHAUSTED", error
        assert "2 of 2 held by calls past their own deadlines" in error.message, error.message
        assert refused.ok(other)
        recovered = None
        while time.monotonic() - wedged_at < STUCK_RESTART + HEARTBEAT + SLACK + 10:
            replies = agent.Pids(timeout=5)
            assert replies.ok(other)
            if replies.ok(host) and replies[host].pid != first[host].pid:
                recovered = time.monotonic() - wedged_at
                break
            time.sleep(0.5)
        assert recovered is not None, "the wedged host was never recovered"
        assert agent.Pids()[other].pid == first[other].pid  # the other host's servicer was not touched


def test_a_servicer_that_raises_fails_that_call_only(testbed, faulty_class):
    hosts = [h.name for h in testbed.hosts[:2]]
    with faulty_class(hosts, ssh_options=testbed.ssh_options()) as agent:
        failed = agent.Raise(text="boom on purpose")
        for host in hosts:
            error = failed[host]
            assert isinstance(error, CallError) and error.code == "UNKNOWN", error
            assert "boom on purpose" in error.message and "RuntimeError" in error.remote_traceback
        assert agent.Pids().success()  # the servicer lives on


def test_a_flooded_servicer_log_stays_bounded(testbed, faulty_class):
    """24 MiB logged: servicer.log is rotated once past 8 MiB, so the session holds at most ~16 MiB of log
    (it held all 24 MiB before), and the newest lines are still there for agent.logs()."""
    host = testbed.hosts[7].name
    with faulty_class([host], ssh_options=testbed.ssh_options()) as agent:
        reply = agent.Flood(count=24 * 1024, size=1024, timeout=120)
        assert reply.success(), reply.status()
        sessions = testbed.session_dirs(host)["root"]
        logs = list(sessions.glob("*/servicer.log*"))
        total = sum(p.stat().st_size for p in logs)
        assert total <= 2 * (8 << 20) + (64 << 10), (total, logs)
        assert "x" * 1024 in agent.logs(host, max_bytes=4096)
