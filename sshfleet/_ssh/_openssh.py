"""The OpenSSH client as an optional SSH transport: one ``ssh -M`` master per host, the rest multiplexed over it.

Why: with paramiko, the controller's Python encrypts every packet and pumps every forwarded byte. With a
ControlMaster, ``forward_unix()`` has the master (C) serve a local Unix socket, so gRPC connects to it and no
Python touches the bytes; an ``exec`` is an ``ssh -S`` mux client that hands its pipes to the master, which then
reads and writes them itself.

Settings: the master runs with ``-F none`` and gets every setting ``resolve()`` computed as ``-o`` options, so
both transports read ssh_config the same way (through ``resolve()``) and nothing else from it (LocalForward,
ForwardAgent, ControlMaster, Match exec, ...) leaks into sshfleet's connections. Each ProxyJump hop is a master
of its own; the next one connects through ``ProxyCommand ssh -S <hop ctl> -W %h:%p``.

Lifetime: masters are started from one long-lived thread under ``setpriv --pdeathsig TERM`` (where setpriv
exists), so a controller killed with SIGKILL takes its masters with it, as it would its paramiko sockets.
Everything the transport creates lives in a 0700 temporary directory that ``close()`` removes.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import logging
import math
import os
import queue
import re
import select
import shutil
import signal
import socket
import stat
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
from sshfleet.errors import (
    AuthenticationError,
    ChannelError,
    ConnectError,
    ConnectTimeout,
    HostKeyError,
    UsageError,
)

log = logging.getLogger("sshfleet.ssh")

SSH = "ssh"
# Same preference as the paramiko path: AES-GCM is the fastest cipher with AES-NI; the rest stays in ssh's order.
CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
# curve25519 first, as paramiko negotiates: OpenSSH 9's default sntrup761x25519 costs ~10x the CPU per connect
# (~100 ms per host on a busy controller), which a fleet connect pays hundreds of times. It stays offered.
KEX = "^curve25519-sha256,curve25519-sha256@libssh.org"
# A Unix socket path holds 107 bytes; ssh binds the control socket under a name 17 bytes longer first.
_MAX_SOCKET_DIR = 107 - 17 - len("/fwd-000000.sock") - 1
_READY_POLL = (0.002, 0.02)  # first and largest pause between looks at the control socket
_PREFIX = "sshfleet-ssh-"  # then the owner's pid, so directories of dead controllers can be swept


# --- argv (pure) -----------------------------------------------------------------------------------------


def _value(text: str) -> str:
    """An ssh_config value: ssh splits on whitespace unless quoted."""
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def mux_argv(ctl: str, ssh: str = SSH, log_level: str = "ERROR") -> list[str]:
    """Options shared by every client of a master; a dead master then fails fast instead of dialling out.

    LogLevel ERROR keeps "Shared connection to ... closed." out of a pty session's output.
    """
    return [
        ssh, "-F", "none", "-S", ctl,
        "-o", "ControlMaster=no", "-o", "ProxyCommand=false", "-o", "BatchMode=yes", "-o", f"LogLevel={log_level}",
    ]  # fmt: skip


def proxy_command(jump_ctl: str, jump_host: str, ssh: str = SSH) -> str:
    """ProxyCommand through the master at ``jump_ctl``; ``%h:%p`` is the next hop's HostName and Port."""
    words = [*mux_argv(jump_ctl.replace("%", "%%"), ssh), "-W", "%h:%p", "--", jump_host]
    return " ".join(_shell_word(w) for w in words)


