"""The Fleet layer on the testbed: one SSH connection per host shared by every agent, one per jump chain.

Connections are counted as the kernel sees them (``ss``, in the controller's network namespace), not as
sshfleet's own bookkeeping says, so a leaked or duplicated connection shows up.
"""

from __future__ import annotations

import subprocess
import time
from typing import Optional

import pytest

from agents.exec_agent import ExecAgent
from agents.sysinfo import SysinfoAgent
from sshfleet import Fleet, HostSpec, SshOptions, Timeouts, UsageError
from sshfleet._fleet import Connected, open_sessions

pytestmark = pytest.mark.testbed
TRANSPORTS = ["paramiko", "openssh"]


def ssh_connections(address: str, settle: Optional[int] = None) -> int:
    """Established TCP connections from this namespace to ``address``:22.

    With ``settle`` (the count expected), look again for up to 5 s until it is reached: a socket closed by its
    process stays ESTABLISHED for a moment while the kernel still sends its last bytes, owned by no process.
    """
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(
            ["ss", "-Htn", "state", "established", "dst", address, "dport", "=", ":22"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        count = len(out.splitlines())
        if settle is None or count == settle or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def names(bed, n: int = 8) -> list[str]:
    return [h.name for h in bed.hosts[:n]]


def behind_jump_host(bed, tmp_path) -> tuple[SshOptions, list[str]]:
    """An ssh_config where node02..node08 are reached only through node01 (``ProxyJump node01``)."""
    blocks = []
    hosts = []
    for host in bed.hosts[1:]:
        hosts.append(f"behind-{host.name}")
        blocks.append(
            f"Host behind-{host.name}\n    HostName {host.address}\n    ProxyJump node01\n    User root\n"
            f"    IdentityFile {bed.client_key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {bed.known_hosts}\n"
        )
    config = tmp_path / "ssh_config"
    config.write_text("\n".join(blocks) + "\n" + bed.ssh_config.read_text())
    return SshOptions(ssh_config=str(config), allow_agent=False, look_for_keys=False), hosts


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hosts_behind_one_jump_host_make_one_connection_to_it(testbed, tmp_path, transport):
    options, hosts = behind_jump_host(testbed, tmp_path)
    bastion = testbed.host("node01").address
    assert len(hosts) == 7
    before = ssh_connections(bastion, settle=0)
    with SysinfoAgent(hosts, ssh_options=options, transport=transport) as agent:
        assert agent.started.success(), agent.started.status()
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert {host: reply.nodename for host, reply in replies.items()} == {
            f"behind-{h.name}": h.name for h in testbed.hosts[1:]
        }
        # Exactly one TCP connection from the controller to the bastion carries all seven hosts.
        assert ssh_connections(bastion, settle=before + 1) - before == 1
        for host in testbed.hosts[1:]:
            assert ssh_connections(host.address, settle=0) == 0  # reached only through the bastion
    assert ssh_connections(bastion, settle=before) == before


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_agents_on_one_fleet_share_one_connection_per_host(testbed, transport):
    hosts = names(testbed, 3)
    with Fleet(hosts, ssh_options=testbed.ssh_options(), transport=transport) as fleet:
        sysinfo = SysinfoAgent(fleet)
        execs = fleet.start(ExecAgent, timeouts=Timeouts(call=7))
        assert fleet.agents == [sysinfo, execs]
        assert execs.timeouts.call == 7 and sysinfo.timeouts.call == fleet.timeouts.call
        assert sysinfo.Uname().success()
        assert execs.Run(argv=["true"]).success()
        for host in testbed.hosts[:3]:
            assert ssh_connections(host.address, settle=1) == 1, host.name
        sysinfo.close()
        assert fleet.agents == [execs]
        assert execs.Run(argv=["true"]).success()  # closing one agent leaves the fleet's connections
    assert execs.closed
    for host in testbed.hosts[:3]:
        assert ssh_connections(host.address, settle=0) == 0, host.name


def test_agents_that_differ_only_in_call_timeout_share_connections(testbed):
    hosts = names(testbed, 2)
    options = testbed.ssh_options()
    held = open_sessions()
    one = SysinfoAgent(hosts, ssh_options=options, timeouts=Timeouts(call=5))
    with one, SysinfoAgent(hosts, ssh_options=options, timeouts=Timeouts(call=50), forks=1) as two:
        assert one.Uname().success() and two.Uname().success()
        for host in hosts:
            assert one.fleet.connection(host) is two.fleet.connection(host)
            assert ssh_connections(testbed.host(host).address, settle=1) == 1
        assert open_sessions() == held + 2
    assert open_sessions() == held


def test_select_is_a_sub_fleet_sharing_connections(testbed):
    with Fleet.from_inventory(str(testbed.inventory), "all", ssh_options=testbed.ssh_options()) as fleet:
        odd = fleet.select("odd")
        assert odd.hosts == ["node01", "node03", "node05", "node07"]
        assert fleet.select("odd:!node07").hosts == ["node01", "node03", "node05"]
        agent = odd.start(SysinfoAgent)
        assert agent.Uname().success()
        for host in odd.hosts:
            assert odd.connection(host) is fleet.connection(host)
            assert ssh_connections(testbed.host(host).address, settle=1) == 1
        assert fleet.state("node02") == "disconnected" and odd.state("node01") == "connected"
        with pytest.raises(UsageError, match="selects none"):
            odd.select("even")
    assert agent.closed and odd.closed
    assert all(ssh_connections(h.address, settle=0) == 0 for h in testbed.hosts)


def test_fleet_connect_reports_each_host_and_close_is_idempotent(testbed):
    specs = [HostSpec("node01"), HostSpec("unreachable", hostname=testbed.host("node02").address, port=2)]
    fleet = Fleet(specs, ssh_options=testbed.ssh_options())
    outcomes = fleet.connect()
    assert isinstance(outcomes["node01"], Connected)
    assert outcomes["node01"].user == "root"
    assert getattr(outcomes["unreachable"], "phase", None) == "tcp"
    agent = SysinfoAgent(fleet)
    assert agent.started.ok("node01") and not agent.started.ok("unreachable")
    fleet.close()
    fleet.close()
    assert agent.closed and fleet.state("node01") == "closed"
    with pytest.raises(UsageError, match="closed"):
        fleet.connection("node01")
    with pytest.raises(UsageError, match="closed"):
        SysinfoAgent(fleet)


def test_an_agent_on_a_fleet_refuses_connection_settings(testbed):
    with Fleet(names(testbed, 1), ssh_options=testbed.ssh_options()) as fleet:
        with pytest.raises(UsageError, match="belong to the Fleet"):
            SysinfoAgent(fleet, user="someone", forks=2)
        assert fleet.agents == []
