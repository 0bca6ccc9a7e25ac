"""The SSH seam: the whole contract between sshfleet and an SSH implementation, in three Protocols.

Everything above ``sshfleet._ssh`` talks to hosts only through ``Connection``, ``Channel`` and ``Forward``; which
transport stands behind them (paramiko, or the OpenSSH client with a ControlMaster) is known only inside this
package. Both transports raise only ``sshfleet.errors`` (translated in ``_errors.py``), never their own.
"""

from __future__ import annotations

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


class Connection(Protocol):
    """One authenticated SSH connection to one host; a context manager.

    ``host`` is the inventory name; ``address``/``port``/``user`` are the values actually used;
    ``connect_seconds`` is how long the connect took (jump hosts included).

    * ``exec(command, timeout=...)`` starts ``command`` in a new session (with a pty if asked) and returns its
      Channel once the server accepted it; ``timeout`` bounds the request, not the command.
    * ``open_forward(host, port, timeout=...)`` is one channel to ``host:port`` as seen from the host.
    * ``forward_local(port, timeout=...)`` is a Forward: a local socket whose every connection reaches
      ``127.0.0.1:port`` on the host. It is served without a thread per connection.
    * ``is_active()`` is true while the connection can serve requests (no network round trip).
    * ``describe()`` is one line for people: ``user@address:port (detail)``.
    * ``close()`` is idempotent, never raises, takes at most about ``Timeouts.close`` seconds, closes every
      channel and forward still open, and releases the jump hosts it went through (they close with their last
      user).

    exec/open_forward/forward_local raise ChannelError when the connection cannot serve the request.
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

    def close(self) -> None: ...

    def __enter__(self) -> Connection: ...

    def __exit__(self, *exc_info: object) -> None: ...
