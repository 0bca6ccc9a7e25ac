"""The OpenSSH client as an optional SSH transport: one ``ssh -M`` master per host, the rest multiplexed over it.

Why: with paramiko, the controller's Python encrypts every packet and pumps every forwarded byte. With a
ControlMaster, ``forward_unix()`` has the master (C) serve a local Unix socket, so gRPC connects to it and no
Python touches the bytes; an ``exec`` is an ``ssh -S`` mux client that hands its pipes to the master, which then
reads and writes them itself.

Settings: the master runs with ``-F none`` and gets every setting ``resolve()`` computed as ``-o`` options, so
both transports read ssh_config the same way (through ``resolve()``) and nothing else from it (LocalForward,
ForwardAgent, ControlMaster, Match exec, ...) leaks into sshfleet's connections. Each ProxyJump hop is a master
of its own; the next one connects through ``ProxyCommand ssh -S <hop ctl> -W %h:%p``, a mux client of the hop's
master, so every host behind one jump chain shares that chain's one master (``_pool.JumpPool``): one TCP
connection to the bastion, however many hosts.

Lifetime: masters are started from one long-lived thread under ``setpriv --pdeathsig TERM`` (where setpriv
exists), so a controller killed with SIGKILL takes its masters with it, as it would its paramiko sockets.
Everything the transport creates lives in a 0700 temporary directory that ``close()`` removes.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Optional

from sshfleet._options import HostSpec, SshOptions
from sshfleet._ssh._config import ResolvedHost, resolve
from sshfleet._ssh._openssh_args import (
    SSH,
    exec_argv,
    forward_spec,
    master_argv,
    mux_argv,
    ssh_message,
    translate_failure,
)
from sshfleet._ssh._pipe_channel import PipeChannel, _reap
from sshfleet._ssh._pool import JumpPool
from sshfleet._ssh._sftp import SftpClient
from sshfleet._ssh._stale import sweep_dead_owners
from sshfleet.errors import ChannelError, ConnectError, UsageError

# PipeChannel is re-exported: sshfleet._ssh imports it from here.
__all__ = ["OpenSshConnection", "PipeChannel", "connect_openssh", "connect_resolved_openssh", "sweep_stale"]

log = logging.getLogger("sshfleet.ssh")

# A Unix socket path holds 107 bytes; ssh binds the control socket under a name 17 bytes longer first.
_MAX_SOCKET_DIR = 107 - 17 - len("/fwd-000000.sock") - 1
_READY_POLL = (0.002, 0.02)  # first and largest pause between looks at the control socket
_PREFIX = "sshfleet-ssh-"  # then the owner's pid, so directories of dead controllers can be swept


# --- processes -------------------------------------------------------------------------------------------


class _Spawner:
    """Starts masters from one thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so masters forked by short-lived pool
    threads would die with them; forked from here, they die only with the controller.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
        self.prefix: list[str] = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sshfleet-openssh-spawner", daemon=True)
                self._thread.start()
        self._jobs.put((lambda: subprocess.Popen([*self.prefix, *argv], **kwargs), future))
        return future.result()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _Spawner()