def _shell_word(word: str) -> str:
    if word and re.fullmatch(r"[\w@%+=:,./^-]+", word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def master_argv(host: ResolvedHost, ctl: str, *, jump_ctl: Optional[str] = None, jump_host: str = "",
                ssh: str = SSH) -> list[str]:  # fmt: skip
    """The argv of the master for ``host``: every setting comes from ``resolve()``, nothing from ssh_config."""
    options = {
        "ControlPersist": "no",
        "BatchMode": "yes",
        "ExitOnForwardFailure": "yes",
        "ServerAliveInterval": str(math.ceil(host.keepalive)) if host.keepalive > 0 else "0",
        "ServerAliveCountMax": str(host.keepalive_count_max),
        "ConnectTimeout": str(_seconds(host.connect_timeout)),
        "HostName": host.hostname,
        "Port": str(host.port),
        "User": host.user,
        "IdentitiesOnly": "yes" if host.identities_only else "no",
        "StrictHostKeyChecking": "accept-new" if host.host_key_policy == "accept-new" else "yes",
        "UserKnownHostsFile": _known_hosts_value(host),
        "GlobalKnownHostsFile": os.devnull,
        # sshfleet never rewrites known_hosts behind the user's back, and writes names the way paramiko does.
        "UpdateHostKeys": "no",
        "HashKnownHosts": "no",
        "CheckHostIP": "no",
        "PreferredAuthentications": "publickey",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "Ciphers": CIPHERS,
        "KexAlgorithms": KEX,
        "ProxyJump": "none",
        "ProxyCommand": proxy_command(jump_ctl, jump_host, ssh) if jump_ctl else "none",
    }
    if host.host_key_alias:
        options["HostKeyAlias"] = host.host_key_alias
    if not host.allow_agent:
        options["IdentityAgent"] = "none"
    argv = [ssh, "-F", "none", "-M", "-S", ctl, "-N", "-T"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    # Without this OpenSSH would fall back to ~/.ssh/id_*; resolve() already decided which keys to offer.
    for path in host.identity_files or ("none",):
        argv += ["-o", f"IdentityFile={_value(path)}"]
    return [*argv, "--", host.hostname]


def _known_hosts_value(host: ResolvedHost) -> str:
    files = list(host.known_hosts_files)
    if host.known_hosts_write and host.known_hosts_write in files:
        # accept-new appends to the first file, as resolve() chose.
        files.remove(host.known_hosts_write)
        files.insert(0, host.known_hosts_write)
    return " ".join(_value(f) for f in files) or os.devnull


def forward_spec(path: str, dest_host: str, dest_port: int) -> str:
    """``-L`` argument forwarding the local socket ``path`` to ``dest_host:dest_port``."""
    where = f"[{dest_host}]" if ":" in dest_host else dest_host
    return f"{path}:{where}:{dest_port}"


def exec_argv(ctl: str, hostname: str, command: str, *, pty: bool, width: int, height: int,
              ssh: str = SSH) -> list[str]:  # fmt: skip
    """A session over the master; with a pty, ``stty`` sets its size (the mux client has no terminal to copy)."""
    if pty:
        command = f"stty cols {int(width)} rows {int(height)} 2>/dev/null; {command}"
    tty = ["-tt", "-o", "EscapeChar=none"] if pty else ["-T"]
    return [*mux_argv(ctl, ssh), *tty, "--", hostname, command]


# --- error translation (pure) ----------------------------------------------------------------------------

_NOISE = re.compile(r"^(Please contact your system administrator\.?|Add correct host key in .*)$")


def ssh_message(text: str, limit: int = 1200) -> str:
    """ssh's stderr in one line: banner borders and boilerplate dropped, the rest joined with ' / '."""
    kept = []
    for raw in text.replace("\r", "").splitlines():
        line = raw.strip().strip("@").strip()
        line = line[len("ssh: ") :] if line.startswith("ssh: ") else line
        if line and not _NOISE.match(line):
            kept.append(line)
    joined = " / ".join(dict.fromkeys(kept))
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def translate_failure(host: ResolvedHost, stderr: str, *, timed_out: bool, waited: float,
                      jump: Optional[str] = None) -> ConnectError:  # fmt: skip
    """The sshfleet error for a master that did not come up, from what ssh printed (kept in the message)."""
    said = ssh_message(stderr)
    where = f"{host.hostname}:{host.port}"
    quoted = f" (ssh: {said})" if said else ""
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            summary = f"HOST KEY CHANGED for {where}; possible man-in-the-middle"
        else:
            summary = f"no host key known for {where} under strict checking (use host_key_policy='accept-new')"
        return HostKeyError(host.name, summary + quoted)
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        keys = ", ".join(host.identity_files) or "no key to offer"
        return AuthenticationError(host.name, f"permission denied for user {host.user!r}; keys: {keys}{quoted}")
    if jump and ("Stdio forwarding request failed" in stderr or "open failed" in stderr):
        return ConnectError(host.name, f"jump host {jump} cannot reach {where}{quoted}", "proxy")
    if "during banner exchange" in stderr:
        cls = ConnectTimeout if "timed out" in stderr else ConnectError
        return cls(host.name, f"no SSH banner from {where}{quoted}", "banner")
    if re.search(r"connect to host .* port \d+: Connection timed out", stderr):
        return ConnectTimeout(
            host.name, f"TCP connect to {where} timed out after {host.connect_timeout:g}s{quoted}", "tcp"
        )
    if re.search(r"connect to host .* port \d+:|Could not resolve hostname", stderr):
        return ConnectError(host.name, f"TCP connect to {where} failed{quoted}", "tcp")
    if "kex_exchange_identification" in stderr or "Connection closed by" in stderr:
        return ConnectError(host.name, f"SSH negotiation with {where} failed{quoted}", "banner")
    if "Unable to negotiate" in stderr:
        return ConnectError(host.name, f"SSH negotiation with {where} failed{quoted}", "kex")
    if "command-line" in stderr or "Bad configuration option" in stderr or "ControlPath" in stderr:
        return ConnectError(host.name, f"ssh rejected its settings{quoted}", "config")
    if timed_out:
        if jump and not said:
            return ConnectTimeout(host.name, f"no answer from {where} through jump host {jump} in {waited:g}s", "proxy")
        return ConnectTimeout(
            host.name, f"key exchange and authentication with {where} took longer than {waited:g}s{quoted}", "auth"
        )
    return ConnectError(host.name, f"ssh to {where} failed{quoted}", "auth" if said else "tcp")


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


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run a short mux command (``-O check/forward/exit``); (255, reason) when it cannot finish in time."""
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return 255, f"no answer from the ssh master within {timeout:g}s"
    except OSError as exc:
        return 255, str(exc)
    return done.returncode, done.stderr.decode("utf-8", "replace").strip()


# --- channels --------------------------------------------------------------------------------------------


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


# --- connection ------------------------------------------------------------------------------------------


class OpenSshConnection:
    """One host reached through an OpenSSH ControlMaster; the same surface as ``SshConnection``, a context manager.

    ``exec()`` and ``open_forward()`` return ``PipeChannel`` objects; ``forward_unix()`` returns a socket path
    the master itself serves. ``close()`` is idempotent, never raises, is bounded by about ``Timeouts.close``
    seconds, stops the master and every client still running over it, removes the temporary directory, and
    closes the jump hosts this connection went through.
    """

    def __init__(self, resolved: ResolvedHost, proc: subprocess.Popen[bytes], workdir: str,
                 hops: list[OpenSshConnection], close_timeout: float) -> None:  # fmt: skip
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
            for hop in reversed(self._hops):
                hop.close()


def _socket_dir() -> str:
    """Where the private directories go: the temp dir, unless its path is too long for a socket name."""
    base = tempfile.gettempdir()
    return base if len(base) + len(f"/{_PREFIX}4194304-xxxxxxxx") <= _MAX_SOCKET_DIR else "/tmp"


def sweep_stale(base: str) -> list[str]:
    """Remove directories left by controllers that died without close() (SIGKILL); returns what went.

    Their masters died with them (parent-death signal) and removed their control sockets; a directory counts
    as stale only when it is ours (uid), has no control socket, and the pid in its name is gone.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(base), f"{_PREFIX}*-*")):
        pid = os.path.basename(path)[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or os.path.exists(os.path.join(path, "ctl")):
            continue
        try:
            info = os.lstat(path)
            if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
                continue
            os.kill(int(pid), 0)
            continue  # its owner still runs
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed


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
                  hops: list[OpenSshConnection]) -> OpenSshConnection:  # fmt: skip
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
    conn = OpenSshConnection(host, proc, workdir, hops, options.timeouts.close)
    _live.add(conn)
    conn.connect_seconds = time.monotonic() - started
    said = conn.master_log()
    if "Permanently added" in said:
        log.warning("[host=%s] %s (%s)", host.name, said, host.known_hosts_write)
    return conn


def connect_openssh(spec: HostSpec, options: SshOptions) -> OpenSshConnection:
    """Open an authenticated connection to one host with the OpenSSH client (a ControlMaster).

    Raises the same errors as ``connect()``: ConnectTimeout, AuthenticationError, HostKeyError, or
    ConnectError naming the phase (tcp, banner, kex, auth, proxy, config), with ssh's own words in the message.
    """
    try:
        host = resolve(spec, options)
    except UsageError as exc:
        raise ConnectError(spec.name, str(exc), "config") from exc
    hops: list[OpenSshConnection] = []
    try:
        via: Optional[OpenSshConnection] = None
        for hop in host.proxy_jump:
            try:
                via = _start_master(hop, options, via, list(hops))
            except ConnectError as exc:
                raise type(exc)(host.name, f"via jump host {exc.host}: {exc.message}", "proxy") from exc
            hops = [via]  # each hop owns the ones before it
        return _start_master(host, options, via, hops)
    except BaseException:
        for conn in reversed(hops):
            conn.close()
        raise
