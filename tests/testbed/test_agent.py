"""The agent runtime against real sshd hosts: bootstrap onto bare hosts, calls, faults, teardown, access control.

Every test here is also checked by the leftover hook in tests/conftest.py: after it, no process but sshd may
remain in any host's network namespace and no session directory under any ~/.cache/sshfleet/sessions.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.sysinfo import SysinfoAgent
from sshfleet import Timeouts, UsageError, _payload
from sshfleet.errors import CallError, CallTimeout, ChannelError, HostError, RemotePythonError

REPO = Path(__file__).resolve().parents[2]
OTHER_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3"


def names(bed):
    return [h.name for h in bed.hosts]


def empty_caches(bed, user="root"):
    """Remove every payload from the hosts' caches (each host has a private ~/.cache)."""
    for host in bed.hosts:
        cache = host.cache_dirs[user] / "sshfleet"
        if cache.is_dir():
            for entry in cache.iterdir():
                if entry.name not in ("sessions", "controller"):
                    shutil.rmtree(entry)


def test_cold_then_warm_start_on_8_bare_hosts(testbed):
    empty_caches(testbed)
    with SysinfoAgent(names(testbed), ssh_options=testbed.ssh_options()) as agent:
        assert agent.started.success(), agent.started.status()
        assert all(set(info["shipped"]) == {"agent", "deps"} for info in agent.started.values())
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert [r.nodename for r in replies.values()] == names(testbed)
    with SysinfoAgent(names(testbed), ssh_options=testbed.ssh_options()) as agent:
        assert all(info["shipped"] == [] for info in agent.started.values()), agent.started.to_dict()
        assert agent.Uname().success()


def test_bare_host_python_without_grpc(testbed):
    """The `fleet` user's python3 is Debian's /usr/bin/python3, which has no grpcio: we ship it."""
    check = testbed.run(testbed.hosts[0], ["/usr/bin/python3", "-c", "import grpc"], user="fleet", check=False)
    assert check.returncode != 0 and "grpc" in check.stderr
    hosts = names(testbed)[:3]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options(user="fleet")) as agent:
        replies = agent.Uname()
        assert replies.success(), replies.status()
        system = testbed.run(
            testbed.hosts[0], ["/usr/bin/python3", "-c", "import platform; print(platform.python_version())"]
        )
        assert {r.python_version for r in replies.values()} == {system.stdout.strip()}


def test_calls_fan_out_and_keep_every_hosts_result(testbed):
    with SysinfoAgent(names(testbed), ssh_options=testbed.ssh_options()) as agent:
        replies = agent.Fail(message="boom")
        assert not replies.success()
        assert set(replies.errors) == set(names(testbed))
        err = replies["node01"]
        assert isinstance(err, CallError) and err.code == "UNKNOWN"
        assert "RuntimeError: boom" in err.remote_traceback and "sysinfo_servicer.py" in err.remote_traceback
        assert "Traceback" in replies.status()
        # the agent is still usable after a servicer exception
        assert agent.Sleep(seconds=0.01).success()


def test_call_deadline_is_a_per_host_timeout(testbed):
    with SysinfoAgent(names(testbed)[:2], ssh_options=testbed.ssh_options()) as agent:
        replies = agent.Sleep(seconds=5, timeout=0.5)
        assert all(isinstance(o, CallTimeout) for o in replies.values()), replies.status()
        assert {o.code for o in replies.values()} == {"DEADLINE_EXCEEDED"}
        # the timed-out call's stream was cancelled; the next call gets a fresh one
        assert agent.Sleep(seconds=0.01, timeout=10).success()


def test_concurrent_calls_to_one_host_each_get_their_own_call_stream(testbed):
    """Unary calls ride idle call streams, one call per stream at a time: a long call must not hold up the
    calls made while it runs, and the idle streams kept afterwards stay bounded."""
    host = names(testbed)[0]
    with ThreadPoolExecutor(8) as pool:
        agent = SysinfoAgent([host], ssh_options=testbed.ssh_options())
        try:
            long_call = pool.submit(agent.Sleep, seconds=60, timeout=60)
            quick = list(pool.map(lambda _: agent.Uname(), range(6)))
            assert all(r.success() for r in quick), [r.status() for r in quick]
            assert not long_call.done()  # served alongside, not after, the 60 s sleep
            calls = agent._hosts[host].calls
            assert calls is not None and 1 <= len(calls._idle) <= calls._max_idle
        finally:
            agent.close()
        # close() ends the call still in flight: it reports this host's failure instead of hanging
        outcome = long_call.result(timeout=30)["node01"]
        assert isinstance(outcome, HostError), outcome


