"""Connect, authenticate, exec, forward, close: the whole of what sshfleet asks of SSH.

Every phase has its own deadline and its own error: TCP connect (``ConnectTimeout``/``ConnectError``, phase
"tcp"), then banner + key exchange + host key + authentication together bounded by ``Timeouts.auth`` (phases
"banner", "kex", "hostkey", "auth"), and each ProxyJump hop the same way (phase "proxy", naming the hop).
After connect, every request (exec, pty, forward) is bounded by the caller's timeout, and a dead link is
noticed through keepalives plus ``TCP_USER_TIMEOUT`` (keepalive * ServerAliveCountMax), as OpenSSH would.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Callable, Optional, Union

import paramiko

from sshfleet._options import HostSpec, SshOptions
from sshfleet._ssh import _known_hosts
from sshfleet._ssh._auth import authenticate
from sshfleet._ssh._config import ResolvedHost, resolve
from sshfleet._ssh._errors import describe as _describe
from sshfleet._ssh._errors import paramiko_errors
from sshfleet._ssh._forward import ReverseTunnel, Tunnel
from sshfleet._ssh._pool import JumpPool
from sshfleet._ssh._seam import Channel
from sshfleet._ssh._sftp import SftpClient
from sshfleet.errors import ChannelError, ConnectError, ConnectTimeout, HostKeyError, UsageError

log = logging.getLogger("sshfleet.ssh")

# Fast first: AES-GCM needs no separate MAC pass (~30% more throughput than aes128-ctr + HMAC in paramiko).
# Whatever else paramiko supports stays at the end, so old servers still connect.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256")
WINDOW_SIZE = 4 * 1024 * 1024
MAX_PACKET_SIZE = 32 * 1024
PARAMIKO_LOG = "sshfleet.ssh.paramiko"


class _QuietUnlessDebug(logging.Filter):
    """paramiko logs each failed connect as an ERROR traceback; sshfleet reports a typed error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger("sshfleet").isEnabledFor(logging.DEBUG)


logging.getLogger(PARAMIKO_LOG).addFilter(_QuietUnlessDebug())


class _HostLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[host={self.extra['host'] if self.extra else '?'}] {msg}", kwargs


def _host_log(name: str) -> _HostLog:
    return _HostLog(log, {"host": name})


