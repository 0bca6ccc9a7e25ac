"""``Fleet``: the hosts, one SSH connection per host shared by every agent on it, and which agents run where.

Connections are shared process-wide: a ``HostSession`` is keyed by the host's name and its connection settings
after ssh_config (``_ssh.connection_key``), and reference counted, so two Fleets (or two agents that each made
their own) on the same hosts share one connection per host whatever their forks, timeouts or call deadlines, and
the last one to let go closes it. Jump hosts are shared one level down (``_ssh._pool``): one connection per
distinct hop chain.

A host's failure is a value (its ``HostError``), never an exception that loses the other hosts: see
``Fleet.connect()``. ``Fleet.close()`` closes the agents first, then the sub-fleets, then the connections; it is
idempotent and bounded in time.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypeVar, Union

from sshfleet import _ssh
from sshfleet._options import HostKeyPolicy, HostSpec, SshOptions, Timeouts, Transport
from sshfleet.errors import ConnectError, HostError, UsageError

if TYPE_CHECKING:
    from os import PathLike

    from sshfleet._responses import Responses
    from sshfleet.inventory import Inventory

log = logging.getLogger(__name__)
T = TypeVar("T")
HostsArg = Union[str, HostSpec, Iterable[Union[str, HostSpec]]]


class HostLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with its host: ``[host=ct1] servicer started on 127.0.0.1:41233``."""

    def process(self, msg: object, kwargs: dict[str, object]) -> tuple[str, dict[str, object]]:  # type: ignore[override]
        return f"[host={self.extra['host'] if self.extra else '?'}] {msg}", kwargs


def host_logger(name: str, host: str) -> HostLogger:
    return HostLogger(logging.getLogger(name), {"host": host})


class Member(Protocol):
    """What the fleet asks of an agent on it (the API layer's ``Agent``): that it can restart its servicers on
    some hosts, and be closed."""

    def reconnect(self, hosts: Optional[Iterable[str]] = None) -> Any: ...

    def close(self) -> None: ...


A = TypeVar("A", bound=Member)


# --- connections, shared process-wide ---------------------------------------------------------------------


class HostSession:
    """The SSH connection to one host; connects on first use, reconnects when found dead, and closes when the
    last Fleet that holds it lets go. Its settings are those of the first Fleet that asked for it."""

    def __init__(self, key: tuple[object, ...], host: _ssh.ResolvedHost, options: SshOptions) -> None:
        self.key = key
        self.resolved = host
        self.options = options
        self.users = 0
        self._lock = threading.Lock()
        self._conn: Optional[_ssh.Connection] = None
        self.log = host_logger(__name__, host.name)

    @property
    def host(self) -> str:
        return self.resolved.name

    def connection(self) -> _ssh.Connection:
        """The live connection, connecting first if needed. Raises ConnectError naming host and phase."""
        with self._lock:
            if self._conn is not None and self._conn.is_active():
                return self._conn
            if self._conn is not None:
                self.log.info("connection lost; reconnecting")
                self._conn.close()
                self._conn = None
            self._conn = _ssh.open_connection(self.resolved, self.options)
            return self._conn

    def current(self) -> Optional[_ssh.Connection]:
        """The connection as it is now, without connecting."""
        return self._conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


_sessions: dict[tuple[object, ...], HostSession] = {}
_sessions_lock = threading.Lock()


def _acquire(spec: HostSpec, options: SshOptions) -> HostSession:
    """The shared session for ``spec`` under ``options``; raises ConnectError (phase "config") when the host's
    ssh_config cannot be used."""
    try:
        host = _ssh.resolve(spec, options)
    except UsageError as exc:
        raise ConnectError(spec.name, str(exc), "config") from exc
    key = (spec.name, *_ssh.connection_key(host, options))
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = HostSession(key, host, options)
        session.users += 1
        return session


def _release(session: HostSession) -> None:
    with _sessions_lock:
        session.users -= 1
        if session.users > 0:
            return
        if _sessions.get(session.key) is session:
            del _sessions[session.key]
    session.close()


def open_sessions() -> int:
    """How many host connections are held in this process (for tests and diagnostics)."""
    with _sessions_lock:
        return len(_sessions)


# --- the fleet --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """What ``Fleet.connect()`` reports for a host that connected."""

    address: str
    port: int
    user: str
    seconds: float
    detail: str  # user@address:port and the transport's word on it (the cipher, for paramiko)


def _to_specs(hosts: HostsArg) -> list[HostSpec]:
    """Host strings (``user@host:port``, ranges like ``node[01:08]``) or HostSpecs, deduplicated by name."""
    from sshfleet.inventory import load_hosts

    items = [hosts] if isinstance(hosts, (str, HostSpec)) else list(hosts)
    for item in items:
        if not isinstance(item, (str, HostSpec)):
            raise UsageError(f"hosts must be host strings ('user@host:port') or HostSpec objects, not {item!r}")
    specs = load_hosts(items)
    if not specs:
        raise UsageError("no hosts given")
    return specs


