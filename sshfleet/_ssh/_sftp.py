"""SFTP on either transport: paramiko's ``SFTPClient`` over a paramiko channel or an OpenSSH mux client's pipes.

paramiko's SFTP client needs only ``send``/``recv``/``close`` (and ``settimeout``) of what it talks through, so
the OpenSSH transport hands it a ``PipeChannel`` of ``ssh -S <ctl> -s <host> sftp``: one implementation of the
protocol for both transports, and nothing above the seam imports paramiko.

Errors: SFTP version 3 (what OpenSSH's sftp-server speaks) has three useful status codes; paramiko turns them
into ``IOError`` with ENOENT, EACCES, or no errno (``SSH_FX_FAILURE``: every other reason, a full disk among
them). ``SFTP_ERRORS`` translates those and the transport's own failures into ``ChannelError`` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import paramiko

from sshfleet._ssh._errors import describe
from sshfleet._ssh._seam import RemoteStat
from sshfleet.errors import ChannelError

# Reads in flight per file: enough to fill a fast link (512 x 32 KiB = 16 MiB; 64 ran at half the speed of
# scp on the testbed), bounded so a huge file does not queue thousands of requests before a close.
PREFETCH_REQUESTS = 512


def _stat(attrs: paramiko.SFTPAttributes) -> RemoteStat:
    mode = attrs.st_mode or 0
    if stat.S_ISLNK(mode):
        kind = "link"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISREG(mode):
        kind = "file"
    else:
        kind = "other"
    return RemoteStat(kind, int(attrs.st_size or 0), stat.S_IMODE(mode), int(attrs.st_mtime or 0))


def _reason(exc: BaseException, stall: float, writing: bool) -> str:
    """How a failed SFTP request reads: the first match of what it raised wins."""
    if isinstance(exc, socket.timeout):
        return f"no reply from the host for {stall:g}s"
    if isinstance(exc, ChannelError):
        return exc.message
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return "no such file or directory"
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno is None and str(exc) == "Failure":
        # sftp-server maps every errno but ENOENT/EACCES to this one code.
        hint = " (no space left on the device or a quota is the usual cause)" if writing else ""
        return f"the server refused: Failure{hint}"
    if isinstance(exc, (EOFError, paramiko.SSHException)):
        return f"connection lost ({describe(exc)})"
    if isinstance(exc, OSError):
        return describe(exc)
    return f"unexpected error: {exc!r}"


class SftpClient:
    """The seam's ``SftpSession`` (contract in ``_seam.py``) on a paramiko ``SFTPClient``."""

    def __init__(self, host: str, client: paramiko.SFTPClient, stall: float, close_timeout: float) -> None:
        self.host = host
        self._client = client
        self._stall = stall
        self._close_timeout = close_timeout
        self._closed = False
        self._broken = ""
        self._lock = threading.Lock()

    @classmethod
    def start(cls, host: str, channel: Any, *, stall: float, timeout: float, close_timeout: float,
              said: Callable[[], str] = lambda: "") -> SftpClient:  # fmt: skip
        """The SFTP handshake on ``channel`` (already running the subsystem) within ``timeout``; ``said`` is
        what the transport can tell of a failure."""
        channel.settimeout(timeout)
        try:
            sock: Any = channel if isinstance(channel, paramiko.Channel) else _Pipe(channel)
            client = paramiko.SFTPClient(sock)
        except BaseException as exc:
            words = said() or _reason(exc, timeout, writing=False)
            _close_bounded(channel.close, close_timeout)
            raise ChannelError(host, f"cannot start SFTP: {words}") from exc
        channel.settimeout(stall)
        return cls(host, client, stall, close_timeout)

    def __repr__(self) -> str:
        return f"<SftpClient {self.host}{' closed' if self._closed else ''}>"

    def __enter__(self) -> SftpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _errors(self, what: str, path: str, writing: bool = False) -> Iterator[None]:
        if self._broken:
            # A request timed out or the channel died: answers may still be in flight, so the session is done.
            raise ChannelError(self.host, f"{what} {path}: the SFTP session broke earlier ({self._broken})")
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if self._closed and not isinstance(exc, ChannelError):
                raise ChannelError(self.host, f"{what} {path}: the transfer was stopped") from exc
            reason = _reason(exc, self._stall, writing)
            if isinstance(exc, (socket.timeout, EOFError, paramiko.SSHException)):
                self._broken = reason
            raise ChannelError(self.host, f"{what} {path}: {reason}") from exc

    def stat(self, path: str, *, follow: bool = True) -> Optional[RemoteStat]:
        try:
            with self._errors("stat", path):
                attrs = self._client.stat(path) if follow else self._client.lstat(path)
        except ChannelError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.ENOENT:
                return None
            raise
        return _stat(attrs)

    def listdir(self, path: str) -> list[tuple[str, RemoteStat]]:
        with self._errors("listing", path):
            return [(a.filename, _stat(a)) for a in self._client.listdir_attr(path)]

    def realpath(self, path: str) -> str:
        with self._errors("resolving", path):
            return str(self._client.normalize(path))

    def open_read(self, path: str, size: int) -> _Reader:
        with self._errors("opening", path):
            handle = self._client.open(path, "rb")
            handle.prefetch(size, PREFETCH_REQUESTS)
        return _Reader(self, handle, path)

    def create(self, path: str, mode: int) -> _Writer:
        with self._errors("creating", path, writing=True):
            handle = self._client.open(path, "wxb")  # O_EXCL: a name nobody else holds
            try:
                handle.chmod(mode)
                handle.set_pipelined(True)
            except BaseException:
                _close_bounded(handle.close, self._close_timeout)
                raise
        return _Writer(self, handle, path)

    def rename(self, src: str, dst: str) -> None:
        with self._errors("renaming to", dst):
            self._client.posix_rename(src, dst)

    def remove(self, path: str) -> None:
        with self._errors("removing", path):
            self._client.remove(path)

    def mkdir(self, path: str, mode: int) -> None:
        with self._errors("creating directory", path, writing=True):
            self._client.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        with self._errors("removing directory", path):
            self._client.rmdir(path)

    def chmod(self, path: str, mode: int) -> None:
        with self._errors("setting the mode of", path):
            self._client.chmod(path, mode)

    def utime(self, path: str, mtime: int) -> None:
        with self._errors("setting the time of", path):
            self._client.utime(path, (mtime, mtime))

    def symlink(self, target: str, path: str) -> None:
        with self._errors("creating symlink", path, writing=True):
            self._client.symlink(target, path)

    def readlink(self, path: str) -> str:
        with self._errors("reading symlink", path):
            return str(self._client.readlink(path) or "")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _close_bounded(self._client.close, self._close_timeout)


