"""``Tunnel``: the paramiko transport's local forward (``ssh -L``), pumped on the hub loop.

A Tunnel is a Unix socket in a private 0700 directory on the controller (so no other local user can use it)
whose every connection is spliced to a fresh direct-tcpip channel to the servicer's port on the host. The
splicing runs on the hub's one I/O loop (``sshfleet._hub``), not on a thread per connection.

A client on the hub loop can skip the socket and the splice: ``open_direct(target, protocol_factory)`` gives it
an asyncio transport straight on a new forward channel of the Tunnel whose target that is (the call streams of
``sshfleet._calls`` use it: one socket round trip and two loop callbacks less per call).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import weakref
from typing import Any, Callable, Optional, Protocol

from sshfleet._hub import Hub
from sshfleet._ssh._seam import Channel, Connection
from sshfleet._ssh._stale import sweep_dead_owners

log = logging.getLogger("sshfleet.ssh")
_CHUNK = 256 * 1024
_CHAN_READ = 4 * 1024 * 1024  # at most the channel's window: take all it holds in one read
_READS_PER_WAKE = 4
_SOCK_BUF = 4 * 1024 * 1024
FORWARD_PREFIX = "sshfleet-fwd-"
_swept = False
_tunnels: weakref.WeakValueDictionary[str, Tunnel] = weakref.WeakValueDictionary()  # open Tunnels by target


def _sweep_once() -> None:
    """Remove the forward directories of controllers that died without closing (once per process)."""
    global _swept
    if not _swept:
        _swept = True
        sweep_dead_owners(tempfile.gettempdir(), FORWARD_PREFIX)


class _Splice:
    """Copies bytes both ways between one local socket and one SSH channel, without blocking the loop.

    Towards the socket (the streaming direction) the chunks read from the channel are queued as they are and
    sent with one scatter-gather ``sendmsg``; a partial send keeps a memoryview of the rest. No joining and no
    re-slicing of the pending bytes, which copied every byte once or twice more at 200+ MB/s.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, chan: Channel) -> None:
        self.loop = loop
        self.sock = sock
        self.chan = chan
        self.to_chan = b""  # bytes read from the socket that the channel's window did not take yet
        self.to_sock: collections.deque[Any] = collections.deque()  # bytes/memoryviews not sent to the socket yet
        self.closed = False
        self.sock_paused = False  # reading the socket stopped until the channel's window opens
        sock.setblocking(False)
        # A larger send buffer than the default ~200 KiB means fewer partial sends, so the channel is read on
        # (and the loop re-arms the channel reader) less often. Memory stays bounded by the HTTP/2 and SSH windows.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
        chan.settimeout(0.0)
        self.chan_fd = chan.fileno()
        loop.add_reader(sock.fileno(), self._from_sock)
        loop.add_reader(self.chan_fd, self._from_chan)

    def _from_sock(self) -> None:
        try:
            data = self.sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.sock.fileno())
            with contextlib.suppress(OSError, EOFError):
                self.chan.shutdown_write()
            self._maybe_close()
            return
        self.to_chan = data
        self._flush_to_chan()

    def _flush_to_chan(self) -> None:
        while self.to_chan:
            try:
                sent = self.chan.send(self.to_chan)
            except socket.timeout:
                sent = -1
            except (OSError, EOFError):
                self.close()
                return
            if sent <= 0:
                # The channel's window is full: stop reading the socket, try again shortly.
                self.loop.remove_reader(self.sock.fileno())
                self.sock_paused = True
                self.loop.call_later(0.002, self._flush_to_chan)
                return
            self.to_chan = self.to_chan[sent:]
        if self.sock_paused and not self.closed:  # re-arm only if paused: add_reader is an epoll_ctl each time
            self.sock_paused = False
            self.loop.add_reader(self.sock.fileno(), self._from_sock)

    def _from_chan(self) -> None:
        eof = False
        for _ in range(_READS_PER_WAKE):
            try:
                data = self.chan.recv(_CHAN_READ)
            except socket.timeout:
                break
            except (OSError, EOFError):
                data = b""
            if not data:
                eof = True
                break
            self.to_sock.append(data)
        if self.to_sock:
            self._flush_to_sock()
        if eof:
            self.loop.remove_reader(self.chan_fd)
            if not self.to_sock:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
            self._maybe_close()

    def _flush_to_sock(self) -> None:
        pending = self.to_sock
        try:
            sent = self.sock.send(pending[0]) if len(pending) == 1 else self.sock.sendmsg(pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        while sent:
            head = pending[0]
            if len(head) <= sent:
                sent -= len(head)
                pending.popleft()
            else:
                pending[0] = memoryview(head)[sent:]
                break
        if pending:
            self.loop.remove_reader(self.chan_fd)
            self.loop.add_writer(self.sock.fileno(), self._drain_sock)

    def _drain_sock(self) -> None:
        self._flush_to_sock()
        if not self.to_sock and not self.closed:
            self.loop.remove_writer(self.sock.fileno())
            self.loop.add_reader(self.chan_fd, self._from_chan)

    def _maybe_close(self) -> None:
        chan: Any = self.chan  # paramiko's Channel; its EOF flags are not part of the seam's Protocol
        if chan.closed or (chan.eof_received and chan.eof_sent):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for remove in (self.loop.remove_reader, self.loop.remove_writer):
            with contextlib.suppress(Exception):
                remove(self.sock.fileno())
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.chan_fd)
        with contextlib.suppress(Exception):
            self.sock.close()
        with contextlib.suppress(Exception):
            self.chan.close()


