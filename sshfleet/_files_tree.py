"""What a transfer copies: local and remote trees walked into ``Entry`` lists, and names made safe.

Kept apart from the transfers themselves (``_files.py``): this part only reads, and decides nothing about hosts,
deadlines or atomic writes.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sshfleet.errors import ChannelError, UsageError

if TYPE_CHECKING:
    from sshfleet._ssh._seam import SftpSession

# --- what to copy ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One item of a tree: ``rel`` is its "/"-separated path under the root ("" for the root itself)."""

    rel: str
    kind: str  # "file", "dir" or "link"
    size: int
    mode: int
    mtime: int
    target: str = ""  # a link's target


def local_tree(path: str) -> list[Entry]:
    """``path`` (followed if a symlink) and, for a directory, everything under it, parents before children.

    Raises UsageError naming the path when it does not exist or cannot be read: a caller's mistake, the same
    for every host, found before anything goes on the network."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISREG(info.st_mode):
        return [Entry("", "file", info.st_size, stat.S_IMODE(info.st_mode), int(info.st_mtime))]
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path} is neither a file nor a directory")
    entries = [Entry("", "dir", 0, stat.S_IMODE(info.st_mode), int(info.st_mtime))]

    def walk(directory: str, rel: str) -> None:
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise UsageError(f"cannot list {directory}: {exc.strerror or exc}") from exc
        for item in items:
            sub = f"{rel}/{item.name}" if rel else item.name
            st = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(sub, "link", 0, 0o777, int(st.st_mtime), os.readlink(item.path)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(sub, "dir", 0, stat.S_IMODE(st.st_mode), int(st.st_mtime)))
                walk(item.path, sub)
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(sub, "file", st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)))

    walk(path, "")
    return entries


def _safe_name(name: str, host: str, where: str) -> str:
    """A name a host listed, refused if it could climb out of the directory it was listed in."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ChannelError(host, f"listing {where}: the host returned an unusable name {name!r}")
    return name


def remote_tree(sftp: SftpSession, path: str, kind: str, size: int, mode: int, mtime: int) -> list[Entry]:
    """The remote ``path`` (already stat'ed) and, for a directory, everything under it, parents first."""
    entries = [Entry("", kind, size, mode, mtime)]
    if kind != "dir":
        return entries

    def walk(directory: str, rel: str) -> None:
        for name, st in sorted(sftp.listdir(directory)):
            _safe_name(name, sftp.host, directory)
            sub = f"{rel}/{name}" if rel else name
            full = posixpath.join(directory, name)
            if st.kind == "link":
                entries.append(Entry(sub, "link", 0, 0o777, st.mtime, sftp.readlink(full)))
            elif st.kind == "dir":
                entries.append(Entry(sub, "dir", 0, st.mode, st.mtime))
                walk(full, sub)
            elif st.kind == "file":
                entries.append(Entry(sub, "file", st.size, st.mode, st.mtime))

    walk(path, "")
    return entries


def host_dir_name(host: str) -> str:
    """The directory name of a host's copies under LOCAL_DIR: the host's name, made safe for a path."""
    name = host.replace(os.sep, "_").replace("\0", "_")
    return "_" if name in ("", ".", "..") else name
