"""Both transports' failures as ``sshfleet.errors``, in one place (httpcore's ``map_exceptions`` idea).

* paramiko raises exceptions: ``paramiko_table()`` maps them, for every request on a live connection (session,
  exec, forward, jump channel), through ``paramiko_errors()``;
* the OpenSSH client prints: ``OPENSSH_MESSAGES`` maps what ssh said when a master did not come up, through
  ``openssh_failure()``.

The handshake (banner, key exchange, host key, authentication) has its own phase-by-phase errors in
``_connection.py`` and ``_auth.py``, since each phase knows more than an exception type says.
Every translated error keeps the original as ``__cause__`` (``raise X from exc``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Callable, Optional

from sshfleet._ssh._config import ResolvedHost
from sshfleet.errors import (
    AuthenticationError,
    ChannelError,
    ConnectError,
    ConnectTimeout,
    HostError,
    HostKeyError,
)


def describe(exc: Optional[BaseException]) -> str:
    """The words of an exception, for a message: an OSError's strerror, else its text, else its type."""
    if exc is None:
        return "no reason given"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text or type(exc).__name__


# --- paramiko ----------------------------------------------------------------------------------------------


@cache
def paramiko_table() -> tuple[tuple[tuple[type[BaseException], ...], Callable[[BaseException], str]], ...]:
    """(exception types, how the failure reads): first match wins. ChannelException is the server's refusal of
    one channel; the others mean the connection itself could not carry the request. Built on first use: the
    OpenSSH half of this module serves `sshfleet run`, which must not pay for importing paramiko."""
    import paramiko

    return (
        ((paramiko.ChannelException,), lambda exc: f"refused: {getattr(exc, 'text', '') or describe(exc)}"),
        ((paramiko.SSHException, OSError, EOFError), lambda exc: f"failed: {describe(exc)}"),
    )


@contextmanager
def paramiko_errors(host: str, what: str, error: Callable[[str, str], HostError] = ChannelError) -> Iterator[None]:
    """Translate a paramiko failure inside the block into ``error(host, f"{what} refused/failed: ...")``."""
    try:
        yield
    except HostError:
        raise
    except BaseException as exc:
        for types, reads in paramiko_table():
            if isinstance(exc, types):
                raise error(host, f"{what} {reads(exc)}") from exc
        raise


# --- OpenSSH ----------------------------------------------------------------------------------------------

# (what ssh printed (a regex), the error, its phase, the summary). First match wins; {where} is host:port,
# {user}, {keys}, {jump} and {connect_timeout} are filled in. The jump-host rule matches only through one.
OPENSSH_MESSAGES: tuple[tuple[str, type[ConnectError], str, str], ...] = (
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED", HostKeyError, "hostkey",
     "HOST KEY CHANGED for {where}; possible man-in-the-middle"),
    (r"Host key verification failed", HostKeyError, "hostkey",
     "no host key known for {where} under strict checking{quoted}; add it with ssh-keyscan or use "
     "host_key_policy='accept-new'"),
    (r"Permission denied|Too many authentication failures", AuthenticationError, "auth",
     "permission denied for user {user!r}; keys: {keys}"),
    (r"(?=.*\bJUMP\b)(Stdio forwarding request failed|open failed)", ConnectError, "proxy",
     "jump host {jump} cannot reach {where}"),
    (r"timed out during banner exchange", ConnectTimeout, "banner", "no SSH banner from {where}"),
    (r"during banner exchange", ConnectError, "banner", "no SSH banner from {where}"),
    (r"connect to host .* port \d+: Connection timed out", ConnectTimeout, "tcp",
     "TCP connect to {where} timed out after {connect_timeout:g}s"),
    (r"connect to host .* port \d+:|Could not resolve hostname", ConnectError, "tcp", "TCP connect to {where} failed"),
    (r"kex_exchange_identification|Connection closed by", ConnectError, "banner",
     "SSH negotiation with {where} failed"),
    (r"Unable to negotiate", ConnectError, "kex", "SSH negotiation with {where} failed"),
    (r"command-line|Bad configuration option|ControlPath", ConnectError, "config", "ssh rejected its settings"),
)  # fmt: skip


def openssh_failure(host: ResolvedHost, stderr: str, said: str, *, timed_out: bool, waited: float,
                    jump: Optional[str] = None) -> ConnectError:  # fmt: skip
    """The sshfleet error for a master that did not come up, from what ssh printed (``said``: the same, in one
    line, kept in the message)."""
    where = f"{host.hostname}:{host.port}"
    quoted = f" (ssh: {said})" if said else ""
    facts = {
        "where": where,
        "user": host.user,
        "keys": ", ".join(host.identity_files) or "no key to offer",
        "jump": jump,
        "connect_timeout": host.connect_timeout,
    }
    # The jump rule applies only through a jump host: mark the text so its lookahead can see that.
    text = stderr + ("\nJUMP" if jump else "")
    for pattern, error, phase, summary in OPENSSH_MESSAGES:
        if re.search(pattern, text, re.DOTALL if "(?=" in pattern else 0):
            # The advice reads last, as the paramiko transport words it; ssh's own words go before it.
            if "{quoted}" in summary:
                return error(host.name, summary.format(quoted=quoted, **facts), phase)
            return error(host.name, summary.format(**facts) + quoted, phase)
    if timed_out:
        if jump and not said:
            return ConnectTimeout(host.name, f"no answer from {where} through jump host {jump} in {waited:g}s", "proxy")
        return ConnectTimeout(
            host.name, f"key exchange and authentication with {where} took longer than {waited:g}s{quoted}", "auth"
        )
    return ConnectError(host.name, f"ssh to {where} failed{quoted}", "auth" if said else "tcp")
