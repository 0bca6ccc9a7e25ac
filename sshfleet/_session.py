"""Fleet layer: one ``HostSession`` (one SSH connection) per host, shared by every agent on that host.

Sessions are reference counted in a process-wide registry keyed by the host's spec and the SSH options, so two
agents on the same hosts with the same options share the connection, and the last one to close it closes it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Optional

from sshfleet import _ssh
from sshfleet._bootstrap import Connection
from sshfleet._options import HostSpec, SshOptions

log = logging.getLogger(__name__)


class HostLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with its host: ``[host=ct1] servicer started on 127.0.0.1:41233``."""

    def process(self, msg: object, kwargs: dict[str, object]) -> tuple[str, dict[str, object]]:  # type: ignore[override]
        return f"[host={self.extra['host'] if self.extra else '?'}] {msg}", kwargs


def host_logger(name: str, host: str) -> HostLogger:
    return HostLogger(logging.getLogger(name), {"host": host})


class HostSession:
    """The SSH connection to one host; (re)connects on demand, closes when its last user releases it."""

    def __init__(self, spec: HostSpec, options: SshOptions) -> None:
        self.spec = spec
        self.options = options
        self.users = 0
        self._lock = threading.Lock()
        self._conn: Optional[Connection] = None
        self.log = host_logger(__name__, spec.name)

    @property
    def host(self) -> str:
        return self.spec.name

    def connection(self) -> Connection:
        """The live connection, connecting first if needed. Raises ConnectError naming host and phase."""
        with self._lock:
            if self._conn is not None and self._conn.is_active():
                return self._conn
            if self._conn is not None:
                self.log.info("connection lost; reconnecting")
                self._conn.close()
            if self.options.transport == "openssh":
                self._conn = _ssh.connect_openssh(self.spec, self.options)
            else:
                self._conn = _ssh.connect(self.spec, self.options)
            return self._conn

    def current(self) -> Optional[Connection]:
        """The connection as it is now, without connecting."""
        return self._conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


_registry: dict[tuple[HostSpec, SshOptions], HostSession] = {}
_registry_lock = threading.Lock()


def acquire(spec: HostSpec, options: SshOptions) -> HostSession:
    with _registry_lock:
        session = _registry.get((spec, options))
        if session is None:
            session = _registry[(spec, options)] = HostSession(spec, options)
        session.users += 1
        return session


def release(session: HostSession) -> None:
    with _registry_lock:
        session.users -= 1
        if session.users > 0:
            return
        _registry.pop((session.spec, session.options), None)
    session.close()
