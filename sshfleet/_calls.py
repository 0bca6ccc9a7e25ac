"""Unary calls carried on long-lived "call streams": one message each way per call (transport layer).

A unary gRPC call through grpcio's Python server costs a new HTTP/2 stream, a completion-queue dispatch, a
thread hand-off and the interceptor pipeline on the host, and a call object on the controller; a message on an
open bidi stream costs a fraction of that (bench/profile/FINDINGS.md). So each host keeps idle streams of the
runtime's ``/sshfleet.Runtime/Calls`` method, and each unary call takes one, sends one frame (call id, timeout,
method path, serialized request) and reads one reply frame (call id, status, details, traceback, response).
A stream carries one call at a time, so concurrent calls to one host each get their own stream, and a call's
deadline is kept by cancelling its stream. The frame layout is defined once, in sshfleet/remote/runtime.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from sshfleet.remote.runtime import CALLS_METHOD, REPLY_HEAD, REQUEST_HEAD  # one frame layout, both ends

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class CallFailed(Exception):
    """A call carried on a stream ended with a non-OK status (the agent turns it into a CallError)."""

    def __init__(self, code: grpc.StatusCode, details: str, remote_traceback: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.remote_traceback = remote_traceback


def encode_request(call_id: int, timeout: float, method: bytes, payload: bytes) -> bytes:
    return b"".join((REQUEST_HEAD.pack(call_id, timeout, len(method)), method, payload))


def decode_reply(frame: bytes) -> tuple[int, grpc.StatusCode, str, str, memoryview]:
    """(call id, status, details, traceback, response bytes) of a reply frame. The response is a view into the
    frame, not a copy: protobuf parses it as it is, so a large reply costs one copy less on the controller."""
    call_id, code, details_len, tb_len = REPLY_HEAD.unpack_from(frame)
    start = REPLY_HEAD.size
    details = frame[start : start + details_len].decode("utf-8", "replace")
    start += details_len
    tb = frame[start : start + tb_len].decode("utf-8", "replace")
    return call_id, _CODES.get(code, grpc.StatusCode.UNKNOWN), details, tb, memoryview(frame)[start + tb_len :]


class CallStreams:
    """One host's call streams. Used on the hub loop only."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], max_idle: int = 4) -> None:
        self._open = channel.stream_stream(CALLS_METHOD)
        self._metadata = metadata
        self._idle: list[Any] = []
        self._max_idle = max_idle
        self._next_id = 0

    def prime(self) -> None:
        """Open an idle stream ahead of the first call (the host starts its handler while others bootstrap)."""
        if not self._idle:
            self._idle.append(self._open(metadata=self._metadata))

    async def call(self, method: bytes, payload: bytes, timeout: float) -> memoryview:
        """Send one unary call, return the serialized response; raise CallFailed or grpc.aio.AioRpcError."""
        stream = self._take()
        self._next_id = call_id = (self._next_id + 1) & 0xFFFFFFFF
        expired = False
        task = asyncio.current_task()

        def expire() -> None:
            # Cancelling the stream alone does not wake every wait inside grpc.aio (a write still waiting for the
            # stream's metadata to go out stayed asleep for good): cancel our own wait too.
            nonlocal expired
            expired = True
            stream.cancel()
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            await stream.write(encode_request(call_id, timeout, method, payload))
            frame = await stream.read()
        except asyncio.CancelledError:
            if expired:
                uncancel = getattr(task, "uncancel", None)  # Python >= 3.11: the cancel was ours, not the caller's
                if uncancel is not None:
                    uncancel()
                raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            if stream.cancelled():  # its channel closed under it (close() while the call was in flight)
                raise CallFailed(grpc.StatusCode.CANCELLED, "the channel to the servicer was closed") from None
            stream.cancel()  # our caller was cancelled: the host's call ends with us
            raise
        except asyncio.InvalidStateError:  # the stream ended between _take() and the write: nothing was sent
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, "the connection to the servicer dropped") from None
        except BaseException:
            stream.cancel()
            raise
        finally:
            timer.cancel()
        if frame is grpc.aio.EOF:  # the servicer ended the stream: only when it is shutting down
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, "the servicer closed the call stream")
        reply_id, code, details, tb, data = decode_reply(frame)
        if reply_id != call_id:
            stream.cancel()
            raise CallFailed(grpc.StatusCode.INTERNAL, f"call stream out of step: reply {reply_id} to call {call_id}")
        if len(self._idle) < self._max_idle:
            self._idle.append(stream)
        else:
            stream.cancel()
        if code != grpc.StatusCode.OK:
            raise CallFailed(code, details, tb)
        return data

    def _take(self) -> Any:
        """An idle stream that is still open, else a new one. An idle stream ends without a call on it when its
        HTTP/2 connection drops (the servicer may live on): nothing was sent on it, so it is simply dropped."""
        while self._idle:
            stream = self._idle.pop()
            if not stream.done():
                return stream
        return self._open(metadata=self._metadata)

    def close(self) -> None:
        for stream in self._idle:
            stream.cancel()
        self._idle.clear()
