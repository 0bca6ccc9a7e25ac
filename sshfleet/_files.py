"""Files across a fleet: ``put``, ``get`` and ``sync`` over each host's existing SSH connection (SFTP).

Named and laid out as users of the usual tools expect: ``put``/``get`` as Fabric's ``Group``; a local path
given to ``put`` lands where ``scp``/``cp`` would put it (inside ``remote`` when that is a directory or ends with
"/", else as ``remote``); ``get`` saves each host's copy under ``LOCAL_DIR/HOST/`` (ClusterShell's
``--rcopy`` keeps hosts apart by name the same way); ``sync`` is ``rsync -a LOCAL_DIR/ REMOTE_DIR/``: a file is
sent when its size or modification time differ, and ``delete=True`` is ``--delete``. Modes and modification
times are kept (``scp -p``); symlinks inside trees are copied as symlinks (``rsync -a``).

The receiving side is atomic: each file is written under a temporary name in its own directory
(``.NAME.XXXXXXXX.sshfleet-part``, mode already final, or 0600 locally), then renamed over the final name, so
a final name never holds a partial file; a failure removes the temporary file (on a host: when the link still
allows it). Each host is one outcome in the returned ``Responses``: a ``Transfer`` or the ``HostError``
naming the path and the reason; hosts run in parallel, at most ``forks`` at once.

Deadlines: a host that sends nothing for ``Timeouts.call`` seconds fails ("no reply from the host"); with
``timeout=``, a host's whole transfer also fails past that many seconds, and its outcome is reported then even
if the link is too dead for the SFTP session to close cleanly.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypeVar, Union

from sshfleet._files_tree import Entry, _safe_name, host_dir_name, local_tree, remote_tree
from sshfleet._options import HostSpec
from sshfleet._responses import Responses
from sshfleet.errors import ChannelError, HostError, UsageError

if TYPE_CHECKING:
    from sshfleet._options import Timeouts
    from sshfleet._ssh._seam import Connection, SftpSession

__all__ = ["Progress", "Transfer", "fetch", "get", "put"]  # sync: _files_sync.py


class Fleet(Protocol):
    """What a transfer needs of ``sshfleet.Fleet``, whose put/get/sync call into this module."""

    @property
    def hosts(self) -> list[str]: ...

    @property
    def specs(self) -> list[HostSpec]: ...

    @property
    def timeouts(self) -> Timeouts: ...

    def connection(self, host: str) -> Connection: ...

    def each(self, fn: Callable[[HostSpec], T], specs: Optional[Sequence[HostSpec]] = None) -> list[T]: ...


CHUNK = 1 << 20  # bytes read or written per step; progress is reported at this grain
PART_SUFFIX = ".sshfleet-part"
_GLOB = re.compile(r"[*?[]")

Progress = Callable[[str, int, int], None]
"""``on_progress(host, bytes_done, bytes_total)``, called from worker threads as data moves."""

T = TypeVar("T")


class Transfer(dict[str, Any]):
    """One host's outcome of put/get/sync: ``files`` and ``bytes`` moved, ``seconds``, ``paths`` written (remote
    paths for put/sync, local ones for get), and for sync ``skipped`` (already up to date) and ``deleted``.

    A dict, so ``Responses.to_dict()`` and ``--json`` take it as it is; the attributes are for reading."""

    @property
    def files(self) -> int:
        return int(self["files"])

    @property
    def bytes(self) -> int:
        return int(self["bytes"])

    @property
    def seconds(self) -> float:
        return float(self["seconds"])

    @property
    def paths(self) -> list[str]:
        return list(self["paths"])

    @property
    def skipped(self) -> int:
        return int(self.get("skipped", 0))

    @property
    def deleted(self) -> int:
        return int(self.get("deleted", 0))


# --- one host's job: deadline, cancellation, progress -------------------------------------------------------


class _Stopped(Exception):
    """The job's deadline passed: the worker stops at its next step."""