class Tunnel:
    """A local Unix socket forwarded to ``127.0.0.1:port`` on the host through its SSH connection (``ssh -L``).

    ``target`` is the gRPC address to dial. ``close()`` stops accepting, closes every spliced connection and
    removes the private directory; it is idempotent.
    """

    def __init__(self, conn: Connection, port: int, *, open_timeout: float) -> None:
        self.hub = hub = Hub.get()
        self.conn = conn
        self.port = port
        self.open_timeout = open_timeout
        _sweep_once()
        # 0700 (mkdtemp); the pid in the name lets a later controller sweep it if this one is SIGKILLed
        self.dir = tempfile.mkdtemp(prefix=f"{FORWARD_PREFIX}{os.getpid()}-")
        self.path = os.path.join(self.dir, "grpc.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.listener.setblocking(False)
        # every connection through the tunnel: spliced sockets and channels driven directly (open_direct)
        self.splices: set[_Splice | _ChannelTransport] = set()
        self.closed = False
        hub.call(lambda: hub.loop.add_reader(self.listener.fileno(), self._accept))
        _tunnels[self.target] = self

    @property
    def target(self) -> str:
        return f"unix:{self.path}"

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return
        self.hub.loop.create_task(self._connect(sock))

    async def _connect(self, sock: socket.socket) -> None:
        try:
            chan = await self.hub.loop.run_in_executor(
                None, lambda: self.conn.open_forward("127.0.0.1", self.port, timeout=self.open_timeout)
            )
        except Exception as exc:
            log.debug("[host=%s] forward to port %d failed: %s", self.conn.host, self.port, exc)
            sock.close()
            return
        if self.closed:
            sock.close()
            chan.close()
            return
        splice = _Splice(self.hub.loop, sock, chan)
        self.splices = {s for s in self.splices if not s.closed}
        self.splices.add(splice)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        def shut() -> None:
            with contextlib.suppress(Exception):
                self.hub.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            for splice in list(self.splices):
                splice.close()

        with contextlib.suppress(Exception):
            self.hub.call(shut, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def open_direct(self, protocol: asyncio.Protocol) -> _ChannelTransport:
        """A new forward channel to the servicer's port as an asyncio transport driving ``protocol`` (on the hub
        loop). Raises OSError (ChannelError) when the channel cannot be opened or the Tunnel is closed."""
        chan = await self.hub.loop.run_in_executor(
            None, lambda: self.conn.open_forward("127.0.0.1", self.port, timeout=self.open_timeout)
        )
        if self.closed:
            chan.close()
            raise ConnectionAbortedError("the forward is closed")
        transport = _ChannelTransport(self.hub.loop, chan, protocol)
        self.splices = {s for s in self.splices if not s.closed}
        self.splices.add(transport)
        return transport


async def open_direct(target: str, protocol_factory: Callable[[], asyncio.Protocol]) -> Optional[asyncio.Protocol]:
    """Connect ``protocol_factory()`` straight to the forward channel behind ``target`` if a paramiko Tunnel
    serves it (returns the protocol), else None: the caller connects to the socket as usual."""
    tunnel = _tunnels.get(target)
    if tunnel is None or tunnel.closed:
        return None
    protocol = protocol_factory()
    await tunnel.open_direct(protocol)
    return protocol


class _ChannelTransport(asyncio.Transport):
    """An asyncio transport on one paramiko channel, pumped on the hub loop like ``_Splice`` (whose socket side
    it replaces by a protocol): reads when paramiko's pipe says data is buffered, writes as far as the channel's
    window allows and retries the rest shortly."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        chan: Channel,
        protocol: asyncio.Protocol,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.chan = chan
        self.protocol = protocol
        self.pending = b""
        self.closed = False
        self.retry: Optional[asyncio.TimerHandle] = None
        chan.settimeout(0.0)
        self.fd = chan.fileno()
        loop.add_reader(self.fd, self._read)
        protocol.connection_made(self)

    def _read(self) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                data = self.chan.recv(_CHAN_READ)
            except socket.timeout:
                return
            except (OSError, EOFError):
                data = b""
            if not data:
                self._lost()
                return
            self.protocol.data_received(data)
            if self.closed or not self.chan.recv_ready():  # one more recv would only raise socket.timeout
                return

    def write(self, data: Any) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        self.pending = bytes(data)
        self._flush()

    def _flush(self) -> None:
        self.retry = None
        while self.pending and not self.closed:
            try:
                sent = self.chan.send(self.pending)
            except socket.timeout:
                sent = 0
            except (OSError, EOFError):
                self._lost()
                return
            if sent <= 0:  # the channel's window is full: try again shortly
                self.retry = self.loop.call_later(0.002, self._flush)
                return
            self.pending = self.pending[sent:]

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self._lost()

    def abort(self) -> None:
        self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending = b""
        if self.retry is not None:
            self.retry.cancel()
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(Exception):
            self.chan.close()
        self.loop.call_soon(self.protocol.connection_lost, None)


class _RemoteForwarder(Protocol):
    """What a ReverseTunnel needs of its paramiko connection."""

    host: str

    def cancel_remote(self, port: int) -> None: ...


class ReverseTunnel:
    """The paramiko transport's RemoteForward (see ``_seam.py``): a port on the host's 127.0.0.1 whose
    connections arrive as forwarded-tcpip channels and are spliced, on the hub loop, to the local Unix socket."""

    def __init__(self, conn: _RemoteForwarder, port: int, socket_path: str) -> None:
        self.conn = conn
        self._port = port
        self.socket_path = socket_path
        self.splices: set[_Splice] = set()
        self.closed = False

    @property
    def port(self) -> int:
        return self._port

    def accept(self, chan: Channel) -> None:
        """A connection to the port arrived (on paramiko's thread): splice it to the local socket."""
        if self.closed:
            chan.close()
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(self.socket_path)
        except OSError as exc:
            log.debug("[host=%s] reverse forward to %s failed: %s", self.conn.host, self.socket_path, exc)
            sock.close()
            chan.close()
            return
        hub = Hub.get()

        def start() -> None:
            if self.closed:
                sock.close()
                chan.close()
                return
            self.splices = {s for s in self.splices if not s.closed}
            self.splices.add(_Splice(hub.loop, sock, chan))

        hub.loop.call_soon_threadsafe(start)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.conn.cancel_remote(self._port)
        hub = Hub.get()

        def shut() -> None:
            for splice in list(self.splices):
                splice.close()

        with contextlib.suppress(Exception):
            hub.call(shut, timeout=5)
