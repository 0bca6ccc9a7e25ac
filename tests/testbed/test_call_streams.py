"""The controller's HTTP/2 side of the call streams (sshfleet/_calls.py) against real servicers, both transports:
messages larger than every flow-control window and frame, many calls in flight on one host, a deadline that
resets only its own stream, and the session token still checked by the servicer."""

from __future__ import annotations

import hashlib
import os

import pytest

from agents.exec_agent import ExecAgent
from agents.sysinfo import SysinfoAgent
from sshfleet._calls import CallFailed, CallStreams
from sshfleet.errors import CallTimeout
from sshfleet.remote.runtime import TOKEN_KEY

TRANSPORTS = ["paramiko", "openssh"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_and_reply_larger_than_every_window_arrive_whole(testbed, transport):
    """20 MiB each way through one unary call: more than the servicer's and the controller's HTTP/2 windows
    (so both sides wait for WINDOW_UPDATEs) and than any one frame (so a message spans many DATA frames)."""
    host = testbed.hosts[0].name
    data = os.urandom(20 << 20)
    with ExecAgent([host], ssh_options=testbed.ssh_options().replace(transport=transport)) as agent:
        replies = agent.Run(["sha256sum"], stdin=data, rpc_timeout=120)
        assert replies.success(), replies.status()
        assert replies[host].stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
        replies = agent.Run(shell=f"head -c {20 << 20} /dev/zero", rpc_timeout=120)
        assert replies.success(), replies.status()
        assert replies[host].stdout == bytes(20 << 20)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_deadline_resets_only_its_own_stream(testbed, transport):
    """Calls in flight on one host each have a stream; the one whose deadline passes ends (on the host too),
    the others answer, and the connection carries the next calls."""
    host = testbed.hosts[0].name
    with SysinfoAgent([host], ssh_options=testbed.ssh_options().replace(transport=transport)) as agent:
        slow = [agent.Sleep.future(seconds=1.0, timeout=30) for _ in range(6)]
        doomed = agent.Sleep.future(seconds=30, timeout=0.5)
        assert isinstance(doomed.result(10)[host], CallTimeout)
        assert all(f.result(30).success() for f in slow)
        for _ in range(20):
            assert agent.Uname().success()


def test_the_servicer_refuses_a_call_stream_without_the_session_token(testbed):
    """The token is what lets a stream in: the same socket with a wrong token gets no call through."""
    host = testbed.hosts[0].name
    with SysinfoAgent([host], ssh_options=testbed.ssh_options()) as agent:
        state = agent._hosts[host]
        good = agent.Uname()[host]

        async def call_with(token: str) -> bytes:
            calls = CallStreams(None, ((TOKEN_KEY, token),), target=state.forward.target)
            try:
                return bytes(await calls.call(b"/sysinfo.SysinfoAgent/Uname", b"", 10))
            finally:
                calls.close()

        with pytest.raises(CallFailed):
            agent._hub.run(call_with("not-the-secret"), timeout=30)
        assert agent._hub.run(call_with(dict(state.metadata)[TOKEN_KEY]), timeout=30)
        assert agent.Uname()[host].pid == good.pid
