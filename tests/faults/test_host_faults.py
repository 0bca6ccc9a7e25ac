"""Faults of DESIGN.md not covered elsewhere: sshd killed, the link cut during close(), the controller
SIGKILLed during a bootstrap and during a stream.

Each asserts the per-host outcome, a time bound (the phase's deadline plus generous slack, never a speed), the
other hosts unaffected, and nothing left on any host (also checked by the conftest after every test).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents.exec_agent import ExecAgent
from agents.sysinfo import SysinfoAgent
from sshfleet import Timeouts
from sshfleet.errors import ConnectError
from tests.faults.test_bootstrap_faults import empty_caches

pytestmark = pytest.mark.testbed
REPO = Path(__file__).resolve().parents[2]
SLACK = 10.0


def test_sshd_killed(fresh_testbed):
    """A host whose sshd is down fails to connect at once (connection refused), the others start; a servicer
    already running on a host whose sshd dies is not touched (its session has its own sshd process) and a new
    agent there rides the same connection; once sshd is back, reconnect() starts the refused host."""
    bed = fresh_testbed(3)
    hosts = [h.name for h in bed.hosts]
    with SysinfoAgent(hosts[:1], ssh_options=bed.ssh_options()) as running:
        before = running.Uname()[hosts[0]].pid
        bed.kill_sshd(hosts[0])
        bed.kill_sshd(hosts[2])
        try:
            assert running.Uname()[hosts[0]].pid == before  # the open session lives on without the listener
            started = time.monotonic()
            agent = SysinfoAgent(hosts, ssh_options=bed.ssh_options(), timeouts=Timeouts(connect=5))
            with agent:
                assert time.monotonic() - started < 5 + SLACK
                assert isinstance(agent.started[hosts[2]], ConnectError), agent.started[hosts[2]]
                assert agent.started.ok(hosts[0])  # the live connection is shared: no new login needed
                assert agent.started.ok(hosts[1])
                bed.start_sshd(hosts[2])
                assert agent.reconnect([hosts[2]]).ok(hosts[2])
                assert agent.Uname().ok(hosts[2])
        finally:
            bed.start_sshd(hosts[0])
            bed.start_sshd(hosts[2])


def test_link_cut_during_close(fresh_testbed):
    """close() with one host's link down returns within Timeouts.close plus slack, the other hosts are cleaned
    up at once, and the cut-off host cleans itself up once its link is back (its heartbeat meets the closed
    connection)."""
    bed = fresh_testbed(3)
    hosts = [h.name for h in bed.hosts]
    agent = SysinfoAgent(hosts, ssh_options=bed.ssh_options(), timeouts=Timeouts(close=3))
    try:
        assert agent.Uname().success()
        bed.link_down(hosts[2])
        started = time.monotonic()
        agent.close()
        assert time.monotonic() - started < 3 + SLACK
        assert all(bed.leftovers(h) == [] for h in hosts[:2]) or bed.wait_clean(10).keys() <= {hosts[2]}
    finally:
        bed.link_up(hosts[2])
        agent.close()
    assert bed.wait_clean(30) == {}


def _controller(bed, body: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from sshfleet.testbed import Testbed
        bed = Testbed.load({bed.name!r})
        hosts = {[h.name for h in bed.hosts]!r}
        """
    )
    return subprocess.Popen([sys.executable, "-c", script + textwrap.dedent(body)], stdout=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen[str], line: str, delay: float) -> None:
    with proc:
        _kill(proc, line, delay)


def _kill(proc: subprocess.Popen[str], line: str, delay: float) -> None:
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == line
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_controller_sigkilled_during_bootstrap(fresh_testbed):
    """The controller dies while shipping a cold host's bundles over a slow link: the host's bootstrap sees the
    stream end mid-bundle and exits, leaving no process, no session directory and no half-installed bundle."""
    bed = fresh_testbed(2)
    empty_caches(bed)
    bed.limit_rate(bed.hosts[1].name, rate="256kbit", burst="16kb", latency="500ms")
    body = """
        print("starting", flush=True)
        from agents.sysinfo import SysinfoAgent
        SysinfoAgent(hosts, ssh_options=bed.ssh_options())
        """
    try:
        _kill_after(_controller(bed, body), "starting", 4.0)
        assert bed.wait_clean(10) == {}
        cache = bed.hosts[1].cache_dirs["root"] / "sshfleet"
        assert not [p.name for p in cache.glob(".tmp-*")]
    finally:
        bed.clear_rate(bed.hosts[1].name)


def test_controller_sigkilled_during_a_stream(fresh_testbed):
    """The controller dies while a streaming call runs (a command's live output): every host ends the command,
    the servicer and its session within the bound."""
    bed = fresh_testbed(2)
    body = """
        from agents.exec_agent import ExecAgent
        agent = ExecAgent(hosts, ssh_options=bed.ssh_options())
        stream = agent.stream(shell="while true; do echo tick; sleep 0.1; done")
        for host, kind, chunk in stream:
            print("streaming", flush=True)
            break
        for _ in stream:
            pass
        """
    _kill_after(_controller(bed, body), "streaming", 1.0)
    assert bed.wait_clean(10) == {}


def test_exec_agent_start_is_unaffected_by_a_dead_host(fresh_testbed):
    """A host whose link is down when the agent starts fails by the connect deadline; the others run."""
    bed = fresh_testbed(2)
    hosts = [h.name for h in bed.hosts]
    bed.link_down(hosts[1])
    try:
        started = time.monotonic()
        with ExecAgent(hosts, ssh_options=bed.ssh_options(), timeouts=Timeouts(connect=3)) as agent:
            assert time.monotonic() - started < 3 + 20 + SLACK  # connect, then at worst the auth deadline
            assert isinstance(agent.started[hosts[1]], ConnectError)
            assert agent.Run(["true"]).ok(hosts[0])
    finally:
        bed.link_up(hosts[1])
