"""``sync``: send only what changed, ``rsync -a LOCAL_DIR/ REMOTE_DIR/`` over each host's SFTP session (see
``_files.py`` for the atomic writes, deadlines and per-host outcomes it shares with ``put`` and ``get``)."""

from __future__ import annotations

import os
import posixpath
import time
from typing import TYPE_CHECKING, Optional, Union

from sshfleet._files import (
    Fleet,
    Progress,
    Transfer,
    _check_timeout,
    _each,
    _finish_dirs,
    _Job,
    _open_sftp,
    _remote_symlink,
    _run_host,
    _upload,
)
from sshfleet._files_tree import Entry, _safe_name, local_tree, remote_tree
from sshfleet._options import HostSpec
from sshfleet._responses import Responses
from sshfleet.errors import ChannelError, HostError, UsageError

if TYPE_CHECKING:
    from sshfleet._ssh._seam import SftpSession

# --- sync --------------------------------------------------------------------------------------------------


def _remove_remote(sftp: SftpSession, path: str, kind: str) -> None:
    if kind != "dir":
        sftp.remove(path)
        return
    for name, st in sftp.listdir(path):
        _safe_name(name, sftp.host, path)
        _remove_remote(sftp, posixpath.join(path, name), st.kind)
    sftp.rmdir(path)


def _same_file(old: Optional[Entry], new: Entry) -> bool:
    """rsync's quick check: same size and same modification time (whole seconds, as SFTP v3 keeps them)."""
    return old is not None and old.kind == "file" and (old.size, old.mtime) == (new.size, new.mtime)


def _sync_host(fleet: Fleet, spec: HostSpec, local: str, tree: list[Entry], remote: str, delete: bool,
               job: _Job) -> Transfer:  # fmt: skip
    started = time.monotonic()
    root_dir = remote.rstrip("/") or "/"
    with _open_sftp(fleet, spec.name, job) as sftp:
        found = sftp.stat(root_dir)
        made: list[tuple[str, int]] = []
        have: dict[str, Entry] = {}
        if found is None:
            sftp.mkdir(root_dir, 0o700)
            made.append((root_dir, tree[0].mode))
        elif found.kind != "dir":
            raise ChannelError(spec.name, f"{root_dir} exists on the host and is not a directory")
        else:
            have = {e.rel: e for e in remote_tree(sftp, root_dir, "dir", 0, found.mode, found.mtime)[1:]}
        wanted = {e.rel for e in tree[1:]}
        job.total = sum(e.size for e in tree[1:] if e.kind == "file" and not _same_file(have.get(e.rel), e))
        for entry in tree[1:]:
            job.check()
            target = posixpath.join(root_dir, entry.rel)
            old = have.get(entry.rel)
            if old is not None and old.kind != entry.kind and (old.kind == "dir" or entry.kind == "dir"):
                if not delete:
                    raise ChannelError(
                        spec.name,
                        f"{target} is a {old.kind} on the host and a {entry.kind} here (delete=True replaces it)",
                    )
                _remove_remote(sftp, target, old.kind)
                job.deleted += 1
                have = {rel: e for rel, e in have.items() if rel != entry.rel and not rel.startswith(entry.rel + "/")}
                old = None
            if entry.kind == "dir":
                if old is None:
                    sftp.mkdir(target, 0o700)
                    made.append((target, entry.mode))
                elif old.mode != entry.mode:
                    sftp.chmod(target, entry.mode)
            elif entry.kind == "link":
                if old is None or old.kind != "link" or old.target != entry.target:
                    _remote_symlink(sftp, entry.target, target)
                else:
                    job.skipped += 1
            elif old is not None and _same_file(old, entry):
                job.skipped += 1
                if old.mode != entry.mode:
                    sftp.chmod(target, entry.mode)
            else:
                source = os.path.join(local, *entry.rel.split("/"))
                _upload(job, sftp, source, target, entry.mode, entry.mtime)
        if delete:
            for rel in sorted(set(have) - wanted, key=lambda r: r.count("/"), reverse=True):
                parent = rel.rsplit("/", 1)[0] if "/" in rel else None
                if parent is not None and parent not in wanted:
                    continue  # goes with its parent
                _remove_remote(sftp, posixpath.join(root_dir, rel), have[rel].kind)
                job.deleted += 1
        _finish_dirs(sftp, made)
    return job.outcome(started, skipped=job.skipped, deleted=job.deleted)


def sync(
    fleet: Fleet,
    local_dir: Union[str, os.PathLike[str]],
    remote_dir: str,
    *,
    delete: bool = False,
    timeout: Optional[float] = None,
    on_progress: Optional[Progress] = None,
) -> Responses:
    """Make ``remote_dir`` on every host hold what ``local_dir`` holds (``rsync -a local_dir/ remote_dir/``):
    only files whose size or modification time differ are sent; with ``delete``, what is on a host and not
    here is removed. ``remote_dir`` is created (its last component) when missing."""
    local_path = os.fspath(local_dir)
    if not remote_dir:
        raise UsageError("sync: the remote directory is empty")
    _check_timeout(timeout)
    tree = local_tree(local_path)
    if tree[0].kind != "dir":
        raise UsageError(f"sync: {local_path} is not a directory (use put for a single file)")
    total = sum(e.size for e in tree if e.kind == "file")

    def one(spec: HostSpec) -> Union[Transfer, HostError]:
        job = _Job(spec.name, total, on_progress)
        return _run_host(
            spec.name, timeout, job, lambda: _sync_host(fleet, spec, local_path, tree, remote_dir, delete, job)
        )

    return _each(fleet, "sync", one)
