"""Everything a servicer started dies with it, however it was started and however the servicer ended; stale
session directories are swept; ``detach`` is the one way to leave a process running on purpose.

A supervisor on the host (the exec'd process, a child subreaper) outlives the servicer and does the killing, so
that setsid and double-forked daemons cannot escape. Time bounds are correctness bounds, not speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sshfleet
from agents.exec_agent import ExecAgent
from sshfleet.errors import HostError

pytestmark = pytest.mark.testbed
PROTO = Path(__file__).parent / "protos" / "faulty.proto"
REPO = Path(__file__).resolve().parents[2]
# One of each way a process used to escape teardown: a background job, nohup, setsid, a double fork, and a
# setsid'd shell that double-forks in its new session.
DAEMONS = (
    "sleep 3001 & "
    "nohup sleep 3002 >/dev/null 2>&1 & "
    "setsid sleep 3003 >/dev/null 2>&1 & "
    "( sleep 3004 & ) & "
    "setsid sh -c 'sleep 3005 & exit' &"
)
SLEEPS = [f"sleep 300{i}" for i in range(1, 6)]
CLEAN_WITHIN = 10.0


@pytest.fixture(scope="module")
def faulty_class():
    return sshfleet.load_agent(str(PROTO))


def running(bed, host: str) -> list[str]:
    """Which of the daemons run on the host now."""
    left = " ".join(bed.leftovers(host))
    return [s for s in SLEEPS if s in left]


def remains(bed, host: str) -> list[str]:
    """What is left on the host besides sshd (whose session process lives as long as the agent's connection)."""
    return [what for what in bed.leftovers(host) if "sshd:" not in what]


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def spawn_daemons(agent, bed, host: str) -> None:
    reply = agent.Spawn(text=DAEMONS, timeout=30)
    assert reply.success(), reply.status()
    assert wait_for(lambda: running(bed, host) == SLEEPS), running(bed, host)


@pytest.mark.parametrize("ending", ["close", "servicer SIGKILL", "servicer os._exit"])
def test_everything_a_servicer_started_dies_with_it(testbed, faulty_class, ending):
    """Daemons started with &, nohup, setsid and double forks are all gone, with the session directory, within
    CLEAN_WITHIN seconds of the servicer's end, whether it was closed, SIGKILLed, or called os._exit; another
    agent's servicer (on another host) and its daemons are not touched. (Before the supervisor, setsid and
    double-forked daemons survived close(), and a crashed servicer left everything, its session directory
    included.)"""
    host, other = testbed.hosts[0].name, testbed.hosts[1].name
    agent = faulty_class([host], ssh_options=testbed.ssh_options())
    bystander = faulty_class([other], ssh_options=testbed.ssh_options())
    try:
        spawn_daemons(agent, testbed, host)
        spawn_daemons(bystander, testbed, other)
        servicer = agent.Pids()[host].pid
        before = bystander.Pids()[other].pid
        if ending == "close":
            agent.close()
        elif ending == "servicer SIGKILL":
            testbed.run(host, f"kill -9 {servicer}")
        else:
            crashed = agent.Crash(timeout=10)
            assert isinstance(crashed[host], HostError)
        ended = time.monotonic()
        assert wait_for(lambda: remains(testbed, host) == [], CLEAN_WITHIN), remains(testbed, host)
        assert time.monotonic() - ended < CLEAN_WITHIN
        assert bystander.Pids()[other].pid == before
        assert running(testbed, other) == SLEEPS
    finally:
        agent.close()
        bystander.close()


def test_everything_a_servicer_started_dies_when_the_controller_is_sigkilled(fresh_testbed):
    bed = fresh_testbed(2)
    hosts = [h.name for h in bed.hosts]
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import sshfleet
        from sshfleet.testbed import Testbed
        bed = Testbed.load({bed.name!r})
        agent = sshfleet.load_agent({str(PROTO)!r})({hosts!r}, ssh_options=bed.ssh_options())
        assert agent.started.success(), agent.started.status()
        assert agent.Spawn(text={DAEMONS!r}, timeout=30).success()
        print("spawned", flush=True)
        agent.Hang(seconds=600, timeout=600)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "spawned"
            assert all(wait_for(lambda h=h: running(bed, h) == SLEEPS) for h in hosts)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    # The connection's end reaches each servicer as EOF on stdin; its supervisor kills the rest.
    assert bed.wait_clean(CLEAN_WITHIN + 5) == {}


def test_sshfleet_run_kills_every_background_process_when_the_agent_closes(testbed):
    """`sshfleet run`'s rule: whatever a command leaves in the background (&, nohup, setsid, double fork) is
    killed when the agent closes (when the run ends). Before, nohup'd jobs died and setsid'd ones survived."""
    host = testbed.hosts[2].name
    with ExecAgent([host], ssh_options=testbed.ssh_options()) as agent:
        reply = agent.Run(shell=DAEMONS)
        assert reply.success(), reply.status()
        assert wait_for(lambda: running(testbed, host) == SLEEPS), running(testbed, host)
    assert wait_for(lambda: testbed.leftovers(host) == [], CLEAN_WITHIN), testbed.leftovers(host)


def test_a_detached_command_outlives_the_agent(testbed):
    """Run(..., detach=True) is the one way to leave a process running: it and what it starts in its session
    survive close(); everything else the agent started does not."""
    host = testbed.hosts[3].name
    with ExecAgent([host], ssh_options=testbed.ssh_options()) as agent:
        kept = agent.Run(shell="sleep 3006 & exec sleep 3007", detach=True)
        assert kept.success(), kept.status()
        pid = kept[host].pid
        assert kept[host].started and pid > 0
        assert agent.Run(shell="setsid sleep 3003 >/dev/null 2>&1 &").success()
        assert wait_for(lambda: "sleep 3003" in " ".join(testbed.leftovers(host)))
    try:
        assert wait_for(lambda: "sleep 3003" not in " ".join(testbed.leftovers(host)), CLEAN_WITHIN)
        time.sleep(1)
        left = " ".join(testbed.leftovers(host))
        assert "sleep 3006" in left and "sleep 3007" in left, left
        assert "session entry" not in left, left
    finally:
        testbed.run(host, f"kill -9 -{pid} 2>/dev/null; true")
    assert wait_for(lambda: testbed.leftovers(host) == [], CLEAN_WITHIN), testbed.leftovers(host)


def test_stale_session_directories_are_swept_on_the_next_start(testbed, faulty_class):
    """A supervisor killed with its servicer (the OOM killer, a reboot) leaves its session directory; the next
    start on that host removes it. A directory owned by another host (a shared $HOME) is left alone."""
    host = testbed.hosts[4].name
    sessions = testbed.session_dirs(host)["root"]
    with faulty_class([host], ssh_options=testbed.ssh_options()) as agent:
        reply = agent.Pids()[host]
        supervisor, servicer = reply.ppid, reply.pid
        stale = list(sessions.iterdir())
        assert len(stale) == 1
        testbed.run(host, f"kill -9 {supervisor} {servicer}")
        assert isinstance(agent.Pids(timeout=5)[host], HostError)
    assert stale[0].is_dir()  # nobody was left to remove it
    foreign = sessions / "1-foreign"
    foreign.mkdir(mode=0o700)
    (foreign / "owner").write_text(f"another-host {'0' * 8} {os.getpid()}\n")
    try:
        with faulty_class([host], ssh_options=testbed.ssh_options()) as agent:
            assert agent.started.success(), agent.started.status()
            assert not stale[0].exists()
            assert foreign.is_dir()
    finally:
        shutil.rmtree(foreign, ignore_errors=True)