_live: weakref.WeakSet[OpenSshConnection] = weakref.WeakSet()
_swept = False


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run a short mux command (``-O check/forward/exit``); (255, reason) when it cannot finish in time."""
    status, said, _ = _run_out(argv, timeout)
    return status, said


def _run_out(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """``_run`` that also returns stdout (where ``-O forward -R ...:0:...`` prints the port it got)."""
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return 255, f"no answer from the ssh master within {timeout:g}s", ""
    except OSError as exc:
        return 255, str(exc), ""
    return done.returncode, done.stderr.decode("utf-8", "replace").strip(), done.stdout.decode("utf-8", "replace")


# --- connection ------------------------------------------------------------------------------------------


class OpenSshConnection:
    """One host reached through an OpenSSH ControlMaster; the same surface as ``SshConnection``, a context manager.

    ``exec()`` and ``open_forward()`` return ``PipeChannel`` objects; ``forward_unix()`` returns a socket path
    the master itself serves. ``close()`` is idempotent, never raises, is bounded by about ``Timeouts.close``
    seconds, stops the master and every client still running over it, removes the temporary directory, and
    closes the jump hosts this connection went through.
    """

    def __init__(self, resolved: ResolvedHost, proc: subprocess.Popen[bytes], workdir: str,
                 hops: list[OpenSshConnection], close_timeout: float,
                 release: Optional[Callable[[], None]] = None) -> None:  # fmt: skip
        self.resolved = resolved
        self.host = resolved.name
        self.address = resolved.hostname
        self.port = resolved.port
        self.user = resolved.user
        self.python = resolved.python
        self.connect_seconds = 0.0
        self.workdir = workdir
        self.control_path = os.path.join(workdir, "ctl")
        self._proc = proc
        self._hops = hops
        self._release = release  # hands the shared jump chain back (closes it with its last user)
        self._close_timeout = close_timeout
        self._closed = False
        self._lock = threading.Lock()
        # Held until closed, as paramiko's transport holds its channels: close() then reaps what is left.
        self._channels: set[PipeChannel] = set()
        self._forwards: dict[str, str] = {}
        self._counter = itertools.count(1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<OpenSshConnection {self.host} {self.user}@{self.address}:{self.port} {state}>"

    def __enter__(self) -> OpenSshConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.user}@{self.address}:{self.port} (openssh)"

    @property
    def master_pid(self) -> int:
        return self._proc.pid

    def is_active(self, check: bool = False) -> bool:
        """The master runs (and, with ``check``, answers ``ssh -O check``)."""
        if self._closed or self._proc.poll() is not None:
            return False
        return not check or self._mux(["-O", "check"], self._close_timeout)[0] == 0

    def _mux(self, args: list[str], timeout: float) -> tuple[int, str]:
        return _run([*mux_argv(self.control_path), *args, "--", self.address], timeout)

    def _require_active(self, what: str) -> None:
        if not self.is_active():
            state = "closed" if self._closed else f"gone (ssh said: {self.master_log() or 'nothing'})"
            raise ChannelError(self.host, f"cannot {what}: the SSH connection is {state}")

    def master_log(self) -> str:
        """What the master printed (errors, warnings), in one line."""
        with contextlib.suppress(OSError), open(os.path.join(self.workdir, "master.log"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8000))
            return ssh_message(f.read().decode("utf-8", "replace"))
        return ""

    def _client(self, argv: list[str], env: Optional[dict[str, str]] = None) -> PipeChannel:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,  # Ctrl-C on the controller must not cut sessions before close() runs
                env=env,
            )
        except OSError as exc:
            raise ChannelError(self.host, f"cannot start ssh: {exc}") from exc
        channel = PipeChannel(self.host, proc, self._close_timeout, self._channels.discard)
        with self._lock:
            closing = self._closed
            if not closing:
                self._channels.add(channel)
        if closing:  # close() ran meanwhile and will not see this one
            channel.close()
            raise ChannelError(self.host, "the SSH connection was closed")
        return channel

    def exec(self, command: str, *, timeout: float, pty: bool = False, term: str = "xterm",
             width: int = 80, height: int = 24) -> PipeChannel:  # fmt: skip
        """Start ``command`` in a new session over the master; returns at once (``timeout`` is not needed).

        Raises ChannelError when the connection is closed or the master has gone. A session the server refuses
        shows as exit status 255 with ssh's message on stderr. ``term`` reaches the server as TERM; with a pty,
        the size is set with ``stty`` before the command runs.
        """
        self._require_active("exec")
        env = {**os.environ, "TERM": term} if pty else None
        argv = exec_argv(self.control_path, self.address, command, pty=pty, width=width, height=height)
        return self._client(argv, env)

    def open_forward(self, dest_host: str, dest_port: int, *, timeout: float) -> PipeChannel:
        """A channel to ``dest_host:dest_port`` as seen from the host (``ssh -W`` over the master).

        Returns once the server has opened the channel. Raises ChannelError when the server refuses (nothing
        listens there) or ``timeout`` passes. Prefer ``forward_unix()``: here every byte crosses Python.
        """
        self._require_active("open a forward")
        where = f"[{dest_host}]" if ":" in dest_host else dest_host
        argv = [*mux_argv(self.control_path, log_level="DEBUG1"), "-W", f"{where}:{dest_port}"]
        channel = self._client([*argv, "--", self.address])
        deadline = time.monotonic() + timeout
        said = b""
        # The mux client logs the master's reply, which comes only after the server confirmed the channel.
        while b"master session id" not in said:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or channel.exit_status_ready():
                break
            if channel._wait(channel.stderr_fileno(), select.POLLIN, remaining):
                data = channel._peek(channel.stderr_fileno())
                if not data:
                    break
                said += data
        if b"master session id" not in said:
            channel.close()
            text = ssh_message(said.decode("utf-8", "replace"))
            reason = "refused" if "refused" in text or "failed" in text else f"not opened within {timeout:g}s"
            raise ChannelError(self.host, f"forward to {dest_host}:{dest_port} {reason}: {text or 'no reply'}")
        return channel

    def open_sftp(self, *, stall: float, timeout: float) -> SftpClient:
        """An SFTP session through a mux client running the ``sftp`` subsystem (``ssh -s``); paramiko's SFTP
        client speaks the protocol over its pipes. Raises ChannelError with ssh's words when refused."""
        self._require_active("open an SFTP session")
        channel = self._client([*mux_argv(self.control_path), "-T", "-s", "--", self.address, "sftp"])

        def said() -> str:
            data = b""
            with contextlib.suppress(Exception):
                channel.settimeout(1.0)
                while chunk := channel.recv_stderr(65536):
                    data += chunk
            return ssh_message(data.decode("utf-8", "replace"))

        return SftpClient.start(
            self.host, channel, stall=stall, timeout=timeout, close_timeout=self._close_timeout, said=said
        )

    def forward_unix(self, dest_host: str, dest_port: int, *, timeout: Optional[float] = None) -> str:
        """A local Unix socket (mode 0600, in this connection's 0700 directory) that the master forwards to
        ``dest_host:dest_port`` on the host; every connection to it is a new channel. Removed at close().

        Raises ChannelError when the master refuses the forward or does not answer in ``timeout`` (default:
        ``Timeouts.close``). A destination where nothing listens is noticed only when a connection is made.
        """
        self._require_active("forward")
        path = os.path.join(self.workdir, f"fwd-{next(self._counter)}.sock")
        spec = forward_spec(path, dest_host, dest_port)
        status, said = self._mux(["-O", "forward", "-L", spec], timeout or self._close_timeout)
        if status != 0 or not os.path.exists(path):
            raise ChannelError(self.host, f"forward to {dest_host}:{dest_port} failed: {ssh_message(said)}")
        with self._lock:
            self._forwards[path] = spec
        return path

    def forward_local(self, dest_port: int, *, timeout: float) -> _UnixForward:
        """The seam's forward: a Unix socket the master itself serves (``forward_unix``), no Python in the path."""
        return _UnixForward(self, self.forward_unix("127.0.0.1", dest_port, timeout=timeout))

    def forward_remote(self, socket_path: str, *, timeout: float) -> _RemoteForward:
        """``ssh -O forward -R 127.0.0.1:0:socket_path``: the master allocates a port on the host and forwards
        its connections to the local Unix socket. Raises ChannelError when the server refuses."""
        self._require_active("forward")
        spec = f"127.0.0.1:0:{socket_path}"
        status, said, out = _run_out(
            [*mux_argv(self.control_path), "-O", "forward", "-R", spec, "--", self.address], timeout
        )
        port = int(out.strip()) if status == 0 and out.strip().isdigit() else 0
        if not port:
            raise ChannelError(self.host, f"remote forward failed: {ssh_message(said) or out.strip() or 'no port'}")
        return _RemoteForward(self, port, spec)  # cancelled by the spec it was asked with (port 0), as ssh wants

    def cancel_forward(self, path: str) -> None:
        """Stop forwarding ``path`` (from forward_unix) and remove the socket; unknown paths are ignored."""
        with self._lock:
            spec = self._forwards.pop(path, None)
        if spec is None:
            return
        if self.is_active():
            self._mux(["-O", "cancel", "-L", spec], self._close_timeout)
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _abandon(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + self._close_timeout
        try:
            if self._proc.poll() is None:
                self._mux(["-O", "exit"], max(0.5, deadline - time.monotonic()))
                _reap(self._proc, max(0.0, deadline - time.monotonic()), group=True)
            with self._lock:
                left = list(self._channels)
            for channel in left:
                channel.close()
        except Exception as exc:  # teardown goes on whatever happens
            log.debug("[host=%s] closing the ssh master: %s", self.host, exc)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self._release is not None:
                self._release()
            for hop in reversed(self._hops):
                hop.close()


class _RemoteForward:
    """A remote forward of the master's (see ``RemoteForward`` in ``_seam.py``)."""

    def __init__(self, conn: OpenSshConnection, port: int, spec: str) -> None:
        self.conn = conn
        self._port = port
        self.spec = spec
        self.closed = False

    @property
    def port(self) -> int:
        return self._port

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.conn.is_active():
                self.conn._mux(["-O", "cancel", "-R", self.spec], self.conn._close_timeout)


class _UnixForward:
    """A forward of the master's (see ``Forward`` in ``_seam.py``)."""

    def __init__(self, conn: OpenSshConnection, path: str) -> None:
        self.conn = conn
        self.path = path
        self.closed = False

    @property
    def target(self) -> str:
        return f"unix:{self.path}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.conn.cancel_forward(self.path)


def _socket_dir() -> str:
    """Where the private directories go: the temp dir, unless its path is too long for a socket name."""
    base = tempfile.gettempdir()
    return base if len(base) + len(f"/{_PREFIX}4194304-xxxxxxxx") <= _MAX_SOCKET_DIR else "/tmp"


def sweep_stale(base: str) -> list[str]:
    """Remove master directories left by controllers that died without close() (SIGKILL); returns what went.
    Their masters died with them (parent-death signal) and removed their control sockets."""
    return sweep_dead_owners(base, _PREFIX, busy_marker="ctl")


@atexit.register
def _abandon_all() -> None:
    """Connections nobody closed: stop their masters without waiting and remove their directories."""
    for conn in list(_live):
        conn._abandon()


class _NotReady(Exception):
    pass


def _wait_ready(proc: subprocess.Popen[bytes], ctl: str, deadline: float) -> None:
    """The control socket is link()ed into place after listen(), so its existence means the master serves."""
    pause = _READY_POLL[0]
    while not os.path.exists(ctl):
        if proc.poll() is not None or time.monotonic() >= deadline:
            raise _NotReady()
        time.sleep(pause)
        pause = min(pause * 1.5, _READY_POLL[1])


def _start_master(host: ResolvedHost, options: SshOptions, via: Optional[OpenSshConnection],
                  hops: list[OpenSshConnection],
                  release: Optional[Callable[[], None]] = None) -> OpenSshConnection:  # fmt: skip
    """Start the master for ``host`` and wait until it accepts clients, within connect + auth timeouts."""
    started = time.monotonic()
    if host.host_key_policy == "accept-new" and host.known_hosts_write:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(host.known_hosts_write) or ".", mode=0o700, exist_ok=True)
    global _swept
    base = _socket_dir()
    if not _swept:
        _swept = True
        sweep_stale(base)
    workdir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)
    ctl = os.path.join(workdir, "ctl")
    log_path = os.path.join(workdir, "master.log")
    argv = master_argv(host, ctl, jump_ctl=via.control_path if via else None, jump_host=via.address if via else "")
    try:
        with open(log_path, "wb") as log_file:
            proc = _spawner.popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True
            )
    except OSError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ConnectError(host.name, f"cannot run {SSH}: {exc}", "config") from exc
    budget = host.connect_timeout + host.auth_timeout
    try:
        _wait_ready(proc, ctl, started + budget)
    except BaseException as exc:
        timed_out = proc.poll() is None
        _reap(proc, 0.0, group=True)
        with open(log_path, "rb") as f:
            said = f.read().decode("utf-8", "replace")
        shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(exc, _NotReady):
            raise translate_failure(
                host, said, timed_out=timed_out, waited=budget, jump=via.host if via else None
            ) from None
        raise
    conn = OpenSshConnection(host, proc, workdir, hops, options.timeouts.close, release)
    _live.add(conn)
    conn.connect_seconds = time.monotonic() - started
    said = conn.master_log()
    if "Permanently added" in said:
        log.warning("[host=%s] %s (%s)", host.name, said, host.known_hosts_write)
    return conn


