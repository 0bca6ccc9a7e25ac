"""The hub's splice: bytes from a channel reach the local socket in order and complete, EOF included."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Optional

from sshfleet._ssh._forward import _Splice


class FakeChannel:
    """A channel fed from the test: recv() raises socket.timeout when empty, b"" after EOF; a pipe signals data."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()
        self.lock = threading.Lock()
        self.chunks: list[bytes] = []
        self.eof = False
        self.closed = False
        self.eof_received = False
        self.eof_sent = False
        self.sent = bytearray()

    def feed(self, data: Optional[bytes]) -> None:
        with self.lock:
            if data is None:
                self.eof = self.eof_received = True
            else:
                self.chunks.append(data)
        os.write(self.wfd, b"*")

    def recv(self, nbytes: int) -> bytes:
        with self.lock:
            if not self.chunks:
                if self.eof:
                    return b""
                while True:  # empty: clear the signal, as paramiko does
                    try:
                        os.read(self.rfd, 4096)
                    except BlockingIOError:
                        break
                raise socket.timeout()
            out = self.chunks.pop(0)
            if len(out) > nbytes:
                self.chunks.insert(0, out[nbytes:])
                out = out[:nbytes]
            return out

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def shutdown_write(self) -> None:
        self.eof_sent = True

    def settimeout(self, timeout: float) -> None:
        os.set_blocking(self.rfd, False)

    def fileno(self) -> int:
        return self.rfd

    def close(self) -> None:
        self.closed = True


def test_splice_delivers_every_byte_in_order_through_partial_sends() -> None:
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    chan = FakeChannel()
    theirs.settimeout(10)
    # Many chunks, more than a socket buffer holds, so sends are partial and the splice must wait for the reader.
    chunks = [bytes([i % 251]) * (20000 + 37 * i) for i in range(600)]  # ~18 MB
    expected = b"".join(chunks)
    received = bytearray()
    started = threading.Event()

    def reader() -> None:
        started.wait(10)  # let the socket buffer fill first
        while True:
            data = theirs.recv(1 << 16)
            if not data:
                return
            received.extend(data)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        splice = _Splice(loop, ours, chan)  # type: ignore[arg-type]
        for chunk in chunks:
            loop.call_soon(chan.feed, chunk)
        loop.call_soon(chan.feed, None)

        async def until_done() -> None:
            await asyncio.sleep(0.2)
            started.set()
            for _ in range(10000):
                if not thread.is_alive():
                    return
                await asyncio.sleep(0.001)

        loop.run_until_complete(until_done())
        thread.join(10)
        assert not thread.is_alive(), "the socket never saw EOF"
        assert bytes(received) == expected
        splice.close()
    finally:
        loop.close()
        theirs.close()
        os.close(chan.rfd)
        os.close(chan.wfd)


class WindowedChannel(FakeChannel):
    """A channel whose send() takes at most what is left of its window (0 when full), as paramiko's does."""

    def __init__(self) -> None:
        super().__init__()
        self.window = 0

    def send(self, data: bytes) -> int:
        taken = min(len(data), self.window)
        self.window -= taken
        self.sent += data[:taken]
        return taken


def test_splice_towards_the_channel_pauses_on_a_full_window_and_resumes() -> None:
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    chan = WindowedChannel()
    payload = os.urandom(3 << 20)
    writer = threading.Thread(target=lambda: (theirs.sendall(payload), theirs.shutdown(socket.SHUT_WR)), daemon=True)
    try:
        splice = _Splice(loop, ours, chan)  # type: ignore[arg-type]
        writer.start()

        async def open_the_window_slowly() -> None:
            for _ in range(20000):  # at most ~20 s
                if chan.eof_sent:
                    return
                chan.window += 64 << 10  # what the host's WINDOW_ADJUSTs would give
                await asyncio.sleep(0.001)

        loop.run_until_complete(open_the_window_slowly())
        writer.join(10)
        assert chan.eof_sent, "the socket's EOF never reached the channel"
        assert bytes(chan.sent) == payload
        splice.close()
    finally:
        loop.close()
        theirs.close()
        os.close(chan.rfd)
        os.close(chan.wfd)