def test_a_dropped_forward_connection_costs_no_call(testbed):
    """The gRPC connection through the tunnel drops while the servicer lives: the idle call streams end with
    nothing sent on them, and the next call goes out on a fresh stream over a reconnected channel."""
    host = names(testbed)[0]
    with SysinfoAgent([host], ssh_options=testbed.ssh_options()) as agent:
        assert agent.Uname().success()
        state = agent._hosts[host]
        pid = agent.Uname()[host].pid

        def drop() -> int:
            splices = list(state.forward.splices)
            for splice in splices:
                splice.close()
            return len(splices)

        assert agent._hub.call(drop) >= 1
        deadline = time.monotonic() + 30
        while not all(agent._hub.call(lambda: [s.done() for s in state.calls._idle])):
            assert time.monotonic() < deadline, "the idle call streams never noticed the dropped connection"
            time.sleep(0.05)
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert replies[host].pid == pid  # the same servicer answered


def test_streaming_call_merges_hosts(testbed):
    hosts = names(testbed)[:3]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options()) as agent:
        got = list(agent.Count(n=4, size=1000))
        per_host = {h: [c.index for hh, c in got if hh == h] for h in hosts}
        assert per_host == {h: [0, 1, 2, 3] for h in hosts}
        assert all(len(c.data) == 1000 for _, c in got)


def test_a_single_hosts_stream_is_read_on_the_callers_thread(testbed):
    """One host: the stream is read from a sync channel on the caller's thread (SingleHostStream), with the
    same outcomes as the merged stream: replies in order, an error once as (host, CallError), cancel() ends it."""
    host = names(testbed)[0]
    with SysinfoAgent([host], ssh_options=testbed.ssh_options()) as agent:
        stream = agent.Count(n=5, size=100)
        assert type(stream).__name__ == "SingleHostStream"
        assert [(h, c.index, len(c.data)) for h, c in stream] == [(host, i, 100) for i in range(5)]
        failed = list(agent.Count(n=-1, size=10))
        assert len(failed) == 1 and failed[0][0] == host
        assert isinstance(failed[0][1], CallError) and failed[0][1].code == "INVALID_ARGUMENT"
        endless = agent.Count(n=10**9, size=10)
        assert next(endless)[1].index == 0
        endless.cancel()
        assert sum(1 for _ in itertools.islice(endless, 10_000)) < 10_000  # iteration stops instead of running on
        timed_out = list(agent.call_stream("Count", {"n": 10**9, "size": 1024}, timeout=0.5))
        assert isinstance(timed_out[-1][1], CallTimeout), timed_out[-1]
        assert agent.Uname().success()  # the agent still works after all of that


def test_caller_mistakes_fail_before_the_network(testbed):
    with SysinfoAgent(names(testbed)[:1], ssh_options=testbed.ssh_options()) as agent:
        with pytest.raises(UsageError, match="secnds"):
            agent.call("Sleep", secnds=1)
        with pytest.raises(UsageError, match="seconds"):
            agent.Sleep(seconds="long")
        with pytest.raises(UsageError, match="did you mean 'Uname'"):
            agent.call("Unme")


def test_missing_python_is_a_clear_per_host_error_in_every_call(testbed):
    hosts = names(testbed)[:2]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options(), python="/nonexistent/python3") as agent:
        for outcome in (agent.started, agent.Uname()):
            for host in hosts:
                err = outcome[host]
                assert isinstance(err, RemotePythonError), outcome.status()
                assert "/nonexistent/python3" in err.message


def test_other_python_version_on_the_host(testbed):
    """A host whose interpreter is another Python (3.12) gets grpcio/protobuf wheels built for it."""
    if not os.path.exists(OTHER_PYTHON):
        pytest.skip(f"{OTHER_PYTHON} is not on this machine")
    hosts = names(testbed)[:2]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options(), python=OTHER_PYTHON) as agent:
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert {r.python_version[:4] for r in replies.values()} == {"3.12"}


def test_two_agents_share_one_connection_per_host(testbed):
    hosts = names(testbed)[:2]
    opts = testbed.ssh_options()
    with SysinfoAgent(hosts, ssh_options=opts) as one, SysinfoAgent(hosts, ssh_options=opts) as two:
        for host in hosts:
            assert one.fleet.connection(host) is two.fleet.connection(host)
        pids = {r.pid for r in one.Uname().values()} | {r.pid for r in two.Uname().values()}
        assert len(pids) == 4  # one servicer per agent per host
        one.close()
        assert two.Uname().success()  # closing one agent leaves the shared connection to the other