class SshConnection:
    """The paramiko transport's ``Connection`` (the contract is in ``_seam.py``): one authenticated SSH
    connection to one host, whose forwards are ``Tunnel``s pumped on the hub loop."""

    def __init__(
        self,
        resolved: ResolvedHost,
        transport: paramiko.Transport,
        hops: list[SshConnection],
        close_timeout: float,
        release: Optional[Callable[[], None]] = None,
    ) -> None:
        self.resolved = resolved
        self.host = resolved.name
        self.address = resolved.hostname
        self.port = resolved.port
        self.user = resolved.user
        self.python = resolved.python
        self.cipher: str = transport.local_cipher
        self.connect_seconds = 0.0
        self._transport = transport
        self._hops = hops
        self._close_timeout = close_timeout
        self._release = release
        self._closed = False
        self._lock = threading.Lock()
        self._log = _host_log(resolved.name)
        self._tunnels: set[Tunnel] = set()
        self._reverse: dict[int, ReverseTunnel] = {}  # by the port the host allocated

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SshConnection {self.host} {self.user}@{self.address}:{self.port} {state}>"

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.user}@{self.address}:{self.port} ({self.cipher})"

    def is_active(self) -> bool:
        return not self._closed and self._transport.is_active() and self._transport.is_authenticated()

    def exec(
        self,
        command: str,
        *,
        timeout: float,
        pty: bool = False,
        term: str = "xterm",
        width: int = 80,
        height: int = 24,
    ) -> Channel:
        """Open a session channel and start ``command``; returns once the server accepted it.

        ``timeout`` bounds opening the channel and the pty/exec requests, not the command itself.
        Raises ChannelError (from the paramiko error) when the channel cannot be opened or the request fails.
        """
        deadline = time.monotonic() + timeout
        with paramiko_errors(self.host, "opening a session"):
            channel = self._transport.open_session(window_size=WINDOW_SIZE, timeout=timeout)
        try:
            with _watchdog(channel, deadline) as fired:
                try:
                    with paramiko_errors(self.host, "exec"):
                        if pty:
                            channel.get_pty(term=term, width=width, height=height)
                        channel.exec_command(command)
                except ChannelError as exc:
                    if fired.is_set():
                        raise ChannelError(self.host, f"exec not acknowledged within {timeout:g}s") from exc
                    raise
        except BaseException:
            channel.close()
            raise
        return channel

    def open_forward(self, dest_host: str, dest_port: int, *, timeout: float) -> Channel:
        """A direct-tcpip channel to ``dest_host:dest_port`` as seen from the host (like ``ssh -L``).

        Raises ChannelError when the server refuses (e.g. nothing listens there) or ``timeout`` passes.
        """
        with paramiko_errors(self.host, f"forward to {dest_host}:{dest_port}"):
            channel = self._transport.open_channel(
                "direct-tcpip",
                (dest_host, dest_port),
                ("127.0.0.1", 0),
                window_size=WINDOW_SIZE,
                timeout=timeout,
            )
        # paramiko acks every tenth of the window (a WINDOW_ADJUST per 400 KiB, each waking sshd); half the window
        # still leaves the server 2 MiB of credit, ample on any link, with a fifth of the acks.
        channel.in_window_threshold = WINDOW_SIZE // 2
        return channel

    def forward_local(self, dest_port: int, *, timeout: float) -> Tunnel:
        """A Tunnel to ``127.0.0.1:dest_port`` on the host; each connection to it opens a forward channel."""
        if not self.is_active():
            raise ChannelError(self.host, "cannot forward: the SSH connection is closed")
        tunnel = Tunnel(self, dest_port, open_timeout=timeout)
        with self._lock:
            self._tunnels = {t for t in self._tunnels if not t.closed}
            self._tunnels.add(tunnel)
        return tunnel

    def forward_remote(self, socket_path: str, *, timeout: float) -> ReverseTunnel:
        """``ssh -R 127.0.0.1:0:socket_path``: a port on the host forwarded to a local Unix socket.

        Raises ChannelError when the server refuses (AllowTcpForwarding no) or the connection is gone. The
        request is answered at once by a live server; on a dead link it ends with the keepalive."""
        if not self.is_active():
            raise ChannelError(self.host, "cannot forward: the SSH connection is closed")
        with paramiko_errors(self.host, "remote forward"):
            port = self._transport.request_port_forward("127.0.0.1", 0, handler=self._forwarded)
        if not port:
            raise ChannelError(self.host, "remote forward refused by the server (is AllowTcpForwarding off?)")
        tunnel = ReverseTunnel(self, port, socket_path)
        with self._lock:
            self._reverse[port] = tunnel
        return tunnel

    def _forwarded(self, channel: paramiko.Channel, origin: Any, server: tuple[str, int]) -> None:
        with self._lock:
            tunnel = self._reverse.get(server[1])
        if tunnel is None:
            channel.close()
        else:
            tunnel.accept(channel)

    def cancel_remote(self, port: int) -> None:
        """Stop the remote forward of ``port`` (from forward_remote); never raises."""
        with self._lock:
            tunnel = self._reverse.pop(port, None)
        if tunnel is not None and self.is_active():
            with contextlib.suppress(Exception):
                self._transport.cancel_port_forward("127.0.0.1", port)

    def open_sftp(self, *, stall: float, timeout: float) -> SftpClient:
        """An SFTP session on a new channel (``sftp`` subsystem); opening it is bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        with paramiko_errors(self.host, "opening an SFTP session"):
            channel = self._transport.open_session(window_size=WINDOW_SIZE, timeout=timeout)
        try:
            with _watchdog(channel, deadline), paramiko_errors(self.host, "starting SFTP"):
                channel.invoke_subsystem("sftp")
        except BaseException:
            channel.close()
            raise
        channel.in_window_threshold = WINDOW_SIZE // 2  # as for forwards: fewer WINDOW_ADJUSTs on downloads
        remaining = max(0.1, deadline - time.monotonic())
        return SftpClient.start(self.host, channel, stall=stall, timeout=remaining, close_timeout=self._close_timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tunnels, self._tunnels = self._tunnels, set()
            reverse, self._reverse = list(self._reverse.values()), {}
        for tunnel in tunnels:
            tunnel.close()
        for back in reverse:
            back.close()
        done = threading.Event()

        def work() -> None:
            try:
                self._transport.close()
            except Exception as exc:  # a broken link must not stop the rest of the teardown
                self._log.debug("closing transport: %s", exc)
            finally:
                done.set()

        threading.Thread(target=work, name=f"sshfleet-close-{self.host}", daemon=True).start()
        if not done.wait(self._close_timeout):
            self._log.warning("SSH connection did not close within %gs; abandoning it", self._close_timeout)
        if self._release is not None:
            self._release()
        for hop in reversed(self._hops):
            hop.close()


@contextmanager
def _watchdog(channel: paramiko.Channel, deadline: float) -> Iterator[threading.Event]:
    """paramiko waits for channel request replies without a timeout; closing the channel ends the wait."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        channel.close()

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


