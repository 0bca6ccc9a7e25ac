"""The exec agent's Python API against real sshd hosts: argv kept verbatim, stdin, exit statuses, timeouts,
live streams from every host, signals to process groups, ptys, and nothing left running afterwards.

The leftover hook (tests/conftest.py) checks after each test that no process but sshd remains on any host.
"""

from __future__ import annotations

import re
import time

import pytest

from agents.exec_agent import PIPE, ExecAgent
from sshfleet.errors import UsageError

# RPC deadline for calls that must not hang: if one did, the test fails with CallTimeout instead of hanging.
NO_HANG = 30.0


def names(bed, n=None):
    return [h.name for h in bed.hosts][:n]


def fleet_of(bed):
    """An ExecAgent on every host of ``bed``, used in a ``with`` inside each test: the leftover check runs at
    the end of the test's own body, before fixtures are torn down, and wants the servicers gone too."""
    agent = ExecAgent(names(bed), ssh_options=bed.ssh_options())
    assert agent.started.success(), agent.started.status()
    return agent


def remote_processes(bed, host, needle):
    """The processes in ``host``'s network namespace whose command line contains ``needle``."""
    return [p for p in bed.leftovers(host) if needle in p and "sshd" not in p]


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_argv_is_passed_exactly(testbed):
    with fleet_of(testbed) as fleet:
        replies = fleet.Run(["printf", "%s\n", "a b", "c'd", "$HOME", ""], rpc_timeout=NO_HANG)
        assert replies.success(), replies.status()
        for reply in replies.values():
            assert reply.stdout == b"a b\nc'd\n$HOME\n\n"
            assert (reply.exit_code, reply.signal, reply.stderr, reply.started) == (0, 0, b"", True)


def test_a_command_reading_stdin_ends_at_once_without_stdin(testbed):
    with fleet_of(testbed) as fleet:
        replies = fleet.Run(["cat"], rpc_timeout=NO_HANG)
        assert replies.success(), replies.status()
        assert {r.stdout for r in replies.values()} == {b""}
        check = fleet.Run(["readlink", "/proc/self/fd/0"], rpc_timeout=NO_HANG)
        assert {r.stdout for r in check.values()} == {b"/dev/null\n"}


def test_stdin_bytes_reach_the_command_then_eof(testbed):
    with fleet_of(testbed) as fleet:
        data = bytes(range(256)) * 1000
        replies = fleet.Run(["cat"], stdin=data, rpc_timeout=NO_HANG)
        assert replies.success(), replies.status()
        assert all(r.stdout == data for r in replies.values())


def test_exit_codes_stderr_and_commands_that_cannot_start(testbed):
    with fleet_of(testbed) as fleet:
        replies = fleet.Run(shell='echo "on $(hostname)" >&2; test $(hostname) != node02', rpc_timeout=NO_HANG)
        assert not replies.success()
        assert list(replies.failed) == ["node02"]
        assert replies["node02"].exit_code == 1 and replies["node01"].exit_code == 0
        assert replies["node03"].stderr == b"on node03\n"
        missing = fleet.Run(["no-such-command-here"], rpc_timeout=NO_HANG)
        for reply in missing.values():
            assert (reply.started, reply.exit_code, reply.success) == (False, 127, False)
            assert "no-such-command-here: command not found" in reply.comment
        bad_cwd = fleet.Run(["true"], cwd="/no/such/dir", rpc_timeout=NO_HANG)
        assert {(r.started, r.exit_code) for r in bad_cwd.values()} == {(False, 126)}


def test_env_and_cwd_default_to_the_login_home(testbed):
    with fleet_of(testbed) as fleet:
        replies = fleet.Run(shell='printf "%s|%s" "$GREETING" "$PWD"', env={"GREETING": "a b"}, rpc_timeout=NO_HANG)
        assert {r.stdout for r in replies.values()} == {b"a b|/root"}
        in_tmp = fleet.Run(["pwd"], cwd="/tmp", rpc_timeout=NO_HANG)
        assert {r.stdout for r in in_tmp.values()} == {b"/tmp\n"}


def test_timeout_kills_the_process_group(testbed):
    with fleet_of(testbed) as fleet:
        replies = fleet.Run(shell="sleep 300 & sleep 301; wait", timeout=0.5, rpc_timeout=NO_HANG)
        for reply in replies.values():
            assert reply.timed_out and reply.signal == 15 and reply.exit_code == 143 and not reply.success
            assert "timed out after 0.5s" in reply.comment
        for host in names(testbed):
            assert wait_until(lambda h=host: not remote_processes(testbed, h, "sleep 30")), testbed.leftovers(host)


def test_a_background_child_holding_stdout_does_not_hold_the_call(testbed):
    with fleet_of(testbed) as fleet:
        replies = fleet.Run(shell="sleep 300 & echo started", rpc_timeout=NO_HANG)
        assert replies.success(), replies.status()
        assert {r.stdout for r in replies.values()} == {b"started\n"}
        # Still running until the agent closes (the leftover hook checks that closing removes it).
        assert remote_processes(testbed, "node01", "sleep 300")


def test_caller_mistakes_are_raised_before_the_network(testbed):
    with fleet_of(testbed) as fleet:
        with pytest.raises(UsageError, match="never split"):
            fleet.Run("echo hi")
        with pytest.raises(UsageError, match="exactly one of argv"):
            fleet.Run(["echo"], shell="echo")
        with pytest.raises(UsageError, match="exactly one of argv"):
            fleet.stream()
        with pytest.raises(UsageError, match="cannot send"):
            fleet.stream(["true"]).send_signal("SIGNOPE")


