"""``PipeChannel``: the seam's ``Channel`` protocol on the pipes of a local ssh client process.

Every exec and ``open_forward()`` of the OpenSSH transport is such a client; ``_reap`` is shared with the master.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Optional


def _reap(proc: subprocess.Popen[bytes], timeout: float, group: bool = False) -> None:
    """Wait up to ``timeout`` for ``proc``, then SIGTERM, then SIGKILL (its process group when ``group``)."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
        try:
            proc.wait(timeout if sig is None else 1.0)
            return
        except subprocess.TimeoutExpired:
            continue


class PipeChannel:
    """A seam ``Channel`` over an ssh client's pipes: stdin is send, stdout is recv, stderr is recv_stderr.

    ``settimeout`` works as on a socket: None blocks, 0.0 raises socket.timeout at once when nothing is there,
    t > 0 waits up to t. ``fileno()`` is the stdout pipe and ``stderr_fileno()`` the stderr pipe, for an event
    loop; bytes that ``recv_ready()``/``recv_stderr_ready()`` had to read to answer are returned by the next
    ``recv``/``recv_stderr`` and do not show on the fd. The exit status is the ssh client's: the remote status,
    255 when the session ended without one (killed by a signal, master gone), -1 when the client was killed.
    ``close()`` closes stdin, stops the client if it still runs and reaps it; it never raises.
    """

    def __init__(self, host: str, proc: subprocess.Popen[bytes], close_timeout: float,
                 on_close: Optional[Callable[[PipeChannel], None]] = None) -> None:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.host = host
        self.eof_received = False
        self.eof_sent = False
        self._proc = proc
        self._files = (proc.stdin, proc.stdout, proc.stderr)
        self._in, self._out, self._err = (f.fileno() for f in self._files)
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._pending = b""
        self._err_pending = b""
        self._err_eof = False
        self._timeout: Optional[float] = None
        self._closed = False
        self._close_timeout = close_timeout
        self._on_close = on_close
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PipeChannel {self.host} pid={self._proc.pid}{' closed' if self.closed else ''}>"

    @property
    def closed(self) -> bool:
        """True after close(), or once the client has exited and all of stdout has been read."""
        return self._closed or (self.eof_received and self._proc.poll() is not None)

    @closed.setter
    def closed(self, value: bool) -> None:
        if value:
            self.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def settimeout(self, timeout: Optional[float], /) -> None:
        self._timeout = timeout

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def fileno(self) -> int:
        return self._out

    def stderr_fileno(self) -> int:
        return self._err

    def _wait(self, fd: int, event: int, timeout: Optional[float]) -> bool:
        poller = select.poll()
        poller.register(fd, event)
        millis = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return bool(poller.poll(millis))

    def _read(self, fd: int, nbytes: int) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            try:
                return os.read(fd, nbytes)
            except BlockingIOError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise socket.timeout() from None
                self._wait(fd, select.POLLIN, remaining)

    def recv(self, nbytes: int, /) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:nbytes], self._pending[nbytes:]
            return data
        if self._closed or self.eof_received:
            return b""
        data = self._read(self._out, nbytes)
        if not data:
            self.eof_received = True
        return data

    def recv_stderr(self, nbytes: int, /) -> bytes:
        if self._err_pending:
            data, self._err_pending = self._err_pending[:nbytes], self._err_pending[nbytes:]
            return data
        if self._closed or self._err_eof:
            return b""
        data = self._read(self._err, nbytes)
        if not data:
            self._err_eof = True
        return data

    def _peek(self, fd: int) -> Optional[bytes]:
        """Non-blocking read: bytes, b"" at EOF, None when nothing is there."""
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None

    def recv_ready(self) -> bool:
        if not self._pending and not (self._closed or self.eof_received):
            data = self._peek(self._out)
            if data == b"":
                self.eof_received = True
            elif data:
                self._pending = data
        return bool(self._pending)

    def recv_stderr_ready(self) -> bool:
        if not self._err_pending and not (self._closed or self._err_eof):
            data = self._peek(self._err)
            if data == b"":
                self._err_eof = True
            elif data:
                self._err_pending = data
        return bool(self._err_pending)

    def send(self, s: bytes | memoryview, /) -> int:
        if self._closed or self.eof_sent:
            raise OSError("Socket is closed")
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            try:
                return os.write(self._in, s)
            except BlockingIOError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise socket.timeout() from None
                self._wait(self._in, select.POLLOUT, remaining)

    def sendall(self, s: bytes, /) -> None:
        view = memoryview(s)
        while view:
            view = view[self.send(view) :]

    def shutdown_write(self) -> None:
        """EOF to the remote command's stdin."""
        with self._lock:
            if not self.eof_sent and not self._closed:
                self.eof_sent = True
                self._files[0].close()

    def exit_status_ready(self) -> bool:
        return self._proc.poll() is not None

    def recv_exit_status(self) -> int:
        """Blocks until the command ends, like paramiko's."""
        status = self._proc.wait()
        return status if status >= 0 else -1

    def resize_pty(self, width: int = 80, height: int = 24, width_pixels: int = 0, height_pixels: int = 0) -> None:
        raise NotImplementedError("the OpenSSH transport sets the pty size only when the command starts")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.eof_sent = True
        with contextlib.suppress(OSError):
            self._files[0].close()
        try:
            # A finished command needs no signal; a running one gets a moment to see EOF on stdin first.
            _reap(self._proc, 0.0 if self._proc.poll() is not None else min(0.2, self._close_timeout))
        finally:
            for f in self._files[1:]:
                with contextlib.suppress(OSError):
                    f.close()
            if self._on_close is not None:
                self._on_close(self)
