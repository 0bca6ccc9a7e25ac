"""Calls under faults: every call returns Responses by its deadline (plus the bounded margin), never raises for a
host's failure, and hosts that answer are not held back by those that do not.

Time bounds here are correctness bounds (deadline + CALL_MARGIN + slack for a loaded CI machine), not speed.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from agents.sysinfo import SysinfoAgent
from sshfleet import Responses
from sshfleet._agent import CALL_MARGIN
from sshfleet.errors import CallTimeout, HostError

pytestmark = pytest.mark.testbed
SLACK = 10.0


def test_short_deadlines_under_concurrency_are_always_held(testbed):
    """Four threads, ~3000 calls with deadlines shorter than the work: none overruns, none raises, none is
    abandoned (a stream write waiting for its metadata used to sleep past the deadline, about 1 call in 1000)."""
    hosts = [h.name for h in testbed.hosts[:2]]
    worst: list[float] = []
    abandoned: list[str] = []
    failures: list[BaseException] = []
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options()) as agent:

        def sleeper(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(750):
                started = time.monotonic()
                responses = agent.Sleep(seconds=rng.uniform(0, 0.03), timeout=0.015)
                worst.append(time.monotonic() - started)
                assert isinstance(responses, Responses) and set(responses) == set(hosts)
                for outcome in responses.values():
                    if isinstance(outcome, HostError) and "abandoned" in outcome.message:
                        abandoned.append(outcome.message)

        def prober() -> None:
            for _ in range(750):
                started = time.monotonic()
                assert agent.Uname(timeout=30).success()
                worst.append(time.monotonic() - started)

        def guarded(fn, *args) -> None:
            try:
                fn(*args)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=guarded, args=(sleeper, i)) for i in range(2)]
        threads += [threading.Thread(target=guarded, args=(prober,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        assert not failures, failures[:3]
        assert len(worst) == 3000
        assert not abandoned, abandoned[:3]
        assert max(worst) < 30 + CALL_MARGIN + SLACK
        assert agent.Uname().success()


def test_answers_come_as_they_arrive_and_a_dead_host_times_out(fresh_testbed):
    bed = fresh_testbed(4)
    hosts = [h.name for h in bed.hosts]
    with SysinfoAgent(hosts, ssh_options=bed.ssh_options()) as agent:
        assert agent.Uname().success()
        bed.link_down("node04")
        try:
            started = time.monotonic()
            arrived = []
            for host, outcome in agent.Uname.as_completed(timeout=4):
                arrived.append((host, outcome, time.monotonic() - started))
            assert {h for h, _, _ in arrived[:3]} == set(hosts[:3])
            assert all(not isinstance(o, HostError) for _, o, _ in arrived[:3])
            last_host, last, took = arrived[-1]
            assert last_host == "node04" and isinstance(last, CallTimeout)
            # the three live hosts did not wait for the dead one
            assert max(t for _, _, t in arrived[:3]) < took
            assert took < 4 + CALL_MARGIN + SLACK
            # the blocking form: every host's outcome by the deadline, the dead one a per-host timeout
            responses = agent.Uname(timeout=3)
            assert isinstance(responses["node04"], CallTimeout)
            assert all(responses.ok(h) for h in hosts[:3])
        finally:
            bed.link_up("node04")
