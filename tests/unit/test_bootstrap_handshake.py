"""Fuzzing the controller's side of the bootstrap handshake: whatever a host prints, the start ends in a
ServicerProcess or a per-host BootstrapError / ChannelError, never another exception (which the agent would
report as an "unexpected failure"), and never past its deadline.

The channel is a fake (pure logic: lines in, one outcome out); the real exchange is tested on the testbed.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from sshfleet import _bootstrap, _payload
from sshfleet.errors import BootstrapError, ChannelError


class FakeChannel:
    """Plays back ``chunks`` as the host's stdout, then EOF; swallows what the controller sends."""

    def __init__(self, chunks: list[bytes], status: int = 1) -> None:
        self.chunks = list(chunks)
        self.status = status
        self.closed = False
        self.sent = 0

    def settimeout(self, timeout: Optional[float]) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent += len(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.sent += len(data)

    def recv(self, nbytes: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, nbytes: int) -> bytes:
        return b""

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return self.status

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    host = "fuzzed"

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    def exec(self, command: str, timeout: float) -> FakeChannel:
        return self.channel


AGENT = _payload.agent_bundle({})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
kinds = st.sampled_from(["READY", "NEED", "ERROR", "HELLO", "ready", ""])
protocol_lines = st.builds(
    lambda kind, payload: b"SSHFLEET " + kind.encode() + b" " + json.dumps(payload).encode(),
    kinds,
    json_values | st.fixed_dictionaries({}, optional={"port": json_values, "pid": json_values}),
)
lines = st.one_of(protocol_lines, st.binary(max_size=60), st.just(b""), st.just(b"SSHFLEET READY {"))


def run_fake(chunks: list[bytes]) -> object:
    channel = FakeChannel(chunks)
    started = time.monotonic()
    try:
        return _bootstrap.start_servicer(
            FakeConnection(channel),  # type: ignore[arg-type]
            python="/usr/bin/python3",
            agent=AGENT,
            deps={},
            config={"secret": "s"},
            timeout=5.0,
        )
    except (BootstrapError, ChannelError) as exc:
        assert channel.closed  # every failure closes the channel
        return exc
    finally:
        assert time.monotonic() - started < 10


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=6), st.integers(1, 7))
def test_any_host_output_ends_in_a_per_host_outcome(script: list[bytes], split: int) -> None:
    data = b"".join(line + b"\n" for line in script)
    chunks = [data[i : i + split * 7] for i in range(0, len(data), split * 7)]
    run_fake(chunks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_line_never_raises(line: bytes) -> None:
    parsed = _bootstrap.parse_line(line)
    assert parsed is None or (isinstance(parsed[0], str) and isinstance(parsed[1], dict))


@given(st.sampled_from(["READY", "NEED", "ERROR"]), st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_parse_line_reads_what_the_host_writes(kind: str, payload: dict) -> None:
    line = f"SSHFLEET {kind} {json.dumps(payload)}".encode()  # as remote/bootstrap.py writes it
    assert _bootstrap.parse_line(line) == (kind, payload)


def test_a_well_formed_ready_starts() -> None:
    ready = {"port": 4242, "pid": 7, "session_dir": "/s", "log": "/s/servicer.log", "facts": {}}
    process = run_fake([b"noise from a login script\n", b"SSHFLEET READY " + json.dumps(ready).encode() + b"\n"])
    assert isinstance(process, _bootstrap.ServicerProcess) and process.port == 4242


def test_a_stalled_host_fails_at_the_deadline() -> None:
    class Silent(FakeChannel):
        def recv(self, nbytes: int) -> bytes:
            time.sleep(0.05)
            raise socket.timeout()

    channel = Silent([])
    started = time.monotonic()
    try:
        _bootstrap.start_servicer(
            FakeConnection(channel),  # type: ignore[arg-type]
            python="/usr/bin/python3",
            agent=AGENT,
            deps={},
            config={},
            timeout=0.5,
        )
    except BootstrapError as exc:
        assert "did not start within 0.5s" in exc.message
    assert time.monotonic() - started < 3
