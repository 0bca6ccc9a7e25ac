"""Unary calls carried on long-lived "call streams": one message each way per call (transport layer).

A unary gRPC call through grpcio's Python server costs a new HTTP/2 stream, a completion-queue dispatch, a
thread hand-off and the interceptor pipeline on the host, and a call object on the controller; a message on an
open bidi stream costs a fraction of that (bench/profile/FINDINGS.md). So each host keeps idle streams of the
runtime's ``/sshfleet.Runtime/Calls`` method, and each unary call takes one, sends one frame (call id, timeout,
method path, serialized request) and reads one reply frame (call id, status, details, traceback, response).
A stream carries one call at a time, so concurrent calls to one host each get their own stream, and a call's
deadline is kept by cancelling its stream (RST_STREAM). The frame layout is defined once, in
sshfleet/remote/runtime.py.

The controller's side of these streams speaks HTTP/2 itself (``_H2Connection``), on its own connection to the
servicer, instead of through grpc.aio: on the hub loop, a message on an open stream is then one ``send`` and one
``recv`` of a few dozen bytes, where grpc.aio costs a hand-off to its completion-queue poller thread and back for
each write and each read (~140 µs of controller CPU per message, more than Mitogen's whole call). The wire is
unchanged: the servicer is grpcio's server and sees an ordinary gRPC bidi stream with the session token in its
metadata. Over the paramiko transport the connection is a forward channel driven directly (``open_direct`` in
sshfleet/_ssh/_forward.py), not the Tunnel's socket and splice. Only what a call stream needs is implemented:
one long-lived stream per call in flight, flow control both ways, PING and SETTINGS acknowledged; header blocks
from the server are not decoded (a call's status travels in its reply frame; a stream the server ends is
reported as such).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable, Optional

import grpc
import grpc.aio

from sshfleet._ssh._forward import open_direct
from sshfleet.errors import SshFleetError
from sshfleet.remote.runtime import CALLS_METHOD, REPLY_HEAD, REQUEST_HEAD  # one frame layout, both ends

_CODES = {code.value[0]: code for code in grpc.StatusCode}

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEAD = struct.Struct("!BHBBI")  # frame header: length (24 bits, as 8 + 16), type, flags, stream id
_GRPC_PREFIX = struct.Struct("!BI")  # message prefix: compressed flag, length
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_CANCEL = 0x8  # RST_STREAM error code
_WINDOW = 1 << 24  # what the controller advertises per stream and for the connection; replenished at half
_MAX_FRAME = 1 << 20  # largest frame the controller accepts (fewer frames for a large reply)
_DEFAULT_WINDOW = 65535
_MAX_STREAM_ID = (1 << 31) - 1


class CallFailed(Exception):
    """A call carried on a stream ended with a non-OK status (the agent turns it into a CallError)."""

    def __init__(self, code: grpc.StatusCode, details: str, remote_traceback: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.remote_traceback = remote_traceback


def encode_request(call_id: int, timeout: float, method: bytes, payload: bytes) -> bytes:
    return b"".join((REQUEST_HEAD.pack(call_id, timeout, len(method)), method, payload))


def decode_reply(frame: Any) -> tuple[int, grpc.StatusCode, str, str, memoryview]:
    """(call id, status, details, traceback, response bytes) of a reply frame (bytes or a view). The response is
    a view into the frame, not a copy: protobuf parses it as it is, so a large reply costs one copy less."""
    view = memoryview(frame)
    call_id, code, details_len, tb_len = REPLY_HEAD.unpack_from(view)
    start = REPLY_HEAD.size
    details = str(view[start : start + details_len], "utf-8", "replace")
    start += details_len
    tb = str(view[start : start + tb_len], "utf-8", "replace")
    return call_id, _CODES.get(code, grpc.StatusCode.UNKNOWN), details, tb, view[start + tb_len :]


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def header_block(path: str, authority: str, metadata: tuple[tuple[str, str], ...]) -> bytes:
    """The HPACK block of a call stream's request headers: literals without indexing, no Huffman, so the
    controller keeps no compression state (the block is built once per host and sent as it is)."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *metadata,
    ]
    out = []
    for name, value in fields:
        n, v = name.encode("ascii"), value.encode("ascii")
        out += [b"\x00", _hpack_int(len(n), 7), n, _hpack_int(len(v), 7), v]
    return b"".join(out)


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


