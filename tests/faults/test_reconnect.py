"""Hosts that come back are used again: a host whose connection or servicer was lost is revived by the next call
(or by ``reconnect()``), without touching the other hosts."""

from __future__ import annotations

import time

import pytest

from agents.sysinfo import SysinfoAgent
from sshfleet import Fleet, HostError

pytestmark = pytest.mark.testbed


def pids(responses) -> dict[str, int]:
    return {host: reply.pid for host, reply in responses.items() if not isinstance(reply, HostError)}


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def gone(bed, host: str, pid: int) -> bool:
    return bed.run(host, f"kill -0 {pid} 2>/dev/null && echo alive || echo gone").stdout.strip() == "gone"


def test_a_lost_connection_is_revived_by_the_next_call(testbed):
    hosts = [h.name for h in testbed.hosts[:3]]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options()) as agent:
        before = pids(agent.Uname())
        assert set(before) == set(hosts)
        agent.fleet.connection("node02").close()  # the connection drops under the agent
        assert wait_until(lambda: gone(testbed, "node02", before["node02"]))  # the servicer saw EOF and left
        after = agent.Uname()
        assert after.success(), after.status()
        now = pids(after)
        assert now["node02"] != before["node02"]  # a new servicer on node02
        assert {h: now[h] for h in ("node01", "node03")} == {h: before[h] for h in ("node01", "node03")}


def test_a_cut_link_is_noticed_and_the_host_is_used_again_once_it_is_back(fresh_testbed):
    bed = fresh_testbed(3)
    hosts = [h.name for h in bed.hosts]
    with Fleet(hosts, ssh_options=bed.ssh_options(), keepalive=1) as fleet:
        agent = SysinfoAgent(fleet)
        before = pids(agent.Uname())
        bed.link_down("node03")
        try:
            during = agent.Uname(timeout=2)
            assert isinstance(during["node03"], HostError)
            assert during.ok("node01") and during.ok("node02")  # the others are not held back
            # keepalive 1 s x ServerAliveCountMax 3: the lost link is noticed on its own
            assert wait_until(lambda: agent._hosts["node03"].lost, timeout=20)
        finally:
            bed.link_up("node03")
        # Calls revive the host once it answers again (with backoff between failed attempts).
        assert wait_until(lambda: agent.Uname(timeout=10).ok("node03"), timeout=90)
        now = pids(agent.Uname())
        assert now["node03"] != before["node03"]
        assert {h: now[h] for h in ("node01", "node02")} == {h: before[h] for h in ("node01", "node02")}


def test_reconnect_restarts_only_the_hosts_in_error(testbed):
    hosts = [h.name for h in testbed.hosts[:3]]
    with Fleet(hosts, ssh_options=testbed.ssh_options()) as fleet:
        agent = SysinfoAgent(fleet)
        before = pids(agent.Uname())
        fleet.connection("node01").close()
        assert wait_until(lambda: agent._hosts["node01"].lost)
        outcomes = fleet.reconnect()
        assert all(not isinstance(o, HostError) for o in outcomes.values()), outcomes
        now = pids(agent.Uname())
        assert now["node01"] != before["node01"]
        assert {h: now[h] for h in hosts[1:]} == {h: before[h] for h in hosts[1:]}
        assert agent.reconnect().method == "reconnect" and len(agent.reconnect()) == 0  # nothing in error now
        with pytest.raises(Exception, match="not hosts of this agent"):
            agent.reconnect(["nosuch"])