def _close(conn: OpenSshConnection) -> None:
    conn.close()


# Every master through the same hop chain shares that chain's masters (see _pool.py).
JUMPS: JumpPool[OpenSshConnection] = JumpPool(lambda c: c.is_active(), _close)


def _connect_chain(chain: tuple[ResolvedHost, ...], options: SshOptions) -> OpenSshConnection:
    """Masters for ``chain``, hop by hop; the last one owns (and closes) the ones before it."""
    hops: list[OpenSshConnection] = []
    via: Optional[OpenSshConnection] = None
    try:
        for hop in chain:
            via = _start_master(hop, options, via, list(hops))
            hops = [via]  # each hop owns the ones before it
    except BaseException:
        for conn in reversed(hops):
            conn.close()
        raise
    assert via is not None
    return via


def connect_openssh(spec: HostSpec, options: SshOptions) -> OpenSshConnection:
    """Open an authenticated connection to one host with the OpenSSH client (a ControlMaster).

    Raises the same errors as ``connect()``: ConnectTimeout, AuthenticationError, HostKeyError, or
    ConnectError naming the phase (tcp, banner, kex, auth, proxy, config), with ssh's own words in the message.
    """
    try:
        host = resolve(spec, options)
    except UsageError as exc:
        raise ConnectError(spec.name, str(exc), "config") from exc
    return connect_resolved_openssh(host, options)


def connect_resolved_openssh(host: ResolvedHost, options: SshOptions) -> OpenSshConnection:
    """``connect_openssh`` for a host already resolved."""
    if not host.proxy_jump:
        return _start_master(host, options, None, [])
    chain = host.proxy_jump
    key = ("openssh", *(hop.connection_key() for hop in chain))
    try:
        via, release = JUMPS.acquire(key, lambda: _connect_chain(chain, options))
    except ConnectError as exc:
        raise type(exc)(host.name, f"via jump host {exc.host}: {exc.message}", "proxy") from exc
    try:
        return _start_master(host, options, via, [], release)
    except BaseException:
        release()
        raise