class _Job:
    """One host's transfer: what to undo if its deadline passes while its worker is stuck on a dead link."""

    def __init__(self, host: str, total: int, on_progress: Optional[Progress]) -> None:
        self.host = host
        self.total = total
        self.done = 0
        self.files = 0
        self.paths: list[str] = []
        self.skipped = 0
        self.deleted = 0
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self.stopped = False
        self.sftp: Optional[SftpSession] = None
        self.local_parts: set[str] = set()
        self.current = ""  # the path being copied, for a deadline's message

    def at(self) -> str:
        return f" (at {self.current})" if self.current else ""

    def check(self) -> None:
        if self.stopped:
            raise _Stopped()

    def moved(self, nbytes: int) -> None:
        self.done += nbytes
        if self._on_progress is not None:
            self._on_progress(self.host, self.done, self.total)

    def add_part(self, path: str) -> None:
        with self._lock:
            self.check()
            self.local_parts.add(path)

    def drop_part(self, path: str) -> None:
        with self._lock:
            self.local_parts.discard(path)

    def stop(self) -> None:
        """Past the deadline: remove local partial files and close the SFTP session (never waits long)."""
        with self._lock:
            self.stopped = True
            parts, self.local_parts = set(self.local_parts), set()
        for part in parts:
            with contextlib.suppress(OSError):
                os.unlink(part)
        if self.sftp is not None:
            self.sftp.close()

    def outcome(self, started: float, **extra: int) -> Transfer:
        return Transfer(
            files=self.files,
            bytes=self.done,
            seconds=round(time.monotonic() - started, 6),
            paths=self.paths,
            **extra,
        )


