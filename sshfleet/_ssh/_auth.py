"""Public-key authentication: identity files, then ssh-agent, each attempt bounded by the auth deadline.

Only public keys: sshfleet runs unattended on many hosts at once, where a password prompt cannot be answered.
Key files are parsed once per (path, mtime) and shared by every connection of the fleet.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Optional, Union

import paramiko

from sshfleet._ssh._config import ResolvedHost
from sshfleet._ssh._known_hosts import fingerprint
from sshfleet.errors import AuthenticationError, ConnectError, ConnectTimeout

_KeyOrNote = Union[paramiko.PKey, str]
_key_cache: dict[str, tuple[float, _KeyOrNote]] = {}
_key_lock = threading.Lock()


@dataclass
class _Candidate:
    label: str
    key: paramiko.PKey


def load_identity(path: str) -> _KeyOrNote:
    """The private key at ``path``, or a short note saying why it cannot be used (missing, encrypted, ...)."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        return f"{path} ({exc.strerror.lower() if exc.strerror else 'unreadable'})"
    with _key_lock:
        cached = _key_cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    result: _KeyOrNote
    try:
        result = paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        result = f"{path} (encrypted and no passphrase; load it into ssh-agent)"
    except (paramiko.SSHException, ValueError, TypeError, OSError) as exc:
        result = f"{path} (unusable: {exc})"
    with _key_lock:
        _key_cache[path] = (mtime, result)
    return result


def _public_blob(path: str) -> Optional[bytes]:
    """The blob from ``path.pub``: lets IdentitiesOnly match an agent key whose file is encrypted."""
    try:
        with open(path + ".pub", encoding="utf-8") as f:
            fields = f.read().split()
        return base64.b64decode(fields[1]) if len(fields) >= 2 else None
    except (OSError, ValueError):
        return None


def _candidates(host: ResolvedHost, notes: list[str], agent: Optional[paramiko.Agent]) -> list[_Candidate]:
    found: list[_Candidate] = []
    seen: set[bytes] = set()
    file_blobs: set[bytes] = set()
    for path in host.identity_files:
        loaded = load_identity(path)
        if isinstance(loaded, str):
            notes.append(loaded)
            blob = _public_blob(path)
            if blob:
                file_blobs.add(blob)
            continue
        blob = loaded.asbytes()
        file_blobs.add(blob)
        if blob not in seen:
            seen.add(blob)
            found.append(_Candidate(path, loaded))
    if agent is not None:
        try:
            agent_keys = agent.get_keys()
        except paramiko.SSHException as exc:
            notes.append(f"ssh-agent ({exc})")
            agent_keys = ()
        for key in agent_keys:
            blob = key.asbytes()
            if blob in seen or (host.identities_only and blob not in file_blobs):
                continue
            seen.add(blob)
            found.append(_Candidate(f"agent key {fingerprint(blob)}", key))
    return found


def authenticate(
    transport: paramiko.Transport,
    host: ResolvedHost,
    deadline: float,
    log: logging.LoggerAdapter[logging.Logger],
) -> None:
    """Offer each candidate key until one is accepted.

    Raises AuthenticationError naming the user and every key tried (and why others were skipped),
    ConnectTimeout(phase="auth") when the deadline passes, ConnectError(phase="auth") if the link drops.
    """
    notes: list[str] = []
    tried: list[str] = []
    agent = paramiko.Agent() if host.allow_agent and os.environ.get("SSH_AUTH_SOCK") else None
    try:
        for candidate in _candidates(host, notes, agent):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectTimeout(host.name, _timeout_message(host, tried), phase="auth")
            transport.auth_timeout = remaining
            log.debug("offering %s", candidate.label)
            try:
                further = transport.auth_publickey(host.user, candidate.key)
            except paramiko.BadAuthenticationType as exc:
                raise AuthenticationError(
                    host.name,
                    f"server does not accept public keys for user {host.user!r} "
                    f"(it allows: {', '.join(exc.allowed_types) or 'nothing'})",
                ) from exc
            except paramiko.AuthenticationException as exc:
                if time.monotonic() >= deadline:
                    raise ConnectTimeout(host.name, _timeout_message(host, tried), phase="auth") from exc
                tried.append(candidate.label)
                if not transport.is_active():
                    raise AuthenticationError(
                        host.name, _denied_message(host, tried, notes, "server closed the connection")
                    ) from exc
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ConnectError(host.name, f"connection lost during authentication: {exc}", "auth") from exc
            if further:
                raise AuthenticationError(
                    host.name,
                    f"user {host.user!r}: key {candidate.label} accepted but the server wants more "
                    f"({', '.join(further)}); sshfleet authenticates with public keys only",
                )
            log.debug("authenticated as %s with %s", host.user, candidate.label)
            return
    finally:
        if agent is not None:
            agent.close()
    raise AuthenticationError(host.name, _denied_message(host, tried, notes))


def _denied_message(host: ResolvedHost, tried: list[str], notes: list[str], extra: str = "") -> str:
    parts = [f"permission denied for user {host.user!r}"]
    parts.append(f"keys tried: {', '.join(tried)}" if tried else "no key to offer")
    if notes:
        parts.append(f"skipped: {', '.join(notes)}")
    if not tried and not notes:
        parts.append("give one with IdentityFile, -i/identity_files, or ssh-agent")
    if extra:
        parts.append(extra)
    return "; ".join(parts)


def _timeout_message(host: ResolvedHost, tried: list[str]) -> str:
    done = f" after trying {', '.join(tried)}" if tried else ""
    return f"authentication as {host.user!r} took longer than {host.auth_timeout:g}s{done}"