class _Reply(asyncio.Future):  # type: ignore[type-arg]
    """The future of one call's serialized response. Cancelling it (the caller's task was cancelled, or the
    fan-out gave up) resets the call's stream, so the call ends on the host too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: _H2Connection, stream: _Stream) -> None:
        super().__init__(loop=loop)
        self.conn = conn
        self.stream = stream

    def cancel(self, msg: Any = None) -> bool:
        if not self.done() and self.stream.waiter is self:
            self.stream.waiter = None
            self.conn._reset(self.stream, CallFailed(grpc.StatusCode.CANCELLED, "cancelled by the caller"))
        return super().cancel(msg)


class _Stream:
    """One call stream: its id, the call waiting on it, its flow-control windows, a reply being assembled."""

    __slots__ = (
        "call_id",
        "ended",
        "id",
        "need",
        "opened",
        "parts",
        "pending",
        "send_window",
        "timer",
        "unacked",
        "waiter",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.waiter: Optional[_Reply] = None  # the call in flight
        self.call_id = 0
        self.timer: Optional[asyncio.TimerHandle] = None  # its deadline
        self.parts: list[bytes] = []  # pieces of a reply message split over DATA frames
        self.need = 0  # bytes the reply in ``parts`` still lacks
        self.send_window = send_window
        self.pending = b""  # the rest of a request the flow-control windows did not take yet
        self.unacked = 0  # bytes received since the last WINDOW_UPDATE of this stream
        self.ended: Optional[CallFailed] = None  # why the stream cannot carry calls any more
        self.opened = False  # its HEADERS went out

    def done(self) -> bool:
        """The stream has ended (as grpc.aio's call objects say it)."""
        return self.ended is not None


class _H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to a servicer, carrying call streams. Used on the hub loop only."""

    def __init__(self, headers: bytes, idle: Callable[[_Stream], bool]) -> None:
        self.headers = headers
        self.idle = idle  # takes back a stream whose call is done, or says no
        self.transport: Optional[asyncio.Transport] = None
        self.streams: dict[int, _Stream] = {}
        self.blocked: set[_Stream] = set()  # streams with a request waiting for flow-control window
        self.next_id = 1
        self.send_window = _DEFAULT_WINDOW
        self.peer_window = _DEFAULT_WINDOW  # the server's initial stream window
        self.peer_frame = 16384
        self.unacked = 0
        self.rest = bytearray()
        self.ended: Optional[CallFailed] = None

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = struct.pack("!HIHIHI", 0x2, 0, 0x4, _WINDOW, 0x5, _MAX_FRAME)  # no push, windows, frame size
        transport.write(
            b"".join((_PREFACE, _frame(_SETTINGS, 0, 0, settings),
                      _frame(_WINDOW_UPDATE, 0, 0, struct.pack("!I", _WINDOW - _DEFAULT_WINDOW))))
        )  # fmt: skip

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._end_all(CallFailed(grpc.StatusCode.UNAVAILABLE, "the connection to the servicer dropped"))

    def data_received(self, data: bytes) -> None:
        if self.rest:
            self.rest += data
            buf: Any = memoryview(self.rest)
        else:
            buf = memoryview(data)
        pos, end = 0, len(buf)
        try:
            while end - pos >= 9:
                high, low, ftype, flags, stream_id = _HEAD.unpack_from(buf, pos)
                length = high << 16 | low
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                if ftype == _DATA:
                    self._on_data(stream_id & _MAX_STREAM_ID, flags, buf[start:pos], length)
                else:
                    self._on_control(ftype, flags, stream_id & _MAX_STREAM_ID, bytes(buf[start:pos]))
        except (struct.error, ValueError, IndexError) as exc:
            buf.release()
            self._fail(f"bad frame from the servicer: {exc}")
            return
        if self.rest:
            buf.release()  # a bytearray cannot shrink while a view of it exists
            del self.rest[:pos]
        elif pos < end:
            self.rest = bytearray(buf[pos:])

    # --- receiving

    def _on_data(self, stream_id: int, flags: int, payload: Any, length: int) -> None:
        self.unacked += length
        if self.unacked >= _WINDOW // 2:
            self._write(_frame(_WINDOW_UPDATE, 0, 0, struct.pack("!I", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.unacked += length
        if stream.unacked >= _WINDOW // 2 and not flags & _END_STREAM:
            self._write(_frame(_WINDOW_UPDATE, 0, stream_id, struct.pack("!I", stream.unacked)))
            stream.unacked = 0
        while payload:
            if stream.need:
                piece = payload[: stream.need]
                stream.parts.append(bytes(piece))
                stream.need -= len(piece)
                payload = payload[len(piece) :]
                if not stream.need:
                    self._deliver(stream, b"".join(stream.parts))
                    stream.parts = []
                continue
            if len(payload) < 5 or stream.parts:  # a message prefix split over frames: rare, join and go on
                stream.parts.append(bytes(payload))
                joined = b"".join(stream.parts)
                if len(joined) < 5:
                    return
                stream.parts = []
                payload = joined
            compressed, size = _GRPC_PREFIX.unpack_from(payload)
            if compressed:
                self._end_stream(stream, CallFailed(grpc.StatusCode.INTERNAL, "compressed reply (none was asked for)"))
                return
            if len(payload) - 5 >= size:
                self._deliver(stream, bytes(payload[5 : 5 + size]))
                payload = payload[5 + size :]
            else:
                stream.parts.append(bytes(payload[5:]))
                stream.need = size - (len(payload) - 5)
                payload = b""
        if flags & _END_STREAM:
            self._end_stream(stream, CallFailed(grpc.StatusCode.UNAVAILABLE, "the servicer closed the call stream"))

    def _deliver(self, stream: _Stream, message: bytes) -> None:
        """A reply message arrived: settle the call in flight and hand the stream back for the next call."""
        waiter, stream.waiter = stream.waiter, None
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if waiter is None or waiter.done():  # a reply nobody waits for: the stream is out of step
            self._reset(stream, CallFailed(grpc.StatusCode.INTERNAL, "call stream out of step: unexpected reply"))
            return
        try:
            reply_id, code, details, tb, data = decode_reply(message)
        except (struct.error, ValueError):
            reply_id, code, details, tb, data = -1, grpc.StatusCode.INTERNAL, "malformed reply frame", "", None
        if reply_id != stream.call_id:
            why = CallFailed(grpc.StatusCode.INTERNAL, f"call stream out of step: reply {reply_id} to {stream.call_id}")
            self._reset(stream, why)
            waiter.set_exception(why)
            return
        if not self.idle(stream):
            self._reset(stream, CallFailed(grpc.StatusCode.CANCELLED, "idle stream not kept"))
        if code is grpc.StatusCode.OK:
            waiter.set_result(data)
        else:
            waiter.set_exception(CallFailed(code, details, tb))

    def _expire(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.waiter is not None:
            self._reset(stream, CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _on_control(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if ftype == _HEADERS:
            stream = self.streams.get(stream_id)
            if stream is not None and flags & _END_STREAM:  # trailers: the servicer ended the stream
                self._end_stream(stream, CallFailed(grpc.StatusCode.UNAVAILABLE, "the servicer closed the call stream"))
        elif ftype == _RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                code = struct.unpack("!I", payload[:4])[0]
                self._end_stream(stream, CallFailed(grpc.StatusCode.UNAVAILABLE, f"call stream reset (HTTP/2 {code})"))
        elif ftype == _SETTINGS:
            if not flags & _ACK:
                for offset in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from("!HI", payload, offset)
                    if key == 0x4:
                        delta = value - self.peer_window
                        self.peer_window = value
                        for stream in self.streams.values():
                            stream.send_window += delta
                    elif key == 0x5:
                        self.peer_frame = value
                self._write(_frame(_SETTINGS, _ACK, 0))
                self._flush_pending()
        elif ftype == _PING:
            if not flags & _ACK:
                self._write(_frame(_PING, _ACK, 0, payload))
        elif ftype == _WINDOW_UPDATE:
            increment = struct.unpack("!I", payload[:4])[0] & _MAX_STREAM_ID
            if stream_id == 0:
                self.send_window += increment
            elif stream_id in self.streams:
                self.streams[stream_id].send_window += increment
            if self.blocked:
                self._flush_pending()
        elif ftype == _GOAWAY:
            last = struct.unpack("!I", payload[:4])[0] & _MAX_STREAM_ID
            self.ended = CallFailed(grpc.StatusCode.UNAVAILABLE, "the servicer is shutting down (GOAWAY)")
            for stream in [s for s in self.streams.values() if s.id > last]:
                self._end_stream(stream, self.ended)
        # PRIORITY, PUSH_PROMISE (refused in our SETTINGS), CONTINUATION and unknown types are ignored

    # --- sending

    def open_stream(self) -> _Stream:
        if self.next_id > _MAX_STREAM_ID - 2:  # ids are never reused: the next call takes a new connection
            self.ended = CallFailed(grpc.StatusCode.UNAVAILABLE, "HTTP/2 stream ids used up")
        stream = _Stream(self.next_id, self.peer_window)
        self.next_id += 2
        self.streams[stream.id] = stream
        return stream

    def send(self, stream: _Stream, message: bytes) -> None:
        """Queue ``message`` on ``stream`` (its HEADERS first if it has not been opened on the wire yet)."""
        data = _GRPC_PREFIX.pack(0, len(message)) + message
        head = b""
        if not stream.opened:
            stream.opened = True
            head = _frame(_HEADERS, _END_HEADERS, stream.id, self.headers)
        size = len(data)
        if size <= stream.send_window and size <= self.send_window and size <= self.peer_frame and not stream.pending:
            stream.send_window -= size
            self.send_window -= size
            self._write(head + _HEAD.pack(size >> 16, size & 0xFFFF, _DATA, 0, stream.id) + data)
            return
        if head:
            self._write(head)
        stream.pending += data
        self.blocked.add(stream)
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Send what the windows now allow of the requests that waited for them."""
        for stream in list(self.blocked):
            while stream.pending and self.send_window > 0 and stream.send_window > 0:
                size = min(len(stream.pending), self.send_window, stream.send_window, self.peer_frame)
                chunk, stream.pending = stream.pending[:size], stream.pending[size:]
                stream.send_window -= size
                self.send_window -= size
                self._write(_frame(_DATA, 0, stream.id, chunk))
            if not stream.pending:
                self.blocked.discard(stream)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- endings

    def _reset(self, stream: _Stream, why: CallFailed) -> None:
        """Cancel ``stream`` (RST_STREAM): the servicer's handler for it ends, and the stream is forgotten."""
        if stream.opened and stream.id in self.streams:
            self._write(_frame(_RST_STREAM, 0, stream.id, struct.pack("!I", _CANCEL)))
        self._end_stream(stream, why)

    def _end_stream(self, stream: _Stream, why: CallFailed) -> None:
        stream.ended = stream.ended or why
        stream.pending = b""
        self.blocked.discard(stream)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self.streams.pop(stream.id, None)
        waiter, stream.waiter = stream.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(why)

    def _end_all(self, why: CallFailed) -> None:
        self.ended = self.ended or why
        for stream in list(self.streams.values()):
            self._end_stream(stream, why)

    def _fail(self, reason: str) -> None:
        self._end_all(CallFailed(grpc.StatusCode.INTERNAL, reason))
        self.close()

    def usable(self) -> bool:
        return self.ended is None and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self._end_all(CallFailed(grpc.StatusCode.CANCELLED, "the channel to the servicer was closed"))
        if self.transport is not None:
            self.transport.close()


class CallStreams:
    """One host's call streams, on their own HTTP/2 connection to ``target`` (the servicer's forwarded
    socket; default: the target of ``channel``). Used on the hub loop only.

    ``call()`` returns the serialized response or raises CallFailed: the call's own status, DEADLINE_EXCEEDED
    when ``timeout`` passes (its stream is reset, which ends the call on the host too), UNAVAILABLE when the
    connection or the stream drops. A dropped connection is made again by the next call. ``close()`` resets
    every stream and closes the connection; calls in flight get CANCELLED.
    """

    def __init__(
        self,
        channel: Optional[grpc.aio.Channel],
        metadata: tuple[tuple[str, str], ...],
        max_idle: int = 4,
        *,
        target: Optional[str] = None,
        authority: str = "localhost",
    ) -> None:
        self._target = target or _target_of(channel)
        self._headers = header_block(CALLS_METHOD, authority, metadata)
        self._idle: list[_Stream] = []
        self._max_idle = max_idle
        self._next_id = 0
        self._conn: Optional[_H2Connection] = None
        self._connecting: Optional[asyncio.Future[_H2Connection]] = None
        self._closed = False
        self._priming: Optional[asyncio.Task[None]] = None

    def prime(self) -> None:
        """Connect and open an idle stream ahead of the first call (the host starts its handler while other
        hosts bootstrap). Failures are left for the first call to report."""
        if self._closed or self._idle:
            return

        async def open_one() -> None:
            try:
                conn = await self._connection()
            except CallFailed:
                return
            if not self._idle and conn.usable():
                stream = conn.open_stream()
                stream.opened = True
                conn._write(_frame(_HEADERS, _END_HEADERS, stream.id, self._headers))
                self._idle.append(stream)

        self._priming = asyncio.get_running_loop().create_task(open_one())

    async def _connection(self) -> _H2Connection:
        conn = self._conn
        if conn is not None and conn.usable():
            return conn
        if conn is not None:  # going away: its streams in flight end with it
            conn.close()
            self._conn = None
        if self._closed:
            raise CallFailed(grpc.StatusCode.CANCELLED, "the channel to the servicer was closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _H2Connection:
        loop = asyncio.get_running_loop()
        headers, idle = self._headers, self._idle_again

        def protocol() -> _H2Connection:
            return _H2Connection(headers, idle)

        try:
            direct = await open_direct(self._target, protocol)  # a paramiko tunnel's channel, no socket between
            if isinstance(direct, _H2Connection):
                conn = direct
            elif self._target.startswith("unix:"):
                _, conn = await loop.create_unix_connection(protocol, self._target[5:])
            else:
                host, _, port = self._target.rpartition(":")
                _, conn = await loop.create_connection(protocol, host, int(port))
        except (OSError, SshFleetError) as exc:
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"cannot connect to the servicer: {exc}") from exc
        if self._closed:
            conn.close()
            raise CallFailed(grpc.StatusCode.CANCELLED, "the channel to the servicer was closed")
        self._conn = conn
        self._idle.clear()  # streams of an earlier connection are gone with it
        return conn

    async def call(self, method: bytes, payload: bytes, timeout: float) -> memoryview:
        """Send one unary call, return the serialized response; raise CallFailed."""
        conn = self._conn
        if conn is None or not conn.usable():
            try:
                conn = await asyncio.wait_for(self._connection(), timeout)
            except asyncio.TimeoutError:
                raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (connecting)") from None
        result: memoryview = await self._send(conn, method, payload, timeout)
        return result

    def start(self, method: bytes, payload: bytes, timeout: float) -> asyncio.Future[memoryview]:
        """``call()`` without a coroutine: the call goes out now and the future settles as ``call()`` would.
        For fan-outs: no task per host. Cancelling the future ends the call on the host."""
        conn = self._conn
        if conn is None or not conn.usable():
            return asyncio.ensure_future(self.call(method, payload, timeout))
        return self._send(conn, method, payload, timeout)

    def _send(self, conn: _H2Connection, method: bytes, payload: bytes, timeout: float) -> _Reply:
        loop = asyncio.get_running_loop()
        stream = self._take(conn)
        self._next_id = stream.call_id = (self._next_id + 1) & 0xFFFFFFFF
        waiter = stream.waiter = _Reply(loop, conn, stream)
        stream.timer = loop.call_later(timeout, conn._expire, stream)
        conn.send(stream, encode_request(stream.call_id, timeout, method, payload))
        return waiter

    def _idle_again(self, stream: _Stream) -> bool:
        if len(self._idle) < self._max_idle and stream.ended is None and not self._closed:
            self._idle.append(stream)
            return True
        return False

    def _take(self, conn: _H2Connection) -> _Stream:
        """An idle stream that is still open, else a new one. An idle stream ends without a call on it when the
        servicer ends it: nothing was sent on it, so it is simply dropped."""
        while self._idle:
            stream = self._idle.pop()
            if stream.ended is None and conn.streams.get(stream.id) is stream:
                return stream
        return conn.open_stream()

    def close(self) -> None:
        self._closed = True
        self._idle.clear()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _target_of(channel: Optional[grpc.aio.Channel]) -> str:
    """The address a grpc.aio channel dials (grpcio keeps it on its Cython channel object)."""
    target = getattr(getattr(channel, "_channel", None), "target", None)
    if not isinstance(target, bytes):
        raise TypeError("CallStreams needs target= (the servicer's gRPC address)")
    return target.decode()
