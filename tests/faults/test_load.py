"""Load (slow: `make test-faults`): 16 hosts x 2,000 calls from 4 threads, then a 64-host fan-out; every call is
accounted for (each host's reply comes from that host, none lost or misattributed) and the controller's
threads, fds and memory stay flat. Bounds are generous: they catch leaks that grow with the number of calls,
not noise.
"""

from __future__ import annotations

import os
import threading

import pytest

from agents.sysinfo import SysinfoAgent

pytestmark = [pytest.mark.testbed, pytest.mark.slow]
ROUNDS_PER_THREAD = 500  # x 4 threads = 2,000 fan-out calls
THREADS = 4


def controller_usage() -> tuple[int, int, int]:
    """(threads, open fds, RSS in KiB) of this process."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return threading.active_count(), len(os.listdir("/proc/self/fd")), int(status["VmRSS"].split()[0])


def test_16_hosts_2000_calls_from_4_threads_every_call_accounted_for(fresh_testbed):
    bed = fresh_testbed(16)
    hosts = [h.name for h in bed.hosts]
    with SysinfoAgent(hosts, ssh_options=bed.ssh_options()) as agent:
        first = agent.Uname()
        assert first.success(), first.status()
        nodes = {host: reply.nodename for host, reply in first.items()}
        for _ in range(50):  # warm: call streams, thread pools and allocator arenas reach their working size
            agent.Uname()
        before = controller_usage()
        errors: list[str] = []
        counts = [0] * THREADS

        def caller(index: int) -> None:
            try:
                for _ in range(ROUNDS_PER_THREAD):
                    replies = agent.Uname(timeout=60)
                    if set(replies) != set(hosts):
                        errors.append(f"hosts {sorted(replies)}")
                    for host, reply in replies.items():
                        if not replies.ok(host):
                            errors.append(f"{host}: {reply}")
                        elif reply.nodename != nodes[host]:
                            errors.append(f"{host} answered as {reply.nodename}")
                        else:
                            counts[index] += 1
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(1200)
        after = controller_usage()
        assert not errors, errors[:5]
        assert sum(counts) == THREADS * ROUNDS_PER_THREAD * len(hosts)
        assert after[0] <= before[0] + 2, (before, after)  # threads
        assert after[1] <= before[1] + 16, (before, after)  # fds
        assert after[2] <= before[2] + 64 * 1024, (before, after)  # RSS, KiB


def test_64_host_fan_out(fresh_testbed):
    bed = fresh_testbed(64)
    hosts = [h.name for h in bed.hosts]
    with SysinfoAgent(hosts, ssh_options=bed.ssh_options()) as agent:
        assert agent.started.success(), agent.started.status()
        first = agent.Uname()
        nodes = {host: reply.nodename for host, reply in first.items()}
        assert len(set(nodes.values())) == 64
        before = controller_usage()
        for _ in range(200):
            replies = agent.Uname(timeout=60)
            assert replies.success(), replies.status()
            assert {h: r.nodename for h, r in replies.items()} == nodes
        after = controller_usage()
        assert after[0] <= before[0] + 2 and after[1] <= before[1] + 16, (before, after)
        assert after[2] <= before[2] + 64 * 1024, (before, after)
