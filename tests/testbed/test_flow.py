"""Non-blocking calls (``.future()``, ``.aio()``) and streams in every direction, on the testbed.

Concurrency is shown by what the hosts see (marker files that exist only while a call runs), never by timing.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from pathlib import Path

import pytest

import sshfleet
from sshfleet import Fleet, UsageError

pytestmark = pytest.mark.testbed
PROTO = Path(__file__).parent / "protos" / "flow.proto"


@pytest.fixture(scope="module")
def flow_class():
    return sshfleet.load_agent(str(PROTO))


def names(bed, n: int) -> list[str]:
    return [h.name for h in bed.hosts[:n]]


def markers(bed, hosts: list[str], marker: str) -> dict[str, int]:
    """How many of the marker files a running call holds exist now on each host."""
    found = {}
    for host in hosts:
        out = bed.run(host, f"ls /tmp | grep -c '^{marker}-' || true").stdout
        found[host] = int(out.strip() or 0)
    return found


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_futures_of_three_agents_run_at_once(testbed, flow_class):
    hosts = names(testbed, 4)
    marker = f"m{uuid.uuid4().hex[:8]}"
    with Fleet(hosts, ssh_options=testbed.ssh_options()) as fleet:
        agents = [flow_class(fleet) for _ in range(3)]
        callback_threads: list[str] = []
        futures = [agent.Work.future(seconds=3, marker=marker) for agent in agents]
        for future in futures:
            future.add_done_callback(lambda f: callback_threads.append(threading.current_thread().name))
        # All three calls run on every host at the same moment: three markers each.
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 3 for h in hosts}, timeout=3)
        for future in futures:
            responses = future.result(timeout=60)
            assert isinstance(responses, sshfleet.Responses)
            assert responses.success(), responses.status()
        assert wait_for(lambda: len(callback_threads) == 3)
        assert "sshfleet-io" not in callback_threads and all(callback_threads)
        with pytest.raises(UsageError, match="no method"):
            agents[0].invoke_future("Nope", {})


def test_aio_calls_from_one_event_loop_run_at_once(testbed, flow_class):
    hosts = names(testbed, 4)
    marker = f"a{uuid.uuid4().hex[:8]}"

    async def main(agents) -> list[sshfleet.Responses]:
        loop = asyncio.get_running_loop()
        calls = [asyncio.ensure_future(agent.Work.aio(seconds=3, marker=marker)) for agent in agents]
        seen = await loop.run_in_executor(
            None, wait_for, lambda: markers(testbed, hosts, marker) == {h: 3 for h in hosts}, 3
        )
        assert seen, "the three calls did not run at once"
        return list(await asyncio.gather(*calls))

    with Fleet(hosts, ssh_options=testbed.ssh_options()) as fleet:
        agents = [fleet.start(flow_class) for _ in range(3)]
        results = asyncio.run(main(agents))
        assert all(r.success() for r in results), [r.status() for r in results]


def test_a_cancelled_future_or_task_leaves_no_remote_work(testbed, flow_class):
    hosts = names(testbed, 4)
    marker = f"c{uuid.uuid4().hex[:8]}"
    with flow_class(hosts, ssh_options=testbed.ssh_options()) as agent:
        future = agent.Work.future(seconds=120, marker=marker)
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 1 for h in hosts})
        assert future.cancel() and future.cancelled()
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 0 for h in hosts}, timeout=15)

        async def cancel_a_task() -> None:
            task = asyncio.ensure_future(agent.Work.aio(seconds=120, marker=marker))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(
                None, wait_for, lambda: markers(testbed, hosts, marker) == {h: 1 for h in hosts}
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_a_task())
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 0 for h in hosts}, timeout=15)
        assert agent.Work(seconds=0, marker=marker).success()  # the agent goes on


def test_client_streaming_broadcast_and_one_stream_per_host(testbed, flow_class):
    hosts = names(testbed, 8)
    with flow_class(hosts, ssh_options=testbed.ssh_options()) as agent:
        replies = dict(agent.Sum([{"value": n} for n in range(10)]))
        assert set(replies) == set(hosts)
        assert {(r.total, r.count) for r in replies.values()} == {(45, 10)}
        per_host = {host: [{"value": i}] * (i + 1) for i, host in enumerate(hosts)}
        replies = dict(agent.Sum(per_host))
        assert {h: r.total for h, r in replies.items()} == {h: (i + 1) * i for i, h in enumerate(hosts)}
        replies = dict(agent.Sum(lambda host: [{"value": int(host[-2:])}]))
        assert {h: r.total for h, r in replies.items()} == {h: int(h[-2:]) for h in hosts}
        with pytest.raises(UsageError, match="not a host"):
            agent.Sum({"nosuchhost": []})
        # a request the caller got wrong ends every host's stream and is raised to the caller, not lost
        with pytest.raises(UsageError, match="nosuch"):
            list(agent.Sum([{"value": 1}, {"nosuch": 2}]))
        assert agent.Sum([{"value": 1}]) is not None and dict(agent.Sum([{"value": 3}]))[hosts[0]].total == 3


def test_bidi_broadcast_tags_each_host_and_an_early_break_cancels(testbed, flow_class):
    hosts = names(testbed, 8)
    with flow_class(hosts, ssh_options=testbed.ssh_options()) as agent:
        got: dict[str, list[int]] = {h: [] for h in hosts}
        for host, reply in agent.Echo([{"value": v} for v in (1, 2, 3)]):
            assert reply.host == host  # the servicer's own hostname: the reply is tagged with the right host
            got[host].append(reply.value)
        assert got == {h: [10, 20, 30] for h in hosts}

        marker = f"b{uuid.uuid4().hex[:8]}"
        sent = itertools.count()

        def endless():
            for n in sent:
                yield {"value": n, "marker": marker}
                time.sleep(0.01)

        stream = agent.Echo(endless(), timeout=120)
        for index, (_host, _reply) in enumerate(stream):
            if index == 3 * len(hosts):
                break
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 1 for h in hosts})
        del stream  # dropped after the break: every host's call is cancelled
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 0 for h in hosts}, timeout=15)
        reading = next(sent)
        time.sleep(0.5)
        assert next(sent) - reading <= 2  # the request reader stopped too


def test_async_servicer_methods_and_the_worker_pool_size(testbed, flow_class):
    hosts = names(testbed, 2)
    marker = f"n{uuid.uuid4().hex[:8]}"
    with flow_class(hosts, ssh_options=testbed.ssh_options(), max_workers=2) as agent:
        replies = agent.Nap(seconds=0.1, marker=marker)
        assert replies.success() and {r.comment for r in replies.values()} == {"napped on the event loop"}
        counted: dict[str, list[int]] = {h: [] for h in hosts}
        for host, num in agent.Countdown(seconds=3, marker=marker):
            counted[host].append(num.value)
        assert counted == {h: [3, 2, 1] for h in hosts}
        # a cancelled async call is cancelled on the servicer's loop too
        future = agent.Nap.future(seconds=120, marker=marker)
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 1 for h in hosts})
        future.cancel()
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 0 for h in hosts}, timeout=15)
        # max_workers=2: three blocking calls at once, but only two run on each host at a time
        works = [agent.Work.future(seconds=2, marker=marker) for _ in range(3)]
        assert wait_for(lambda: markers(testbed, hosts, marker) == {h: 2 for h in hosts})
        seen = []
        while not all(w.done() for w in works):
            seen.append(max(markers(testbed, hosts, marker).values()))
        assert max(seen) <= 2
        assert all(w.result().success() for w in works)


def test_a_call_to_some_of_the_agents_hosts(testbed, flow_class):
    hosts = names(testbed, 4)
    some = hosts[1:3]
    with flow_class(hosts, ssh_options=testbed.ssh_options()) as agent:
        replies = agent.invoke("Work", {"seconds": 0, "marker": "subset"}, hosts=some)
        assert list(replies) == some and replies.success()
        assert [h for h, _ in agent.invoke_as_completed("Work", {"seconds": 0}, hosts=[some[0]])] == [some[0]]
        future = agent.invoke_future("Work", {"seconds": 0}, hosts=reversed(some))
        assert list(future.result(timeout=60)) == some  # host order, whatever order they were named in
        summed = dict(agent.invoke_stream("Sum", [{"value": 2}], hosts=some))
        assert set(summed) == set(some) and {r.total for r in summed.values()} == {2}
        with pytest.raises(UsageError, match="not hosts of this FlowAgent: nosuch"):
            agent.invoke("Work", {}, hosts=["nosuch"])