def test_stream_yields_chunks_from_every_host_then_exit_codes(testbed):
    with fleet_of(testbed) as fleet:
        seen: dict[str, bytes] = {}
        errors: dict[str, bytes] = {}
        with fleet.stream(shell='for i in 1 2 3; do echo "$i"; sleep 0.1; done; echo bye >&2; exit 4') as live:
            for host, stream, chunk in live:
                target = seen if stream == "stdout" else errors
                target[host] = target.get(host, b"") + chunk
        assert seen == {h: b"1\n2\n3\n" for h in names(testbed)}
        assert errors == {h: b"bye\n" for h in names(testbed)}
        assert live.exit_codes == {h: 4 for h in names(testbed)}
        assert live.done and not live.results.success()
        assert {r.stdout for r in live.results.values()} == {b""}


def test_poll_reports_each_exit_as_it_happens(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(shell='[ "$(hostname)" = node01 ] && exit 0; sleep 300')
        event = None
        while event is None or event.kind != "exit":
            event = live.poll(NO_HANG)
            assert event is not None, "node01 never reported its exit"
        assert (event.host, event.data.exit_code) == ("node01", 0)
        assert live.exit_codes["node02"] is None and not live.done
        live.send_signal("SIGTERM")
        assert live.wait().status()
        assert all(live.exit_codes[h] == 143 for h in names(testbed)[1:])


def test_sigint_reaches_every_process_of_the_command(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(shell="sh -c 'echo ready; sleep 300'; echo not-reached")
        ready = set()
        while len(ready) < len(fleet.hosts):
            event = live.poll(NO_HANG)
            assert event is not None
            if event.kind == "stdout":
                ready.add(event.host)
        live.send_signal("SIGINT")
        results = live.wait()
        for reply in results.values():
            assert (reply.signal, reply.exit_code) == (2, 130), reply
        for host in names(testbed):
            assert wait_until(lambda h=host: not remote_processes(testbed, h, "sleep 300")), testbed.leftovers(host)


def test_stdin_from_an_iterable_is_broadcast(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(["cat"], stdin=iter([b"a", b"b\n", b"c"]))
        out: dict[str, bytes] = {}
        for host, _, chunk in live:
            out[host] = out.get(host, b"") + chunk
        assert out == {h: b"ab\nc" for h in names(testbed)}
        assert live.results.success()


def test_stdin_pipe_written_and_closed_by_the_caller(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(["sh", "-c", "read a; echo got:$a; cat"], stdin=PIPE)
        live.write("one\n")
        live.write(b"two\n")
        live.close_stdin()
        out: dict[str, bytes] = {}
        for host, _, chunk in live:
            out[host] = out.get(host, b"") + chunk
        assert out == {h: b"got:one\ntwo\n" for h in names(testbed)}


def test_pty_gives_a_real_terminal(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(["sh", "-c", "tty; stty size; echo $TERM"], pty=True, term="xterm", window=(33, 101))
        out: dict[str, bytes] = {}
        for host, stream, chunk in live:
            assert stream == "stdout"
            out[host] = out.get(host, b"") + chunk
        for text in out.values():
            assert re.fullmatch(rb"/dev/pts/\d+\r\n33 101\r\nxterm\r\n", text), text
        assert live.results.success()


def test_pty_input_is_typed_into_the_terminal(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(["sh", "-c", "read x; echo got:$x"], pty=True, stdin=PIPE)
        live.write(b"hello\r")
        out: dict[str, bytes] = {}
        for host, _, chunk in live:
            out[host] = out.get(host, b"") + chunk
        assert out == {h: b"hello\r\ngot:hello\r\n" for h in names(testbed)}


def test_pty_resize_reaches_the_command(testbed):
    with fleet_of(testbed) as fleet:
        script = "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"
        live = fleet.stream(["sh", "-c", script], pty=True, stdin=PIPE, window=(24, 80))
        ready = set()
        while len(ready) < len(fleet.hosts):
            event = live.poll(NO_HANG)
            assert event is not None
            ready.add(event.host)
        live.resize(50, 132)
        out: dict[str, bytes] = {}
        for host, _, chunk in live:
            out[host] = out.get(host, b"") + chunk
        assert all(text.endswith(b"50 132\r\n") for text in out.values()), out
        assert live.results.success()


def test_cancel_kills_the_remote_commands(testbed):
    with fleet_of(testbed) as fleet:
        live = fleet.stream(shell="echo ready; exec sleep 300")
        ready = set()
        while len(ready) < len(fleet.hosts):
            event = live.poll(NO_HANG)
            assert event is not None
            ready.add(event.host)
        live.cancel()
        results = live.wait()
        assert all(r.code == "CANCELLED" for r in results.values())
        assert live.exit_codes == {h: None for h in names(testbed)}
        for host in names(testbed):  # the agent is still open: the hosts did this on their own
            assert wait_until(lambda h=host: not remote_processes(testbed, h, "sleep 300")), testbed.leftovers(host)


def test_unreachable_host_is_an_outcome_of_run_and_stream(fresh_testbed):
    bed = fresh_testbed(2)
    bed.link_down("node02")
    options = bed.ssh_options().replace(timeouts=bed.ssh_options().timeouts.replace(connect=1.0, auth=2.0))
    with ExecAgent(names(bed), ssh_options=options) as agent:
        replies = agent.Run(["true"], rpc_timeout=NO_HANG)
        assert replies.ok("node01") and replies.errors["node02"].kind == "unreachable"
        live = agent.stream(["echo", "x"])
        assert list(live) == [("node01", "stdout", b"x\n")]
        assert live.exit_codes == {"node01": 0, "node02": None}
        assert live.results.errors["node02"].kind == "unreachable"