def test_logs_of_a_host(testbed):
    with SysinfoAgent(names(testbed)[:1], ssh_options=testbed.ssh_options()) as agent:
        agent.Fail(message="visible in the log")
        text = agent.logs("node01")
        assert "serving sysinfo_servicer" in text
        assert "visible in the log" in text


def test_close_is_idempotent_and_calls_after_close_are_refused(testbed):
    agent = SysinfoAgent(names(testbed)[:2], ssh_options=testbed.ssh_options())
    agent.close()
    agent.close()
    with pytest.raises(UsageError, match="closed"):
        agent.Uname()


def test_link_cut_mid_call_fails_that_host_by_the_deadline(fresh_testbed):
    bed = fresh_testbed(8)
    agent = SysinfoAgent(names(bed), ssh_options=bed.ssh_options(), timeouts=Timeouts(call=4, close=2), liveness=8)
    try:
        assert agent.started.success(), agent.started.status()
        victim = bed.hosts[3].name
        import threading

        threading.Timer(0.5, bed.link_down, args=(victim,)).start()
        started = time.monotonic()
        replies = agent.Sleep(seconds=1.5)
        elapsed = time.monotonic() - started
        assert set(replies.succeeded) == set(names(bed)) - {victim}, replies.status()
        assert isinstance(replies[victim], (CallTimeout, ChannelError)), replies.status()
        assert elapsed < 4 + 10  # bounded by the deadline (generous margin, not a timing assertion)
    finally:
        agent.close()
        bed.link_up(bed.hosts[3].name)
    # The cut-off servicer stops on its own (no heartbeat for `liveness` s, or the FIN once the link is back).
    assert bed.wait_clean(30) == {}


def test_controller_sigkill_leaves_nothing_on_the_hosts(fresh_testbed):
    bed = fresh_testbed(3)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from agents.sysinfo import SysinfoAgent
        from sshfleet.testbed import Testbed
        bed = Testbed.load({bed.name!r})
        agent = SysinfoAgent({names(bed)!r}, ssh_options=bed.ssh_options())
        assert agent.started.success(), agent.started.status()
        print("started", flush=True)
        agent.Sleep(seconds=60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
            time.sleep(0.5)  # mid-call
            assert all(bed.leftovers(h) for h in bed.hosts)  # the servicers are really there
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert bed.wait_clean(10) == {}


def test_eight_hosts_install_into_one_shared_home_at_once(fresh_testbed):
    bed = fresh_testbed(8, shared_home=True)
    caches = {h.cache_dirs["root"] for h in bed.hosts}
    assert len(caches) == 1
    cache = caches.pop() / "sshfleet"
    agent = SysinfoAgent(names(bed), ssh_options=bed.ssh_options())
    bundles = [agent._bundle]
    agent.close()
    deps = _payload.deps_bundle({"tag": _payload.local_tag(), "machine": os.uname().machine})
    bundles.append(deps)
    for bundle in bundles:
        shutil.rmtree(cache / bundle.hash, ignore_errors=True)
    with SysinfoAgent(names(bed), ssh_options=bed.ssh_options()) as agent:
        assert agent.started.success(), agent.started.status()
        assert agent.Uname().success()
        shipped = sum("deps" in info["shipped"] for info in agent.started.values())
        assert shipped >= 1
    assert not list(cache.glob(".tmp-*"))
    for bundle in bundles:
        with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
            for member in tar.getmembers():
                installed = cache / bundle.hash / member.name
                assert installed.is_file() and installed.stat().st_size == member.size, member.name


def test_another_local_user_is_refused_by_the_servicer(testbed):
    host = testbed.hosts[0]
    with SysinfoAgent([host.name], ssh_options=testbed.ssh_options()) as agent:
        port = agent._hosts[host.name].process.port
        probe = textwrap.dedent(
            f"""
            import struct
            import grpc
            channel = grpc.insecure_channel("127.0.0.1:{port}")
            call = channel.unary_unary("/sysinfo.SysinfoAgent/Uname")
            stream = channel.stream_stream("/sshfleet.Runtime/Calls")
            frame = struct.pack("!IdH", 1, 5.0, 28) + b"/sysinfo.SysinfoAgent/Uname"
            for metadata in ((), (("x-sshfleet-token", "guess"),)):
                try:
                    call(b"", timeout=5, metadata=metadata)
                    print("ANSWERED")
                except grpc.RpcError as exc:
                    print(exc.code().name)
                try:
                    list(stream(iter([frame]), timeout=5, metadata=metadata))
                    print("ANSWERED")
                except grpc.RpcError as exc:
                    print(exc.code().name)
            """
        )
        # The intruder runs Debian's python3 with a grpcio it can read (root's pyenv and venv are 0700).
        libs = Path(tempfile.mkdtemp(dir="/var/tmp"))
        try:
            facts = json.loads(
                subprocess.check_output(
                    [
                        "/usr/bin/python3",
                        "-c",
                        "import json,platform,sys;print(json.dumps({'tag':'cp%d%d-%s'%("
                        "sys.version_info[0],sys.version_info[1],platform.machine()),'machine':platform.machine(),"
                        "'libc':'glibc','libc_version':platform.libc_ver()[1]}))",
                    ]
                )
            )
            with tarfile.open(fileobj=io.BytesIO(_payload.deps_bundle(facts).data), mode="r:gz") as tar:
                tar.extractall(libs, filter="data")
            subprocess.run(["chmod", "-R", "a+rX", str(libs)], check=True)
            result = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.netns,
                    "runuser",
                    "-u",
                    "fleet",
                    "--",
                    "env",
                    f"PYTHONPATH={libs}",
                    "/usr/bin/python3",
                    "-c",
                    probe,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
            )
        finally:
            shutil.rmtree(libs)
        assert result.stdout.split() == ["UNAUTHENTICATED"] * 4, result.stderr
        assert agent.Uname().success()  # the controller itself is still served


