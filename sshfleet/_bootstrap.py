"""Start a servicer on one host over one SSH exec channel (the protocol is described in remote/bootstrap.py).

Round trips of a warm start: the exec (channel open + exec request), the config going out with the bootstrap
code in the same write, and the READY line coming back. A cold start adds one NEED line and the bundle bytes.
``BootstrapStats`` counts them so the benchmarks can show them.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from sshfleet import _payload
from sshfleet._options import Become
from sshfleet._ssh import Channel, Connection
from sshfleet.errors import (
    BootstrapError,
    ChannelError,
    PayloadError,
    RemotePythonError,
)
from sshfleet.remote.bootstrap import MIN_PYTHON

log = logging.getLogger(__name__)

# The exec'd command: a tiny loader reads the real bootstrap code from stdin, so nothing secret is in argv and
# the command line stays short. The trailing word marks the process as sshfleet's in `ps` on the host.
LOADER = (
    "import sys;b=getattr(sys.stdin,'buffer',sys.stdin);"  # Python 2 too, so that it can say it is too old
    "exec(compile(b.read(int(b.readline())),'sshfleet-bootstrap','exec'))"
)
MARKER = "sshfleet-servicer"

_ERROR_KINDS: dict[str, type[BootstrapError]] = {
    "no_python": RemotePythonError,
    "payload_failed": PayloadError,
}


@dataclass
class BootstrapStats:
    """What one start cost: round trips on the wire and bytes shipped."""

    round_trips: int = 0
    bytes_sent: int = 0
    shipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ServicerProcess:
    """A servicer running on a host: its bootstrap channel is its lifeline (see remote/runtime.py)."""

    host: str
    channel: Channel
    port: int
    pid: int
    session_dir: str
    log_path: str
    facts: dict[str, Any]
    stats: BootstrapStats
    stderr_tail: bytearray = field(default_factory=bytearray)

    def remember_stderr(self, data: bytes) -> None:
        self.stderr_tail += data
        del self.stderr_tail[:-65536]


class BecomeError(BootstrapError):
    """sudo would not start the servicer as the become user: no sudo rule, a password needed or refused."""

    kind = "become_failed"


# What the become wrapper prints once sudo has let it through: until then, stdin belongs to sudo (its password),
# and an exit is sudo's refusal, not the interpreter's. Before the bootstrap's own lines, never mistaken for them.
BECOME_SUCCESS = "SSHFLEET BECOME {}"
# sudo -S writes this (not the translated "[sudo] password for ...") on stderr when it wants the password:
# a fixed text the controller can wait for, answered only when it appears, so a password is never sent to a
# sudo that did not ask (it would reach the bootstrap's stdin instead).
BECOME_PROMPT = "[sshfleet-become] password:"


def become_command(command: str, become: Become) -> str:
    """``command`` (one of the ``exec ...`` lines below) run through sudo as ``become.user``.

    ``-H`` sets HOME to the become user's, so the payload cache and session directories are that user's own
    (``~root/.cache/sshfleet`` when becoming root), created and checked 0700 as theirs exactly as for a login
    user. ``-n`` without a password: sudo fails at once instead of prompting. ``--`` and ``/bin/sh -c`` keep
    one code path for a named interpreter and for discovery, which then search the become user's PATH (sudo's
    secure_path). No pty is asked for (sudo's ``use_pty`` applies only when sudo runs in a terminal; an exec
    channel has none), so the bootstrap's stdin and stdout are the channel's, and its EOF stops the servicer
    as without become; sudo waits for its child and exits with it.
    """
    auth = ["-S", "-p", BECOME_PROMPT] if become.password is not None else ["-n"]
    inner = f"echo {shlex.quote(BECOME_SUCCESS)}; {command}"
    argv = ["sudo", "-H", *auth, "-u", become.user, "--", "/bin/sh", "-c", inner]
    return "exec " + " ".join(shlex.quote(word) for word in argv)


def remote_command(python: str) -> str:
    """`exec` so the servicer replaces the login shell and leads its own process group (sshd setsid()s it)."""
    return f"exec {shlex.quote(python)} -c {shlex.quote(LOADER)} {MARKER}"


# Where interpreter discovery looks, in order, as Ansible does when `python3` on the PATH is missing or unusable:
# the distribution's python3, versioned python3.X on the PATH (newest first), RHEL 8's platform-python.
DEFAULT_PYTHON = "python3"
DISCOVERY_CANDIDATES = (
    "/usr/bin/python3",
    *(f"python3.{minor}" for minor in range(14, MIN_PYTHON[1] - 1, -1)),
    "/usr/libexec/platform-python",
)


def discovery_command() -> str:
    """A POSIX sh loop that execs the bootstrap with the first candidate that runs and is new enough.

    Each candidate costs one short interpreter start, paid only after the default `python3` failed. The loader
    travels as sh's $0, so it is quoted once; sh itself is exec'd away.
    """
    check = f"import sys; sys.exit(sys.version_info < {tuple(MIN_PYTHON)!r})"
    candidates = " ".join(shlex.quote(c) for c in DISCOVERY_CANDIDATES)
    script = (
        f"for p in {candidates}; do "
        'command -v "$p" >/dev/null 2>&1 || continue; '
        f'"$p" -c {shlex.quote(check)} </dev/null >/dev/null 2>&1 || continue; '
        f'exec "$p" -c "$0" {MARKER}; '
        "done; "
        f"echo 'sshfleet: none of {' '.join(DISCOVERY_CANDIDATES)} is a Python >= "
        f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}' >&2; exit 127"
    )
    return f"exec /bin/sh -c {shlex.quote(script)} {shlex.quote(LOADER)}"


# Bundles go out in pieces this size, each bounded by what is left of the deadline: one ``sendall`` of a whole
# bundle on a slow link waits per send, so a 256 kbit/s link used to overrun the bootstrap deadline twofold.
SEND_CHUNK = 64 << 10


def send_within(chan: Channel, data: bytes, deadline: float) -> None:
    """Send ``data`` completely by ``deadline`` (``time.monotonic()``), or raise socket.timeout.

    ``settimeout`` bounds each send of a channel, not a transfer; so each chunk gets what is left of the deadline,
    and a host that takes in bytes too slowly fails at the deadline, however slowly it trickles.
    """
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        chan.settimeout(remaining)
        sent = chan.send(bytes(view[:SEND_CHUNK]))
        if sent <= 0:
            raise EOFError("the channel closed while sending")
        view = view[sent:]


def close_quietly(chan: Channel) -> None:
    """Close a channel on an error path: a channel whose connection just died may raise again on close
    (paramiko's close sends a message on the dead transport), which must not hide the first error."""
    try:
        chan.close()
    except Exception as exc:  # the channel is gone either way; the first error is the one to report
        log.debug("closing a broken channel raised %r", exc)


def parse_line(line: bytes) -> Optional[tuple[str, dict[str, Any]]]:
    """One stdout line of the bootstrap as ``(kind, payload)``, or None for anything that is not a well-formed
    ``SSHFLEET <KIND> <json object>`` line (a heartbeat, noise from a login script, a garbled line)."""
    if not line.startswith(b"SSHFLEET "):
        return None
    kind, _, body = line[len(b"SSHFLEET ") :].partition(b" ")
    try:
        payload = json.loads(body)
        name = kind.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or not name.isalpha():
        return None
    return name, payload


class _Unusable(Exception):
    """The interpreter could not run the bootstrap at all, or is too old: another one may do."""

    def __init__(self, error: BootstrapError) -> None:
        super().__init__(error.message)
        self.error = error


PROMPTED = b"\0prompted"  # readline's answer when sudo asked for the password (never a real line: it has no \n)


class _LineReader:
    """Reads stdout lines (and keeps stderr) from a channel, never past a deadline."""

    def __init__(self, host: str, chan: Channel, deadline: float) -> None:
        self.host = host
        self.chan = chan
        self.deadline = deadline
        self.buf = b""
        self.stderr = bytearray()

    def _drain_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            self.stderr += self.chan.recv_stderr(65536)

    def readline(self, prompt: Optional[bytes] = None, answered: int = 0) -> Optional[bytes]:
        """The next stdout line, None at EOF; with ``prompt``, PROMPTED as soon as stderr holds it more than
        ``answered`` times (stderr is looked at every 50 ms then, not every 500 ms)."""
        while b"\n" not in self.buf:
            if prompt is not None and self.stderr.count(prompt) > answered:
                return PROMPTED
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            self.chan.settimeout(min(remaining, 0.05 if prompt is not None else 0.5))
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                self._drain_stderr()
                continue
            self._drain_stderr()
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def tail(self) -> str:
        self._drain_stderr()
        return bytes(self.stderr[-4000:]).decode("utf-8", "replace")


def start_servicer(
    conn: Connection,
    *,
    python: str,
    agent: _payload.Bundle,
    deps: Mapping[str, str],
    config: Mapping[str, Any],
    timeout: float,
    become: Optional[Become] = None,
) -> ServicerProcess:
    """Probe, ship what the host lacks, start the servicer; return once it listens.

    ``deps`` maps host tags to the deps bundles the controller already has (``_payload.known_deps()``, read once
    per fleet start): a host holding the one for its tag starts without asking. When ``python`` is the default
    ``python3`` and it is missing, broken or too old, the usual other places are tried (``discovery_command``);
    an interpreter named otherwise is used as given. ``facts["interpreter"]`` says which one runs the servicer.

    With ``become``, each attempt runs through sudo (``become_command``) and the servicer runs as that user;
    sudo's refusal raises BecomeError (kind "become_failed") with sudo's words, and no other interpreter is
    tried then, since none would fare better.

    Raises BootstrapError (or RemotePythonError / PayloadError / ChannelError / BecomeError) naming the host,
    with the remote output in ``log_tail``; the channel is closed on every failure. Both attempts share the one
    deadline.
    """
    started = time.monotonic()
    stats = BootstrapStats()
    attempt = _Attempt(conn, agent, deps, config, started, started + timeout, stats, become)
    try:
        process = attempt.run(remote_command(python), python)
    except _Unusable as unusable:
        if python != DEFAULT_PYTHON:
            raise unusable.error from None
        log.warning("[host=%s] %s; trying the other usual interpreters", conn.host, unusable.error.message)
        try:
            process = attempt.run(discovery_command(), "discovery")
        except _Unusable as none:
            raise RemotePythonError(
                conn.host,
                f"{unusable.error.message}; and none of {', '.join(DISCOVERY_CANDIDATES)} is "
                f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (name an interpreter with the inventory var "
                "ansible_python_interpreter or python=)",
                log_tail=none.error.log_tail,
            ) from None
        process.facts["discovered"] = True
    process.facts.setdefault("discovered", False)
    process.facts["interpreter"] = process.facts.get("executable")
    return process


@dataclass
class _Attempt:
    """One or two execs of the bootstrap on a host (the second with interpreter discovery)."""

    conn: Connection
    agent: _payload.Bundle
    deps: Mapping[str, str]
    config: Mapping[str, Any]
    started: float
    deadline: float
    stats: BootstrapStats
    become: Optional[Become] = None

    def run(self, command: str, python: str) -> ServicerProcess:
        """Raises _Unusable when the interpreter never ran the bootstrap or is too old."""
        conn, stats, become = self.conn, self.stats, self.become
        host = conn.host
        timeout = max(self.deadline - time.monotonic(), 0.001)
        chan = conn.exec(become_command(command, become) if become else command, timeout=timeout)
        stats.round_trips += 2  # channel open, exec request
        reader = _LineReader(host, chan, self.deadline)
        spoke = False
        became = become is None
        try:
            if become is not None and become.password is not None:
                # sudo reads its password from the stdin the bootstrap reads next: nothing more may be sent
                # until sudo has asked for it and taken it (or let us through without asking).
                _authenticate(host, chan, reader, become)
                became = True
                stats.round_trips += 1
            code = _payload.bootstrap_source()
            full_config = {**self.config, "agent": self.agent.hash, "deps": dict(self.deps)}
            head = str(len(code)).encode() + b"\n" + code + json.dumps(full_config).encode() + b"\n"
            try:
                send_within(chan, head, self.deadline)
            except OSError:
                # A command that ends at once (no such interpreter, sudo refusing) may close the channel before
                # the bootstrap is sent: then its exit status and stderr explain it (read below, as at any EOF).
                if not _ended_at_once(chan):
                    raise
            stats.bytes_sent += len(head)
            while True:
                line = reader.readline()
                if line is None:
                    if not became:
                        raise _become_refused(host, chan, reader, become)
                    error = _exited(conn, chan, reader, python, spoke)
                    raise error if spoke else _Unusable(error)
                if line == BECOME_SUCCESS.encode():
                    became = True
                    continue
                parsed = parse_line(line)
                if parsed is None:
                    continue  # e.g. a heartbeat or noise from a login script
                spoke = True
                kind, payload = parsed
                stats.round_trips += 1
                try:
                    if kind == "READY":
                        stats.seconds = time.monotonic() - self.started
                        return _servicer_process(host, chan, payload, stats, reader)
                    if kind == "ERROR":
                        cls = _ERROR_KINDS.get(str(payload.get("kind", "")), BootstrapError)
                        tail = str(payload.get("traceback") or reader.tail())
                        failure = cls(host, str(payload.get("message", "bootstrap failed")), log_tail=tail)
                        raise _Unusable(failure) if payload.get("reason") == "too_old" else failure
                    if kind == "NEED":
                        _ship(conn, chan, payload, self.agent, stats, self.deadline)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    # A host that is not ours, or a broken bootstrap: this host's failure, not a crash of ours.
                    raise BootstrapError(
                        host, f"the host's bootstrap sent a malformed {kind} line: {exc!r}", log_tail=reader.tail()
                    ) from exc
        except socket.timeout:
            close_quietly(chan)
            shipping = f" (shipping {', '.join(stats.shipped)})" if stats.shipped else ""
            raise BootstrapError(
                host,
                f"the servicer did not start within {self.deadline - self.started:g}s{shipping}",
                log_tail=_tail_quietly(reader),
            ) from None
        except (OSError, EOFError, ConnectionError) as exc:
            close_quietly(chan)
            raise ChannelError(host, f"the connection broke during bootstrap: {_describe(exc)}") from exc
        except (BootstrapError, _Unusable):
            close_quietly(chan)
            raise


def _authenticate(host: str, chan: Channel, reader: _LineReader, become: Become) -> None:
    """Answer sudo's password prompt once; return when the wrapper says sudo let it through.

    sudo may not ask at all (NOPASSWD, a cached credential): then the success line comes first and no password
    is sent. A second prompt means the password was refused: BecomeError at once, with no second try (each
    try costs the host a failed-login record, and sudo would wait on the prompt until the deadline).
    """
    assert become.password is not None
    prompt = BECOME_PROMPT.encode()
    answered = 0
    while True:
        line = reader.readline(prompt, answered)
        if line is None:
            raise _become_refused(host, chan, reader, become)
        if line == PROMPTED:
            if answered:
                close_quietly(chan)
                raise BecomeError(
                    host,
                    f"sudo refused the become password for becoming {become.user!r} (wrong password); "
                    "give the login user's sudo password with become_password=",
                    log_tail=_without_prompts(_tail_quietly(reader)),
                )
            send_within(chan, become.password.encode() + b"\n", reader.deadline)
            answered += 1
            continue
        if line == BECOME_SUCCESS.encode():
            return
        # anything else before the success line is a login script's noise


def _become_refused(host: str, chan: Channel, reader: _LineReader, become: Optional[Become]) -> BecomeError:
    """sudo ended before the wrapper ran: its own stderr says why; the advice depends on the why."""
    _exited_status(chan)
    tail = _without_prompts(_tail_quietly(reader))
    close_quietly(chan)
    user = become.user if become else "root"
    said = " ".join(line.strip() for line in tail.strip().splitlines()[-2:]) or "sudo exited without a word"
    if "password is required" in tail:
        advice = (
            f"sudo wants a password to run commands as {user!r}: give it with become_password= "
            "(or ansible_become_password in the inventory), or allow the login user NOPASSWD in sudoers"
        )
    elif "incorrect password" in tail or "Sorry, try again" in tail:
        advice = f"sudo refused the become password for becoming {user!r} (wrong password)"
    elif "not found" in tail and "sudo" in tail:
        advice = "sudo is not installed on the host (become needs it)"
    else:
        advice = f"sudo would not run the servicer as {user!r}"
    return BecomeError(host, f"{advice}: {said}", log_tail=tail)


def _without_prompts(text: str) -> str:
    return text.replace(BECOME_PROMPT, "")


def _exited_status(chan: Channel) -> int:
    settle = time.monotonic() + 2.0
    while not chan.exit_status_ready() and time.monotonic() < settle:
        time.sleep(0.01)
    return chan.recv_exit_status() if chan.exit_status_ready() else -1


def _servicer_process(
    host: str, chan: Channel, ready: Mapping[str, Any], stats: BootstrapStats, reader: _LineReader
) -> ServicerProcess:
    """The READY line's servicer; raises KeyError/TypeError/ValueError when the line lacks what it must say."""
    port, pid = ready["port"], ready["pid"]
    if not (isinstance(port, int) and isinstance(pid, int) and 0 < port < 65536):
        raise ValueError(f"port {port!r}, pid {pid!r}")
    facts = ready["facts"]
    if not isinstance(facts, dict):
        raise TypeError(f"facts {facts!r}")
    return ServicerProcess(
        host=host,
        channel=chan,
        port=port,
        pid=pid,
        session_dir=str(ready["session_dir"]),
        log_path=str(ready["log"]),
        facts=facts,
        stats=stats,
        stderr_tail=bytearray(reader.stderr),
    )


def _ship(
    conn: Connection,
    chan: Channel,
    need: Mapping[str, Any],
    agent: _payload.Bundle,
    stats: BootstrapStats,
    deadline: float,
) -> None:
    """Send each bundle the host said it lacks; the whole transfer ends by ``deadline`` or raises socket.timeout."""
    facts, missing = need["facts"], need["missing"]
    if not (isinstance(missing, list) and set(missing) <= {"agent", "deps"} and isinstance(facts, dict)):
        raise ValueError(f"missing {missing!r}")
    for name in missing:
        if name == "agent":
            bundle = agent
        else:
            try:
                bundle = _payload.deps_bundle(facts)
            except _payload.DepsUnavailable as exc:
                message = f"cannot serve Python {facts['python']} ({facts['executable']}): {exc}"
                send_within(chan, json.dumps({"error": message, "kind": "no_python"}).encode() + b"\n", deadline)
                raise RemotePythonError(conn.host, message) from exc
        log.info("[host=%s] shipping %s bundle %s (%d bytes)", conn.host, name, bundle.hash[:12], bundle.size)
        stats.shipped.append(name)
        send_within(chan, bundle.header(), deadline)
        send_within(chan, bundle.data, deadline)
        stats.bytes_sent += bundle.size


def _exited(conn: Connection, chan: Channel, reader: _LineReader, python: str, spoke: bool) -> BootstrapError:
    """The channel closed before READY: explain why, most often a missing or unusable interpreter."""
    settle = time.monotonic() + 2.0
    while not chan.exit_status_ready() and time.monotonic() < settle:
        time.sleep(0.01)
    status = chan.recv_exit_status() if chan.exit_status_ready() else -1
    tail = _tail_quietly(reader)
    close_quietly(chan)
    if python == "discovery":
        return RemotePythonError(conn.host, tail.strip() or f"interpreter discovery failed (status {status})", tail)
    if status == 127 or "not found" in tail or "No such file" in tail:
        return RemotePythonError(
            conn.host,
            f"no usable Python: {python!r} was not found on the host (exit status {status}); install python3 or "
            "name an interpreter with the inventory var ansible_python_interpreter",
            log_tail=tail,
        )
    if not spoke:
        last = (tail.strip().splitlines() or ["no output"])[-1]
        return RemotePythonError(
            conn.host,
            f"no usable Python: {python!r} could not run sshfleet's bootstrap (exit status {status}: {last}); "
            f"sshfleet needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} on the host (name one with the inventory "
            "var ansible_python_interpreter)",
            log_tail=tail,
        )
    return BootstrapError(conn.host, f"the bootstrap exited with status {status} before the servicer started", tail)


def _ended_at_once(chan: Channel) -> bool:
    """Whether the remote command has ended (its exit status arrives within a moment)."""
    settle = time.monotonic() + 2.0
    while not chan.exit_status_ready():
        if time.monotonic() >= settle:
            return False
        time.sleep(0.01)
    return True


def _tail_quietly(reader: _LineReader) -> str:
    """The stderr seen so far; reading more from a channel whose connection died must not raise again."""
    try:
        return reader.tail()
    except Exception:  # the connection died: what was read before is all there is
        return bytes(reader.stderr[-4000:]).decode("utf-8", "replace")


def _describe(exc: BaseException) -> str:
    """An error's text for a message: paramiko's EOFError() says nothing, so it is named for what it means."""
    if isinstance(exc, EOFError) and not str(exc):
        return "the SSH connection closed"
    return str(exc) or type(exc).__name__
