"""One connection per distinct jump-host chain, shared by every host behind it, process-wide, for both transports.

Seven hosts behind one bastion then make one TCP connection to it, not seven: a real bastion rate-limits new
connections (sshd's MaxStartups defaults to 10:30:100), and a dead one is tried once per fleet connect, not once
per host. A pooled chain closes when the last connection that went through it closes.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Callable, Generic, Optional, TypeVar

from sshfleet.errors import HostError

C = TypeVar("C")


class _Entry(Generic[C]):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.conn: Optional[C] = None
        self.error: Optional[HostError] = None


class JumpPool(Generic[C]):
    """Shared connections keyed by their hop chain (``connection_key`` of each hop, and the transport)."""

    def __init__(self, is_active: Callable[[C], bool], close: Callable[[C], None]) -> None:
        self._is_active = is_active
        self._close = close
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry[C]] = {}

    def acquire(self, key: Hashable, connect: Callable[[], C]) -> tuple[C, Callable[[], None]]:
        """The shared connection under ``key`` (made with ``connect()`` by its first user) and the function to
        call once done with it. Users that arrive while it connects wait for it and share its outcome: the
        connection, or the same HostError raised to each of them. A shared connection found dead is replaced."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.conn is not None and not self._is_active(entry.conn):
                del self._entries[key]  # its current users still release the old entry
                entry = None
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        with entry.lock:
            if entry.conn is None and entry.error is None:
                try:
                    entry.conn = connect()
                except HostError as exc:
                    entry.error = exc
            conn, error = entry.conn, entry.error
        if conn is None:
            self._drop(key, entry)
            assert error is not None
            raise error
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._drop(key, entry)

        return conn, release

    def _drop(self, key: Hashable, entry: _Entry[C]) -> None:
        with self._lock:
            entry.users -= 1
            last = entry.users == 0
            if last and self._entries.get(key) is entry:
                del self._entries[key]
        if last and entry.conn is not None:
            self._close(entry.conn)