def test_openssh_transport_end_to_end(testbed):
    """transport="openssh": ControlMaster per host, the master forwards the servicer's port itself."""
    hosts = names(testbed)[:3]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options(), transport="openssh") as agent:
        assert agent.started.success(), agent.started.status()
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert [r.nodename for r in replies.values()] == hosts
        got = list(agent.Count(n=3, size=100))
        assert len(got) == 9
        failing = agent.Fail(message="over openssh")
        assert all("over openssh" in e.remote_traceback for e in failing.errors.values())
        assert "serving sysinfo_servicer" in agent.logs(hosts[0])


def test_openssh_transport_controller_sigkill_leaves_nothing(fresh_testbed):
    bed = fresh_testbed(2)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from agents.sysinfo import SysinfoAgent
        from sshfleet.testbed import Testbed
        bed = Testbed.load({bed.name!r})
        agent = SysinfoAgent({names(bed)!r}, ssh_options=bed.ssh_options(), transport="openssh")
        assert agent.started.success(), agent.started.status()
        print("started", flush=True)
        agent.Sleep(seconds=60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    # The ssh master and its clients were in their own sessions: they see their peer die and exit too.
    assert bed.wait_clean(15) == {}


def test_from_inventory_with_a_pattern(testbed):
    """XAgent.from_inventory(path, pattern): the inventory's hosts (and ansible_host) through ssh_config."""
    agent = SysinfoAgent.from_inventory(
        str(testbed.inventory), "odd:!node01", ssh_options=testbed.ssh_options(), timeouts=Timeouts(call=30)
    )
    with agent:
        expected = [h for h in names(testbed)[2::2]]  # node03, node05, node07
        assert agent.hosts == expected
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert [r.nodename for r in replies.values()] == expected


def test_load_agent_from_a_proto_runs_its_template_servicer(testbed, tmp_path):
    """sshfleet.load_agent(proto): no generated files in the tree; the servicer template answers on the hosts."""
    import sshfleet

    proto = tmp_path / "probe_agent.proto"
    proto.write_text(
        'syntax = "proto3";\npackage probe;\n'
        "service ProbeAgent { rpc Ping(PingArgs) returns (Response) {} }\n"
        "message PingArgs { string word = 1; }\nmessage Response { bool success = 1; string comment = 2; }\n"
    )
    agent_class = sshfleet.load_agent(str(proto))
    assert list(tmp_path.iterdir()) == [proto]  # nothing written beside the proto
    hosts = names(testbed)[:2]
    with agent_class(hosts, ssh_options=testbed.ssh_options()) as agent:
        replies = agent.Ping(word="hi")
        assert set(replies) == set(hosts) and not replies.errors, replies.status()
        assert all(not r.success and r.comment == "Not implemented." for r in replies.values())
        with pytest.raises(UsageError, match="wrd"):
            agent.call("Ping", wrd="hi")
