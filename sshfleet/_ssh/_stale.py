"""Directories a controller leaves on its own machine when it is SIGKILLed, and their sweeping.

Both transports keep their sockets in private directories named ``<prefix><pid>-<random>`` (the OpenSSH masters'
control sockets, the paramiko forwards' Unix sockets). A controller killed with SIGKILL cannot remove them; the
next controller to start removes those whose owner is gone.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
from typing import Optional


def sweep_dead_owners(base: str, prefix: str, busy_marker: Optional[str] = None) -> list[str]:
    """Remove the directories ``base/<prefix><pid>-*`` that are ours (uid) and whose pid is gone (and, with
    ``busy_marker``, that no longer hold that file); returns what went."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(base), f"{prefix}*-*")):
        pid = os.path.basename(path)[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if busy_marker is not None and os.path.exists(os.path.join(path, busy_marker)):
            continue
        try:
            info = os.lstat(path)
            if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
                continue
            os.kill(int(pid), 0)
            continue  # its owner still runs
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed
