"""Faults while a servicer is being started: a slow link while shipping, the link lost while shipping.

Each test starts cold (the hosts' payload caches emptied), so the agent and its grpcio/protobuf bundle are
shipped: several MB, minutes at 256 kbit/s. Time bounds are correctness bounds (the deadline plus generous
slack for a loaded CI machine), never speed assertions.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time

import pytest

from agents.sysinfo import SysinfoAgent
from sshfleet import Fleet, Timeouts
from sshfleet.errors import BootstrapError, ChannelError, HostError

pytestmark = pytest.mark.testbed
SLACK = 10.0


def empty_caches(bed) -> None:
    """Remove every payload from the hosts' caches, so the next start ships everything."""
    for host in bed.hosts:
        for cache in host.cache_dirs.values():
            cache = cache / "sshfleet"
            if cache.is_dir():
                for entry in cache.iterdir():
                    if entry.name not in ("sessions", "controller"):
                        shutil.rmtree(entry)


def kill_sessions(bed, host: str) -> None:
    """SIGKILL the sshd processes serving the host's connections (not its listener): the host's end of every
    connection vanishes with unread data, so the controller's next send meets a reset connection."""
    listener = bed.sshd_pid(host)
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    todo, victims = [listener], []
    while todo:
        pid = todo.pop()
        children = [p for p, ppid in parents.items() if ppid == pid]
        victims += children
        todo += children
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_slow_link_fails_its_host_at_the_bootstrap_deadline_without_holding_back_the_others(fresh_testbed, transport):
    """256 kbit/s to one host, cold caches, bootstrap deadline 12 s: that host fails with "did not start within
    12s" and the constructor returns by then; the others start. (Each send used to get the whole deadline, so
    the constructor returned after minutes and every host waited for the slow one.)"""
    bed = fresh_testbed(3)
    hosts = [h.name for h in bed.hosts]
    empty_caches(bed)
    bed.limit_rate("node03", rate="256kbit", burst="16kb", latency="500ms")
    bootstrap = 12.0
    started = time.monotonic()
    agent = SysinfoAgent(
        hosts, ssh_options=bed.ssh_options(), transport=transport, timeouts=Timeouts(bootstrap=bootstrap)
    )
    try:
        took = time.monotonic() - started
        # connect (fast: the handshake is small) + the bootstrap deadline + slack; minutes before the fix
        assert took < bootstrap + SLACK + 5, took
        outcome = agent.started["node03"]
        assert isinstance(outcome, BootstrapError), outcome
        assert "did not start within 12s" in outcome.message
        assert "shipping" in outcome.message
        assert agent.started.ok("node01") and agent.started.ok("node02"), agent.started.status()
        assert agent.Uname().ok("node01")
    finally:
        agent.close()
        bed.clear_rate("node03")


def test_losing_the_link_while_shipping_is_a_clean_per_host_error(fresh_testbed, capfd, caplog):
    """The link to one host dies while its bundles are being shipped: that host's outcome says the connection
    broke (no "unexpected failure: EOFError()"), within the keepalive's detection time, nothing is printed on
    stderr (closing the dead channel used to raise a second time), and the other hosts start."""
    bed = fresh_testbed(3)
    hosts = [h.name for h in bed.hosts]
    empty_caches(bed)
    bed.limit_rate("node03", rate="256kbit", burst="16kb", latency="500ms")
    caplog.set_level(logging.WARNING)
    cut = threading.Timer(3.0, bed.link_down, args=("node03",))
    try:
        with Fleet(hosts, ssh_options=bed.ssh_options(), keepalive=1) as fleet:
            cut.start()
            started = time.monotonic()
            agent = SysinfoAgent(fleet, timeouts=Timeouts(bootstrap=120))
            took = time.monotonic() - started
            outcome = agent.started["node03"]
            assert isinstance(outcome, HostError), outcome
            assert "unexpected" not in outcome.message and "EOFError" not in outcome.message, outcome.message
            assert isinstance(outcome, (ChannelError, BootstrapError)), outcome
            assert not outcome.message.rstrip().endswith(":"), outcome.message  # it says what broke
            assert agent.started.ok("node01") and agent.started.ok("node02"), agent.started.status()
            # cut after 3 s; keepalive 1 s x 3 notices it; far below the 120 s bootstrap deadline
            assert took < 3 + 4 + SLACK, took
            agent.close()
    finally:
        cut.cancel()
        cut.join()
        bed.link_up("node03")
        bed.clear_rate("node03")
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_connection_reset_while_shipping_is_a_clean_per_host_error(fresh_testbed, capfd, caplog, transport):
    """The host's end of the connection dies while its bundles are being shipped (its sshd session killed: the
    connection is reset): that host fails at once with "the connection broke during bootstrap", never
    "unexpected failure while starting: EOFError()", nothing is printed on stderr (closing the dead channel used
    to raise a second time, with two tracebacks), and the other hosts start."""
    bed = fresh_testbed(3)
    hosts = [h.name for h in bed.hosts]
    empty_caches(bed)
    bed.limit_rate("node03", rate="256kbit", burst="16kb", latency="500ms")
    caplog.set_level(logging.WARNING)
    cut = threading.Timer(3.0, kill_sessions, args=(bed, "node03"))
    try:
        cut.start()
        started = time.monotonic()
        agent = SysinfoAgent(
            hosts, ssh_options=bed.ssh_options(), transport=transport, timeouts=Timeouts(bootstrap=120)
        )
        took = time.monotonic() - started
        with agent:
            outcome = agent.started["node03"]
            assert isinstance(outcome, HostError), outcome
            assert "unexpected" not in outcome.message and "EOFError" not in outcome.message, outcome.message
            assert isinstance(outcome, (ChannelError, BootstrapError)), outcome
            assert not outcome.message.rstrip().endswith(":"), outcome.message  # it says what broke
            assert agent.started.ok("node01") and agent.started.ok("node02"), agent.started.status()
            assert took < 3 + SLACK, took
    finally:
        cut.cancel()
        cut.join()
        bed.clear_rate("node03")
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
