"""known_hosts files as OpenSSH reads them: hashed names, ``[host]:port``, wildcards, negation, @revoked.

Pure logic plus file I/O; keys are compared as wire blobs, so no key object is needed to check one. accept-new
appends under a process-wide lock and an flock, because a fleet connects to dozens of new hosts at once.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

# Host key algorithm names paramiko negotiates for a key type found in known_hosts.
_ALGORITHMS_FOR_TYPE = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


@dataclass(frozen=True)
class KnownKey:
    """One known_hosts line that matched a host. ``marker`` is "", "@revoked" or "@cert-authority"."""

    keytype: str
    blob: bytes
    path: str
    line: int
    marker: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _hashed_match(entry: str, name: str) -> bool:
    # |1|base64(salt)|base64(HMAC-SHA1(salt, name))
    parts = entry.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        expected = base64.b64decode(parts[3])
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), expected)


def _wildcard(pattern: str) -> re.Pattern[str]:
    # OpenSSH patterns know only * and ?; "[" is literal (think "[host]:2222"), so fnmatch will not do.
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def host_matches(patterns: str, name: str) -> bool:
    """True when the comma list ``patterns`` (one known_hosts field) matches ``name``; ``!pat`` vetoes."""
    if patterns.startswith("|"):
        return _hashed_match(patterns, name)
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if _wildcard(pattern).fullmatch(name):
            if negated:
                return False
            matched = True
    return matched


def parse_line(text: str) -> Optional[tuple[str, str, str, bytes]]:
    """``(marker, patterns, keytype, blob)`` of one known_hosts line, or None for comments and junk."""
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = ""
    if fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
    if len(fields) < 3:
        return None
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except (binascii.Error, ValueError):
        return None
    return marker, fields[0], fields[1], blob


def lookup_text(text: str, names: Sequence[str], path: str = "<text>") -> list[KnownKey]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        parsed = parse_line(line)
        if parsed is None:
            continue
        marker, patterns, keytype, blob = parsed
        if any(host_matches(patterns, name) for name in names):
            found.append(KnownKey(keytype, blob, path, number, marker))
    return found


def lookup(files: Iterable[str], names: Sequence[str]) -> list[KnownKey]:
    """Every line of ``files`` (missing ones skipped) that names one of ``names``, in file order."""
    found: list[KnownKey] = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            continue
        found.extend(lookup_text(text, names, path))
    return found


def preferred_algorithms(known: Iterable[KnownKey], supported: Sequence[str]) -> tuple[str, ...]:
    """Host key algorithms with those we already know for the host first (as OpenSSH orders them).

    Without this the server may offer an ed25519 key when known_hosts holds its ecdsa key, which would look
    like a changed key.
    """
    first: list[str] = []
    for key in known:
        if key.marker:
            continue
        for algorithm in _ALGORITHMS_FOR_TYPE.get(key.keytype, (key.keytype,)):
            if algorithm in supported and algorithm not in first:
                first.append(algorithm)
    return (*first, *(a for a in supported if a not in first))


@dataclass(frozen=True)
class Verdict:
    """Outcome of checking an offered key: ``status`` is ok, unknown, changed or revoked."""

    status: str
    known: tuple[KnownKey, ...] = ()


def check(known: Sequence[KnownKey], blob: bytes) -> Verdict:
    """Compare the offered key ``blob`` with what known_hosts says about the host."""
    if any(k.marker == "@revoked" and k.blob == blob for k in known):
        return Verdict("revoked")
    plain = tuple(k for k in known if not k.marker)
    if any(k.blob == blob for k in plain):
        return Verdict("ok")
    if plain:
        return Verdict("changed", plain)
    return Verdict("unknown")


_append_lock = threading.Lock()


def append_if_absent(path: str, names: Sequence[str], record_name: str, keytype: str, blob: bytes) -> Verdict:
    """accept-new: add ``record_name keytype blob`` to ``path`` unless another writer got there first.

    Re-reads the file under the locks, so two threads (or processes) meeting the same new host write one line,
    and a key that changed in between is still reported as changed. Creates the file 0600 (and its directory
    0700) when missing.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with _append_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                f.seek(0)
                text = f.read()
                verdict = check(lookup_text(text, names, path), blob)
                if verdict.status != "unknown":
                    return verdict
                prefix = "" if not text or text.endswith("\n") else "\n"
                f.write(f"{prefix}{record_name} {keytype} {base64.b64encode(blob).decode()}\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return Verdict("ok")
