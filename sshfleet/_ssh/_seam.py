"""The SSH seam: the whole contract between sshfleet and an SSH implementation, in three Protocols.

Everything above ``sshfleet._ssh`` talks to hosts only through ``Connection``, ``Channel`` and ``Forward``; which
transport stands behind them (paramiko, or the OpenSSH client with a ControlMaster) is known only inside this
package. Both transports raise only ``sshfleet.errors`` (translated in ``_errors.py``), never their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol


class Channel(Protocol):
    """One exec session or forwarded connection on a host, used like a socket.

    ``recv`` returns b"" at EOF; ``settimeout`` works as on a socket (None blocks, 0.0 raises socket.timeout at
    once when nothing is there). ``fileno()`` becomes readable when ``recv`` has data, for an event loop.
    ``exit_status_ready()``/``recv_exit_status()`` give the remote command's status (exec channels).
    ``close()`` is idempotent and never raises.
    """

    closed: bool

    def send(self, s: bytes, /) -> int: ...
    def sendall(self, s: bytes, /) -> None: ...
    def recv(self, nbytes: int, /) -> bytes: ...
    def recv_stderr(self, nbytes: int, /) -> bytes: ...
    def recv_ready(self) -> bool: ...
    def recv_stderr_ready(self) -> bool: ...
    def shutdown_write(self) -> None: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...
    def settimeout(self, timeout: Optional[float], /) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def resize_pty(self, width: int = 80, height: int = 24, width_pixels: int = 0, height_pixels: int = 0) -> None: ...


class Forward(Protocol):
    """A local endpoint forwarded to a port on the host (``ssh -L``), for a gRPC channel to dial.

    ``target`` is the gRPC address (``unix:/path``); the socket lives in a 0700 directory on the controller, so
    no other local user can use it. Every connection to it is a new channel to the host's port. ``close()``
    stops forwarding, closes the connections made through it and removes the socket; idempotent, never raises.
    """

    @property
    def target(self) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RemoteStat:
    """What SFTP says of one remote path: ``kind`` is "file", "dir", "link" or "other"; ``mode`` holds the
    permission bits only; ``mtime`` is in whole seconds (SFTP v3 has no finer times)."""

    kind: str
    size: int
    mode: int
    mtime: int


class RemoteReader(Protocol):
    """A remote file open for reading, fetched ahead (pipelined). ``read`` returns b"" at the end."""

    def read(self, nbytes: int, /) -> bytes: ...
    def close(self) -> None: ...


class RemoteWriter(Protocol):
    """A remote file being written, pipelined: a write's failure may surface at a later write or at ``finish``.

    ``finish(mtime)`` sets the modification time and closes, raising if any write failed; ``close()`` drops it
    (never raises)."""

    def write(self, data: bytes, /) -> None: ...
    def finish(self, mtime: Optional[int] = None) -> None: ...
    def close(self) -> None: ...


class SftpSession(Protocol):
    """One SFTP session on a host's connection (the ``sftp`` subsystem), from ``Connection.open_sftp``; a
    context manager. Both transports serve it with the same class (``_sftp.py``).

    Paths are the host's; relative ones start at the login user's home. Every method raises ChannelError whose
    message names the path and the reason (no such file or directory, permission denied, no reply from the host
    for ``stall`` seconds, connection lost, or what the server said). ``stat`` returns None for a path that does
    not exist. ``rename`` replaces ``dst`` atomically (POSIX rename). ``create`` makes a new file exclusively, with
    ``mode``, before any byte is written. ``close()`` is idempotent, never raises, returns within about
    ``Timeouts.close`` seconds, and may be called from another thread to abort what is in flight.
    """

    host: str

    def stat(self, path: str, *, follow: bool = True) -> Optional[RemoteStat]: ...
    def listdir(self, path: str) -> list[tuple[str, RemoteStat]]: ...
    def realpath(self, path: str) -> str: ...
    def open_read(self, path: str, size: int) -> RemoteReader: ...
    def create(self, path: str, mode: int) -> RemoteWriter: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def mkdir(self, path: str, mode: int) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def utime(self, path: str, mtime: int) -> None: ...
    def symlink(self, target: str, path: str) -> None: ...
    def readlink(self, path: str) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> SftpSession: ...
    def __exit__(self, *exc_info: object) -> None: ...


class RemoteForward(Protocol):
    """A port on the host's 127.0.0.1 forwarded back to a local Unix socket (``ssh -R 127.0.0.1:0:SOCKET``): what
    lets a servicer call the controller. ``port`` is the port the host's sshd allocated; every connection to it
    becomes a new connection to the local socket. Any user on the host can connect to that port, so whatever
    listens on the socket must authenticate its callers. ``close()`` stops forwarding; idempotent, never raises.
    """

    @property
    def port(self) -> int: ...

    def close(self) -> None: ...


class Connection(Protocol):
    """One authenticated SSH connection to one host; a context manager.

    ``host`` is the inventory name; ``address``/``port``/``user`` are the values actually used;
    ``connect_seconds`` is how long the connect took (jump hosts included).

    * ``exec(command, timeout=...)`` starts ``command`` in a new session (with a pty if asked) and returns its
      Channel once the server accepted it; ``timeout`` bounds the request, not the command.
    * ``open_forward(host, port, timeout=...)`` is one channel to ``host:port`` as seen from the host.
    * ``forward_local(port, timeout=...)`` is a Forward: a local socket whose every connection reaches
      ``127.0.0.1:port`` on the host. It is served without a thread per connection.
    * ``open_sftp(stall=..., timeout=...)`` is an SFTP session on this connection (see ``SftpSession``);
      ``timeout`` bounds opening it, ``stall`` how long any one request may wait for the host.
    * ``forward_remote(socket_path, timeout=...)`` is a RemoteForward: a port on the host's 127.0.0.1 whose every
      connection reaches the local Unix socket ``socket_path``.
    * ``is_active()`` is true while the connection can serve requests (no network round trip).
    * ``describe()`` is one line for people: ``user@address:port (detail)``.
    * ``close()`` is idempotent, never raises, takes at most about ``Timeouts.close`` seconds, closes every
      channel and forward still open, and releases the jump hosts it went through (they close with their last
      user).

    exec/open_forward/forward_local/open_sftp raise ChannelError when the connection cannot serve the request.
    """

    host: str
    address: str
    port: int
    user: str
    connect_seconds: float

    def is_active(self) -> bool: ...

    def describe(self) -> str:
        """``user@address:port`` and what the transport has to say of the connection (e.g. its cipher)."""
        ...

    def exec(
        self, command: str, *, timeout: float, pty: bool = False, term: str = "xterm", width: int = 80, height: int = 24
    ) -> Channel: ...

    def open_forward(self, dest_host: str, dest_port: int, *, timeout: float) -> Channel: ...

    def forward_local(self, dest_port: int, *, timeout: float) -> Forward: ...

    def forward_remote(self, socket_path: str, *, timeout: float) -> RemoteForward: ...

    def open_sftp(self, *, stall: float, timeout: float) -> SftpSession: ...

    def close(self) -> None: ...

    def __enter__(self) -> Connection: ...

    def __exit__(self, *exc_info: object) -> None: ...