# --- TCP -------------------------------------------------------------------------------------------------


def _getaddrinfo(host: ResolvedHost, deadline: float) -> list[Any]:
    """getaddrinfo has no timeout of its own; a stuck resolver must not hold a fleet connect forever."""
    result: list[Any] = []
    error: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            result.extend(socket.getaddrinfo(host.hostname, host.port, type=socket.SOCK_STREAM))
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, name=f"sshfleet-dns-{host.name}", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise ConnectTimeout(host.name, f"looking up {host.hostname} took longer than {host.connect_timeout:g}s")
    if error:
        raise ConnectError(host.name, f"cannot resolve {host.hostname}: {_describe(error[0])}") from error[0]
    return result


def _tcp_connect(host: ResolvedHost) -> socket.socket:
    """TCP connect, trying each address with the connect timeout; errors carry the OS reason."""
    deadline = time.monotonic() + host.connect_timeout
    errors: list[str] = []
    last: Optional[BaseException] = None
    for family, kind, proto, _, address in _getaddrinfo(host, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(host.connect_timeout)
            sock.connect(address)
        except socket.timeout as exc:
            sock.close()
            raise ConnectTimeout(
                host.name,
                f"TCP connect to {address[0]}:{host.port} timed out after {host.connect_timeout:g}s",
            ) from exc
        except OSError as exc:
            sock.close()
            errors.append(f"{address[0]}:{host.port}: {_describe(exc)}")
            last = exc
            continue
        _tune_socket(sock, host)
        return sock
    where = host.hostname if len(errors) > 1 else f"{host.hostname}:{host.port}"
    reasons = "; ".join(errors) if len(errors) > 1 else _describe(last) if last else "no address"
    raise ConnectError(host.name, f"TCP connect to {where} failed: {reasons}") from last


def _tune_socket(sock: socket.socket, host: ResolvedHost) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is not None and host.keepalive > 0:
        # With keepalives flowing, unacknowledged data for this long means the peer is gone: fail the socket
        # instead of letting TCP retransmit for ~15 minutes.
        millis = int(host.keepalive * host.keepalive_count_max * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, user_timeout, millis)
    sock.settimeout(None)


# --- SSH handshake ---------------------------------------------------------------------------------------


def _ordered(preferred: tuple[str, ...], available: tuple[str, ...]) -> tuple[str, ...]:
    first = tuple(a for a in preferred if a in available)
    return first + tuple(a for a in available if a not in first)


def _handshake(host: ResolvedHost, sock: Union[socket.socket, paramiko.Channel]) -> paramiko.Transport:
    """Banner, key exchange, host key check and authentication, all within ``host.auth_timeout``."""
    hlog = _host_log(host.name)
    deadline = time.monotonic() + host.auth_timeout
    try:
        known = _known_hosts.lookup(host.known_hosts_files, host.host_key_names)
    except OSError as exc:
        sock.close()
        raise HostKeyError(host.name, f"cannot read known_hosts {exc.filename}: {_describe(exc)}") from exc
    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
    try:
        transport.set_log_channel(PARAMIKO_LOG)
        security = transport.get_security_options()
        security.ciphers = _ordered(PREFERRED_CIPHERS, tuple(security.ciphers))
        security.digests = _ordered(PREFERRED_MACS, tuple(security.digests))
        security.key_types = _known_hosts.preferred_algorithms(known, tuple(security.key_types))
        transport.banner_timeout = host.auth_timeout
        transport.handshake_timeout = host.auth_timeout
        transport.use_compression(False)
        event = threading.Event()
        transport.start_client(event=event)
        while not event.wait(0.05):
            if not transport.is_active() or time.monotonic() >= deadline:
                break
        if not event.is_set() and transport.is_active():
            phase = "kex" if transport.remote_version else "banner"
            what = "key exchange" if phase == "kex" else "the SSH banner"
            raise ConnectTimeout(
                host.name,
                f"{what} from {host.hostname}:{host.port} took longer than {host.auth_timeout:g}s",
                phase,
            )
        if not transport.is_active():
            cause = transport.get_exception()
            phase = "kex" if transport.remote_version else "banner"
            if time.monotonic() >= deadline - 0.2:
                raise ConnectTimeout(
                    host.name,
                    f"SSH {phase} with {host.hostname}:{host.port} ran past {host.auth_timeout:g}s",
                    phase,
                ) from cause
            reason = _describe(cause) if cause is not None else "connection closed"
            if phase == "banner":
                reason = f"no SSH server answered at {host.hostname}:{host.port} ({reason})"
            raise ConnectError(host.name, f"SSH negotiation failed: {reason}", phase) from cause
        _check_host_key(host, transport, known, hlog)
        if host.keepalive > 0:
            transport.set_keepalive(max(1, round(host.keepalive)))
        authenticate(transport, host, deadline, hlog)
        hlog.debug("connected with %s, %s", transport.local_cipher, transport.host_key_type)
        return transport
    except BaseException:
        transport.close()
        raise


def _check_host_key(
    host: ResolvedHost,
    transport: paramiko.Transport,
    known: list[_known_hosts.KnownKey],
    hlog: _HostLog,
) -> None:
    offered = transport.get_remote_server_key()
    blob = offered.asbytes()
    keytype = offered.get_name()
    offered_fp = _known_hosts.fingerprint(blob)
    verdict = _known_hosts.check(known, blob)
    if verdict.status == "unknown" and host.host_key_policy == "accept-new" and host.known_hosts_write:
        try:
            verdict = _known_hosts.append_if_absent(
                host.known_hosts_write, host.host_key_names, host.record_name, keytype, blob
            )
        except OSError as exc:
            raise HostKeyError(
                host.name, f"cannot record the new host key in {host.known_hosts_write}: {_describe(exc)}"
            ) from exc
        if verdict.status == "ok":
            hlog.warning("added %s key %s for %s to %s", keytype, offered_fp, host.record_name, host.known_hosts_write)
    if verdict.status == "ok":
        return
    names = " / ".join(host.host_key_names)
    if verdict.status == "revoked":
        raise HostKeyError(host.name, f"host key {keytype} {offered_fp} for {names} is marked @revoked")
    if verdict.status == "changed":
        expected = ", ".join(f"{k.keytype} {k.fingerprint} ({k.path}:{k.line})" for k in verdict.known)
        first = verdict.known[0]
        raise HostKeyError(
            host.name,
            f"HOST KEY CHANGED for {names}: expected {expected}, offered {keytype} {offered_fp}; "
            f"possible man-in-the-middle. If the change is legitimate, remove the old key with "
            f"ssh-keygen -R '{host.record_name}' -f {first.path}",
        )
    files = ", ".join(host.known_hosts_files) or "no known_hosts file"
    raise HostKeyError(
        host.name,
        f"no host key known for {names} ({keytype} {offered_fp} offered; looked in {files}); "
        f"add it with ssh-keyscan or use host_key_policy='accept-new'",
    )


# --- ProxyJump -------------------------------------------------------------------------------------------


def _open_jump_channel(via: SshConnection, host: ResolvedHost) -> paramiko.Channel:
    try:
        return via._transport.open_channel(
            "direct-tcpip",
            (host.hostname, host.port),
            ("127.0.0.1", 0),
            window_size=WINDOW_SIZE,
            timeout=host.connect_timeout,
        )
    except paramiko.ChannelException as exc:
        raise ConnectError(
            host.name, f"jump host {via.host} cannot reach {host.hostname}:{host.port}: {exc.text}", "proxy"
        ) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        cls = ConnectTimeout if "Timeout" in str(exc) else ConnectError
        raise cls(
            host.name,
            f"jump host {via.host} cannot reach {host.hostname}:{host.port}: {_describe(exc)}",
            "proxy",
        ) from exc


def _close(conn: SshConnection) -> None:
    conn.close()


# Every paramiko connection through the same hop chain shares one connection to it (see _pool.py).
JUMPS: JumpPool[SshConnection] = JumpPool(lambda c: c.is_active(), _close)


def _chain_key(chain: tuple[ResolvedHost, ...]) -> tuple[object, ...]:
    return ("paramiko", *(hop.connection_key() for hop in chain))


def _connect_chain(chain: tuple[ResolvedHost, ...], options: SshOptions) -> SshConnection:
    """Connect through ``chain`` hop by hop; the returned connection owns (and closes) the earlier hops."""
    hops: list[SshConnection] = []
    try:
        for hop in chain:
            hops.append(_connect_resolved(hop, options, via=hops[-1] if hops else None))
    except BaseException:
        for done in reversed(hops):
            done.close()
        raise
    last = hops.pop()
    last._hops = hops
    return last


def _connect_resolved(host: ResolvedHost, options: SshOptions, via: Optional[SshConnection] = None) -> SshConnection:
    started = time.monotonic()
    release: Optional[Callable[[], None]] = None
    sock: Union[socket.socket, paramiko.Channel]
    try:
        if host.proxy_jump and via is None:
            chain = host.proxy_jump
            try:
                via, release = JUMPS.acquire(_chain_key(chain), lambda: _connect_chain(chain, options))
            except ConnectError as exc:
                raise type(exc)(host.name, f"via jump host {exc.host}: {exc.message}", "proxy") from exc
        sock = _tcp_connect(host) if via is None else _open_jump_channel(via, host)
        transport = _handshake(host, sock)
    except BaseException:
        if release is not None:
            release()
        raise
    # The jump chain (if any) is the pool's: this connection hands it back with release() when it closes.
    conn = SshConnection(host, transport, [], options.timeouts.close, release)
    conn.connect_seconds = time.monotonic() - started
    return conn


def connect(spec: HostSpec, options: SshOptions) -> SshConnection:
    """Open an authenticated SSH connection to one host.

    Raises a ConnectError subclass naming the phase that failed: ConnectTimeout, AuthenticationError,
    HostKeyError, or ConnectError itself (refused, no route, DNS, ssh_config unusable: phase "config").
    """
    try:
        host = resolve(spec, options)
    except UsageError as exc:
        raise ConnectError(spec.name, str(exc), "config") from exc
    return _connect_resolved(host, options)