class _Reader:
    def __init__(self, session: SftpClient, handle: paramiko.SFTPFile, path: str) -> None:
        self._session = session
        self._handle = handle
        self._path = path

    def read(self, nbytes: int, /) -> bytes:
        with self._session._errors("reading", self._path):
            return bytes(self._handle.read(nbytes))

    def close(self) -> None:
        _close_bounded(self._handle.close, self._session._close_timeout)


class _Writer:
    def __init__(self, session: SftpClient, handle: paramiko.SFTPFile, path: str) -> None:
        self._session = session
        self._handle = handle
        self._path = path
        self._written = 0

    def write(self, data: bytes, /) -> None:
        with self._session._errors("writing", self._path, writing=True):
            self._handle.write(data)
        self._written += len(data)

    def finish(self, mtime: Optional[int] = None) -> None:
        handle = self._handle
        with self._session._errors("writing", self._path, writing=True):
            handle.flush()
            # paramiko drops the answers of pipelined writes that another request's wait reads first, and its
            # close() swallows errors: read every write's answer here, in order, so a failed write raises.
            pending = getattr(handle, "_reqs", ())
            read_response = getattr(self._session._client, "_read_response")  # noqa: B009
            while pending:
                read_response(pending.popleft())
            stored = handle.stat().st_size
            if stored != self._written:
                raise ChannelError(
                    self._session.host,
                    f"writing {self._path}: the host stored {stored} of {self._written} bytes "
                    "(no space left on the device or a quota is the usual cause)",
                )
            if mtime is not None:
                handle.utime((mtime, mtime))
            handle.close()

    def close(self) -> None:
        _close_bounded(self._handle.close, self._session._close_timeout)


class _Pipe:
    """What paramiko's SFTP client asks of its channel beyond send/recv (a name for its log lines), for a
    ``PipeChannel``."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def get_name(self) -> str:
        return f"ssh pid {self._channel.pid}"

    def send(self, data: bytes) -> int:
        return int(self._channel.send(data))

    def recv(self, nbytes: int) -> bytes:
        return bytes(self._channel.recv(nbytes))

    def recv_ready(self) -> bool:
        return bool(self._channel.recv_ready())

    def settimeout(self, timeout: Optional[float]) -> None:
        self._channel.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self._channel.gettimeout()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._channel.close()


def _close_bounded(close: Callable[[], object], timeout: float) -> None:
    """Run ``close`` for at most ``timeout`` seconds: over a dead link paramiko would wait for TCP to give up."""
    done = threading.Event()

    def work() -> None:
        with contextlib.suppress(Exception):
            close()
        done.set()

    threading.Thread(target=work, name="sshfleet-sftp-close", daemon=True).start()
    done.wait(timeout)