def _run_host(
    host: str, timeout: Optional[float], job: _Job, work: Callable[[], Transfer]
) -> Union[Transfer, HostError]:
    """``work()`` as this host's outcome, within ``timeout`` seconds when given.

    A worker stuck past the deadline (paramiko waits for TCP to give up on a dead link) is abandoned in its
    thread: the job is stopped, so it undoes its partial files and ends at its next step."""

    def guarded() -> Union[Transfer, HostError]:
        try:
            return work()
        except HostError as exc:
            return exc
        except _Stopped:
            return ChannelError(host, f"the transfer did not finish within {timeout:g}s{job.at()}")
        except Exception as exc:  # a bug must cost one host, not the whole fleet's results
            return ChannelError(host, f"unexpected error during the transfer: {exc!r}")

    if timeout is None:
        return guarded()
    result: list[Union[Transfer, HostError]] = []
    thread = threading.Thread(target=lambda: result.append(guarded()), name=f"sshfleet-files-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if result:
        return result[0]
    job.stop()
    thread.join(0.5)
    if result:  # it ended at its next step (or had just finished: then every file is in place)
        return result[0]
    return ChannelError(host, f"the transfer did not finish within {timeout:g}s{job.at()}; the host stopped answering")


@contextlib.contextmanager
def _local_errors(host: str, what: str, path: Union[str, Path]) -> Iterator[None]:
    """A failure on the controller's disk while serving one host is that host's outcome, naming the path."""
    try:
        yield
    except OSError as exc:
        raise HostError(host, f"{what} {path} on the controller: {exc.strerror or exc}") from exc


def _open_sftp(fleet: Fleet, host: str, job: _Job) -> SftpSession:
    conn = fleet.connection(host)
    sftp = conn.open_sftp(stall=fleet.timeouts.call, timeout=fleet.timeouts.connect)
    job.sftp = sftp
    if job.stopped:
        sftp.close()
        job.check()
    return sftp


def _each(fleet: Fleet, method: str, fn: Callable[[HostSpec], Union[Transfer, HostError]]) -> Responses:
    outcomes = fleet.each(fn, fleet.specs)
    return Responses(method, dict(zip(fleet.hosts, outcomes)))


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is not None and not 0 < timeout < float("inf"):
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")


# --- writing remote files ----------------------------------------------------------------------------------


def _part_name(path: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.{secrets.token_hex(4)}{PART_SUFFIX}")


def _upload(job: _Job, sftp: SftpSession, source: str, dest: str, mode: int, mtime: int) -> None:
    """``source`` (local) to ``dest`` on the host through a temporary name in ``dest``'s directory."""
    job.current = dest
    part = _part_name(dest)
    writer = sftp.create(part, mode)
    try:
        with _local_errors(job.host, "reading", source), open(source, "rb") as src:
            while True:
                job.check()
                with _local_errors(job.host, "reading", source):
                    chunk = src.read(CHUNK)
                if not chunk:
                    break
                writer.write(chunk)
                job.moved(len(chunk))
        writer.finish(mtime)
        job.check()
        sftp.rename(part, dest)
    except BaseException:
        writer.close()
        with contextlib.suppress(HostError):
            sftp.remove(part)
        raise
    job.files += 1
    job.paths.append(dest)


def _remote_symlink(sftp: SftpSession, target: str, dest: str) -> None:
    part = _part_name(dest)
    sftp.symlink(target, part)
    try:
        sftp.rename(part, dest)
    except BaseException:
        with contextlib.suppress(HostError):
            sftp.remove(part)
        raise


def _destination(sftp: SftpSession, remote: str, name: str) -> str:
    """Where ``put`` writes an item called ``name``: inside ``remote`` when it is a directory (or ends with
    "/", then it must be one), else ``remote`` itself, as ``scp``/``cp`` decide."""
    found = sftp.stat(remote)
    if remote.endswith("/"):
        if found is None:
            # "file/" is ENOTDIR, which sftp-server reports as no such file: say which it is.
            bare = sftp.stat(remote.rstrip("/")) if remote.rstrip("/") else None
            if bare is not None and bare.kind != "dir":
                raise ChannelError(sftp.host, f"not a directory: {remote}")
            raise ChannelError(sftp.host, f"no such directory: {remote}")
        if found.kind != "dir":
            raise ChannelError(sftp.host, f"not a directory: {remote}")
    if found is not None and found.kind == "dir":
        return posixpath.join(remote, name)
    return remote


def _finish_dirs(sftp: SftpSession, dirs: list[tuple[str, int]]) -> None:
    """Directories were created 0700 to be filled privately; give them their modes, deepest first."""
    for path, mode in reversed(dirs):
        sftp.chmod(path, mode)


def _put_host(
    fleet: Fleet, spec: HostSpec, local: str, tree: list[Entry], remote: str, mode: Optional[int], job: _Job
) -> Transfer:
    started = time.monotonic()
    with _open_sftp(fleet, spec.name, job) as sftp:
        root = tree[0]
        dest = _destination(sftp, remote, os.path.basename(os.path.normpath(local)))
        existing = sftp.stat(dest, follow=False)
        if root.kind == "file":
            if existing is not None and existing.kind == "dir":
                raise ChannelError(spec.name, f"{dest} is a directory on the host; a file was expected there")
            _upload(job, sftp, local, dest, root.mode if mode is None else mode, root.mtime)
            return job.outcome(started)
        if existing is not None and existing.kind != "dir":
            raise ChannelError(spec.name, f"{dest} exists on the host and is not a directory")
        made: list[tuple[str, int]] = []
        if existing is None:
            sftp.mkdir(dest, 0o700)
            made.append((dest, root.mode))
        for entry in tree[1:]:
            job.check()
            target = posixpath.join(dest, entry.rel)
            source = os.path.join(local, *entry.rel.split("/"))
            if entry.kind == "dir":
                have = sftp.stat(target, follow=False)
                if have is None:
                    sftp.mkdir(target, 0o700)
                    made.append((target, entry.mode))
                elif have.kind != "dir":
                    raise ChannelError(spec.name, f"{target} exists on the host and is not a directory")
            elif entry.kind == "link":
                _remote_symlink(sftp, entry.target, target)
            else:
                _upload(job, sftp, source, target, entry.mode if mode is None else mode, entry.mtime)
        _finish_dirs(sftp, made)
    return job.outcome(started)


def put(
    fleet: Fleet,
    local: Union[str, os.PathLike[str]],
    remote: str,
    *,
    mode: Optional[int] = None,
    timeout: Optional[float] = None,
    on_progress: Optional[Progress] = None,
) -> Responses:
    """Copy the local file or directory tree ``local`` to ``remote`` on every host (see the module docstring).

    ``mode`` sets the files' permission bits (default: each file keeps its own). Raises UsageError, before
    anything goes on the network, when ``local`` cannot be read; every other failure is its host's outcome."""
    local_path = os.fspath(local)
    if not remote:
        raise UsageError("put: the remote path is empty")
    if mode is not None and not 0 <= mode <= 0o7777:
        raise UsageError(f"put: mode must be permission bits (0 to 0o7777), got {mode!r}")
    _check_timeout(timeout)
    tree = local_tree(local_path)
    total = sum(e.size for e in tree if e.kind == "file")

    def one(spec: HostSpec) -> Union[Transfer, HostError]:
        job = _Job(spec.name, total, on_progress)
        return _run_host(spec.name, timeout, job, lambda: _put_host(fleet, spec, local_path, tree, remote, mode, job))

    return _each(fleet, "put", one)


# --- reading remote files ----------------------------------------------------------------------------------


def _download(job: _Job, sftp: SftpSession, source: str, dest: Path, entry: Entry) -> None:
    """``source`` on the host to ``dest`` through a temporary file (0600) in ``dest``'s directory."""
    host = job.host
    job.current = source
    if dest.is_dir() and not dest.is_symlink():  # checked again before the rename: it may appear meanwhile
        raise HostError(host, f"{dest} is a directory on the controller; a file was expected there")
    with _local_errors(host, "writing", dest.parent):
        fd, part = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PART_SUFFIX, dir=dest.parent)
    try:
        job.add_part(part)
        with os.fdopen(fd, "wb") as out:
            reader = sftp.open_read(source, entry.size)
            try:
                while True:
                    job.check()
                    chunk = reader.read(CHUNK)
                    if not chunk:
                        break
                    with _local_errors(host, "writing", dest):
                        out.write(chunk)
                    job.moved(len(chunk))
            finally:
                reader.close()
        with _local_errors(host, "writing", dest):
            os.chmod(part, entry.mode)
            os.utime(part, (entry.mtime, entry.mtime))
            if dest.is_dir() and not dest.is_symlink():
                raise HostError(host, f"{dest} is a directory on the controller; a file was expected there")
            job.check()
            os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    finally:
        job.drop_part(part)
    job.files += 1
    job.paths.append(str(dest))


def _local_symlink(host: str, target: str, dest: Path) -> None:
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
    with _local_errors(host, "writing", dest):
        os.symlink(target, part)
        try:
            os.replace(part, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise


def _expand(sftp: SftpSession, pattern: str) -> list[str]:
    """Remote paths matching a glob (``*``, ``?``, ``[...]`` in any component); names starting with "." match
    only a pattern that starts with "." too, as in a shell."""
    absolute = pattern.startswith("/")
    parts = [p for p in pattern.split("/") if p]
    paths = ["/" if absolute else ""]
    for part in parts:
        found = []
        for base in paths:
            if not _GLOB.search(part):
                found.append(posixpath.join(base, part) if base else part)
                continue
            try:
                listing = sftp.listdir(base or ".")
            except ChannelError:
                continue
            for name, _st in sorted(listing):
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    _safe_name(name, sftp.host, base or ".")
                    found.append(posixpath.join(base, name) if base else name)
        paths = found
    return [p for p in paths if sftp.stat(p, follow=False) is not None]


def _get_one(job: _Job, sftp: SftpSession, remote: str, into: Path) -> None:
    found = sftp.stat(remote)
    if found is None:
        raise ChannelError(job.host, f"no such file or directory: {remote}")
    name = posixpath.basename(remote.rstrip("/"))
    if name in ("", ".", ".."):
        name = posixpath.basename(sftp.realpath(remote))
    if not name:
        raise ChannelError(job.host, f"cannot get {remote}: give a file or a directory below /")
    root = into / name
    if found.kind == "file":
        job.total = job.done + found.size
        _download(job, sftp, remote, root, Entry("", "file", found.size, found.mode, found.mtime))
        return
    if found.kind != "dir":
        raise ChannelError(job.host, f"{remote} is neither a file nor a directory")
    tree = remote_tree(sftp, remote, found.kind, found.size, found.mode, found.mtime)
    job.total = job.done + sum(e.size for e in tree if e.kind == "file")
    made: list[tuple[Path, int]] = []
    for entry in tree:
        job.check()
        dest = root.joinpath(*entry.rel.split("/")) if entry.rel else root
        source = posixpath.join(remote, entry.rel) if entry.rel else remote
        if entry.kind == "dir":
            with _local_errors(job.host, "creating", dest):
                if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                    raise HostError(job.host, f"{dest} exists on the controller and is not a directory")
                if not dest.exists():
                    dest.mkdir(mode=0o700)
            made.append((dest, entry.mode))
        elif entry.kind == "link":
            _local_symlink(job.host, entry.target, dest)
        else:
            _download(job, sftp, source, dest, entry)
    for path, mode in reversed(made):
        with _local_errors(job.host, "setting the mode of", path):
            os.chmod(path, mode)


def _get_host(fleet: Fleet, spec: HostSpec, remote: str, local_dir: Path, job: _Job) -> Transfer:
    started = time.monotonic()
    into = local_dir / host_dir_name(spec.name)
    with _local_errors(spec.name, "creating", into):
        into.mkdir(parents=True, exist_ok=True)
    with _open_sftp(fleet, spec.name, job) as sftp:
        if _GLOB.search(remote):
            matches = _expand(sftp, remote)
            if not matches:
                raise ChannelError(spec.name, f"no match for {remote}")
        else:
            matches = [remote]
        for path in matches:
            _get_one(job, sftp, path, into)
    return job.outcome(started)


def get(
    fleet: Fleet,
    remote: str,
    local_dir: Union[str, os.PathLike[str]],
    *,
    timeout: Optional[float] = None,
    on_progress: Optional[Progress] = None,
    base: Optional[Mapping[str, Union[str, HostError]]] = None,
) -> Responses:
    """Copy ``remote`` (a file, a tree, or a glob such as ``/var/log/*.log``) from every host into
    ``local_dir/HOST/`` (made if missing), each item under its own name.

    ``base`` maps a host to the directory its relative ``remote`` starts from (default: the login user's home),
    or to the error that host already has. Raises UsageError for an empty ``remote`` or a ``local_dir`` that is
    not a directory; every other failure is its host's outcome."""
    if not remote:
        raise UsageError("get: the remote path is empty")
    target = Path(os.fspath(local_dir))
    if target.exists() and not target.is_dir():
        raise UsageError(f"get: {target} is not a directory")
    _check_timeout(timeout)

    def one(spec: HostSpec) -> Union[Transfer, HostError]:
        path = remote
        if base is not None and not remote.startswith("/"):
            root = base.get(spec.name)
            if isinstance(root, HostError):
                return root
            if root is None:
                return HostError(spec.name, "no directory to start from on this host")
            path = posixpath.join(root, remote)
        job = _Job(spec.name, 0, on_progress)
        return _run_host(spec.name, timeout, job, lambda: _get_host(fleet, spec, path, target, job))

    return _each(fleet, "get", one)


def fetch(
    fleet: Fleet,
    session_dirs: Mapping[str, Union[str, HostError]],
    remote: str,
    local_dir: Union[str, os.PathLike[str]],
    *,
    timeout: Optional[float] = None,
    on_progress: Optional[Progress] = None,
) -> Responses:
    """What an agent's servicers wrote into their session directories (``remote`` relative to it, globs
    allowed), collected into ``local_dir/HOST/``: the servicer needs to know no path on the controller.

    ``session_dirs`` maps each host to its servicer's session directory, or to the host's error (a host whose
    servicer did not start); an absolute ``remote`` is taken as it is."""
    return get(fleet, remote, local_dir, timeout=timeout, on_progress=on_progress, base=session_dirs)