def merge_options(
    base: Optional[SshOptions],
    *,
    timeouts: Optional[Timeouts] = None,
    forks: Optional[int] = None,
    host_key_policy: Optional[HostKeyPolicy] = None,
    ssh_config: Optional[str] = None,
    known_hosts: Optional[str] = None,
    identity_file: Optional[str] = None,
    user: Optional[str] = None,
    transport: Optional[Transport] = None,
    keepalive: Optional[float] = None,
) -> SshOptions:
    """``base`` (default: SshOptions()) with the arguments given (not None) taking their place."""
    options = base or SshOptions()
    changes: dict[str, Any] = {
        "timeouts": timeouts.over(options.timeouts) if timeouts is not None else None,
        "forks": forks,
        "host_key_policy": host_key_policy,
        "ssh_config": ssh_config,
        "known_hosts": known_hosts,
        "user": user,
        "identity_files": (identity_file,) if identity_file else None,
        "transport": transport,
        "keepalive": keepalive,
    }
    given = {k: v for k, v in changes.items() if v is not None}
    return options.replace(**given) if given else options


class Fleet:
    """A set of hosts and one SSH connection to each, shared by every agent started on it; a context manager.

    ``Fleet(hosts, **ssh options)`` or ``Fleet.from_inventory(path, pattern)``; nothing connects until
    ``connect()`` or the first agent starts. Options: ``forks`` (how many hosts connect or bootstrap at once),
    ``timeouts``, ``host_key_policy``, ``ssh_config``, ``known_hosts``, ``identity_file``, ``user``,
    ``transport`` ("paramiko" or "openssh"), ``keepalive``, or a whole ``ssh_options`` to start from.

    Agents attach with ``XAgent(fleet)`` or ``fleet.start(XAgent)``; ``fleet.select(pattern)`` is a sub-fleet of
    some hosts that shares their connections. ``close()`` closes the agents, then the sub-fleets, then the
    connections (each connection closes when the last Fleet in the process holding it closes); idempotent,
    bounded by about ``Timeouts.close`` per round of ``forks`` hosts, and also run at interpreter exit.
    """

    def __init__(
        self,
        hosts: HostsArg,
        *,
        ssh_options: Optional[SshOptions] = None,
        timeouts: Optional[Timeouts] = None,
        forks: Optional[int] = None,
        host_key_policy: Optional[HostKeyPolicy] = None,
        ssh_config: Optional[str] = None,
        known_hosts: Optional[str] = None,
        identity_file: Optional[str] = None,
        user: Optional[str] = None,
        transport: Optional[Transport] = None,
        keepalive: Optional[float] = None,
        inventory: Optional[Inventory] = None,
    ) -> None:
        self._closed = True  # until set up, close() has nothing to do
        self.options = merge_options(
            ssh_options,
            timeouts=timeouts,
            forks=forks,
            host_key_policy=host_key_policy,
            ssh_config=ssh_config,
            known_hosts=known_hosts,
            identity_file=identity_file,
            user=user,
            transport=transport,
            keepalive=keepalive,
        )
        self.specs = _to_specs(hosts)
        self._inventory = inventory
        self._lock = threading.Lock()
        self._sessions: dict[str, HostSession] = {}
        self._errors: dict[str, HostError] = {}  # hosts whose ssh_config could not be used
        self._agents: list[Member] = []
        self._children: list[Fleet] = []
        if len(self.specs) > 1:
            with contextlib.suppress(Exception):  # a bad config is each host's error, reported by _acquire
                _ssh.prefetch(self.specs, self.options)  # ssh -G for all hosts at once, not one by one
        for spec in self.specs:
            try:
                self._sessions[spec.name] = _acquire(spec, self.options)
            except HostError as exc:
                self._errors[spec.name] = exc
        self._closed = False
        _live_fleets.add(self)

    @classmethod
    def from_inventory(cls, path: str, pattern: str = "all", **options: Any) -> Fleet:
        """The hosts of an inventory file that match ``pattern`` (Ansible patterns); ``select()`` then knows
        the inventory's groups."""
        from sshfleet.inventory import Inventory

        inventory = Inventory.load(path)
        return cls(inventory.select(pattern), inventory=inventory, **options)

    # --- what it is ---------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        """The hosts' inventory names, in order."""
        return [spec.name for spec in self.specs]

    @property
    def timeouts(self) -> Timeouts:
        return self.options.timeouts

    @property
    def forks(self) -> int:
        return self.options.forks

    @property
    def agents(self) -> list[Member]:
        """The agents started on this fleet and not closed yet (not those of its sub-fleets)."""
        with self._lock:
            return list(self._agents)

    @property
    def closed(self) -> bool:
        return self._closed

    def spec(self, host: str) -> HostSpec:
        for spec in self.specs:
            if spec.name == host:
                return spec
        raise UsageError(f"{host!r} is not one of this fleet's hosts")

    def state(self, host: str) -> str:
        """ "connected", "disconnected" (not connected yet, or the connection was lost), "failed" (its settings
        cannot be used), or "closed"."""
        self.spec(host)
        if self._closed:
            return "closed"
        if host in self._errors:
            return "failed"
        conn = self._sessions[host].current()
        return "connected" if conn is not None and conn.is_active() else "disconnected"

    def select(self, pattern: str) -> Fleet:
        """A sub-fleet of the hosts ``pattern`` selects (Ansible patterns, with the inventory's groups when the
        fleet came from one), sharing this fleet's connections. It closes with this fleet.
        Raises InventoryError for a pattern that names no host or group, UsageError when nothing matches."""
        self._check_open()
        from sshfleet.inventory import Inventory

        inventory = self._inventory or Inventory.from_hosts(self.specs)
        chosen = {spec.name for spec in inventory.select(pattern)}
        specs = [spec for spec in self.specs if spec.name in chosen]
        if not specs:
            raise UsageError(f"{pattern!r} selects none of this fleet's hosts")
        child = Fleet(specs, ssh_options=self.options, inventory=self._inventory)
        with self._lock:
            self._children = [c for c in self._children if not c.closed]
            self._children.append(child)
        return child

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.specs)} hosts, {len(self._agents)} agents"
        return f"<Fleet {state}>"

    # --- connections ----------------------------------------------------------------------------------------

    def connection(self, host: str) -> _ssh.Connection:
        """The host's live connection, connecting (or reconnecting) first if needed.

        Raises the host's HostError (ConnectError and subclasses) when it cannot connect, UsageError for a host
        that is not in this fleet or a closed fleet."""
        self._check_open()
        error = self._errors.get(host)
        if error is not None:
            raise error
        session = self._sessions.get(host)
        if session is None:
            raise UsageError(f"{host!r} is not one of this fleet's hosts")
        return session.connection()

    def connect(
        self,
        *,
        on_result: Optional[Callable[[str, Union[Connected, HostError], float], None]] = None,
        specs: Optional[Sequence[HostSpec]] = None,
    ) -> dict[str, Union[Connected, HostError]]:
        """Connect every host not connected yet, at most ``forks`` at once; one outcome per host, in host order.

        Never raises for a host's failure. Each connect is bounded by the connect and auth timeouts, so this
        returns within about ``ceil(hosts / forks) * (connect + auth)`` seconds. ``on_result(host, outcome,
        seconds)`` is called from a worker thread as each host finishes (for progress displays).
        """

        def one(spec: HostSpec) -> Union[Connected, HostError]:
            started = time.monotonic()
            outcome: Union[Connected, HostError]
            try:
                conn = self.connection(spec.name)
                outcome = Connected(conn.address, conn.port, conn.user, conn.connect_seconds, conn.describe())
            except HostError as exc:
                outcome = exc
            except Exception as exc:  # a bug must cost one host, not the whole fleet's results
                log.exception("[host=%s] unexpected error while connecting", spec.name)
                outcome = ConnectError(spec.name, f"unexpected error: {exc!r}", "tcp")
            if on_result is not None:
                on_result(spec.name, outcome, time.monotonic() - started)
            return outcome

        todo = list(self.specs if specs is None else specs)
        return dict(zip((spec.name for spec in todo), self.each(one, todo)))

    def reconnect(self, hosts: Optional[Iterable[str]] = None) -> dict[str, Union[Connected, HostError]]:
        """Reconnect ``hosts`` (default: all) whose connection is lost, then restart the servicers of every agent on
        this fleet that lost them there; connections that are up and the other hosts are not touched.
        Returns each host's connect outcome, as ``connect()``."""
        self._check_open()
        names = self.hosts if hosts is None else ([hosts] if isinstance(hosts, str) else list(hosts))
        specs = [self.spec(name) for name in names]
        for spec in specs:
            session = self._sessions.get(spec.name)
            conn = session.current() if session is not None else None
            if session is not None and conn is not None and not conn.is_active():
                session.close()
        outcomes = self.connect(specs=specs)
        for agent in self.agents:
            agent.reconnect([name for name in names if isinstance(outcomes[name], Connected)])
        return outcomes

    def each(self, fn: Callable[[HostSpec], T], specs: Optional[Sequence[HostSpec]] = None) -> list[T]:
        """``fn(spec)`` for every host (or ``specs``), at most ``forks`` at once; results in the same order.

        ``fn`` must turn a host's failure into a value. On KeyboardInterrupt, hosts not started yet are
        skipped and the exception propagates once the running ones finish."""
        todo = list(self.specs if specs is None else specs)
        if len(todo) <= 1:
            return [fn(spec) for spec in todo]
        workers = min(self.options.forks, len(todo))
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sshfleet-fleet")
        futures: list[Future[T]] = []
        try:
            futures = [executor.submit(fn, spec) for spec in todo]
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            executor.shutdown(wait=False)

    def reserve_fds(self, per_host: int) -> None:
        """Make sure this process may open ``per_host`` more file descriptors for each host, raising the soft
        ``ulimit -n`` up to the hard one if needed: a fleet that runs out of descriptors halfway through its start
        fails in confusing ways, so a limit too low is a clear UsageError up front instead."""
        try:
            import resource
        except ImportError:  # not on this platform: nothing to check
            return
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:
            in_use = 64
        needed = in_use + per_host * len(self.specs) + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        if hard == resource.RLIM_INFINITY or hard >= needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, 2 * soft)), hard))
            log.info("raised the open-files limit from %d to %d for %d hosts", soft, needed, len(self.specs))
            return
        raise UsageError(
            f"{len(self.specs)} hosts need about {needed} open files here, but `ulimit -n` allows {hard} at most: "
            f"raise it (e.g. `ulimit -n {needed}` as root, or LimitNOFILE=) or use fewer hosts"
        )

    # --- agents ---------------------------------------------------------------------------------------------

    def start(self, agent_class: Callable[..., A], **options: Any) -> A:
        """Start ``agent_class`` on every host of this fleet (``agent_class(self, **options)``)."""
        return agent_class(self, **options)

    def _attach(self, agent: Member) -> None:
        with self._lock:
            self._check_open()
            self._agents.append(agent)

    def _detach(self, agent: Member) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._agents.remove(agent)

    # --- lifetime -------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this Fleet is closed")

    def close(self) -> None:
        """Close every agent on this fleet, then its sub-fleets, then let go of its connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            agents, self._agents = list(self._agents), []
            children, self._children = list(self._children), []
            sessions, self._sessions = list(self._sessions.values()), {}
        _live_fleets.discard(self)
        for agent in agents:
            with contextlib.suppress(Exception):
                agent.close()
        for child in children:
            child.close()
        if len(sessions) <= 1:
            for session in sessions:
                _release(session)
            return
        workers = max(1, min(self.options.forks, len(sessions)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sshfleet-close") as pool:
            list(pool.map(_release, sessions))

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- files (the transfer logic is in _files.py) ---------------------------------------------------------

    def put(
        self,
        local: Union[str, PathLike[str]],
        remote: str,
        *,
        mode: Optional[int] = None,
        timeout: Optional[float] = None,
        on_progress: Optional[Callable[[str, int, int], None]] = None,
    ) -> Responses:
        """Copy a local file or tree to ``remote`` on every host (inside it when it is a directory, as scp);
        atomic per file, modes and times kept (``mode=`` sets the files'). One ``Transfer`` or HostError per
        host; ``timeout`` bounds each host's transfer, ``on_progress(host, done, total)`` reports bytes."""
        from sshfleet import _files

        self._check_open()
        return _files.put(self, local, remote, mode=mode, timeout=timeout, on_progress=on_progress)

    def get(
        self,
        remote: str,
        local_dir: Union[str, PathLike[str]],
        *,
        timeout: Optional[float] = None,
        on_progress: Optional[Callable[[str, int, int], None]] = None,
    ) -> Responses:
        """Copy ``remote`` (a file, a tree or a glob) from every host into ``local_dir/HOST/``, atomic per file.
        One ``Transfer`` (its ``paths`` are the local files) or HostError per host."""
        from sshfleet import _files

        self._check_open()
        return _files.get(self, remote, local_dir, timeout=timeout, on_progress=on_progress)

    def sync(
        self,
        local_dir: Union[str, PathLike[str]],
        remote_dir: str,
        *,
        delete: bool = False,
        timeout: Optional[float] = None,
        on_progress: Optional[Callable[[str, int, int], None]] = None,
    ) -> Responses:
        """``rsync -a local_dir/ remote_dir/`` on every host: send what differs in size or mtime; with
        ``delete``, remove what is not here. The ``Transfer`` counts files sent, skipped and deleted."""
        from sshfleet import _files_sync

        self._check_open()
        return _files_sync.sync(self, local_dir, remote_dir, delete=delete, timeout=timeout, on_progress=on_progress)


_live_fleets: weakref.WeakSet[Fleet] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for fleet in list(_live_fleets):
        with contextlib.suppress(Exception):
            fleet.close()
