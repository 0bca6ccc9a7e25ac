"""Plain host lists (``hosts.conf`` style): one ``[user@]host[:port]`` a line, ranges, ``#`` comments."""

from __future__ import annotations

import re

from sshfleet._inventory._builder import UNGROUPED, Builder

_TRAILING_COMMENT_RE = re.compile(r"\s+#.*$")


def parse_plain(text: str, builder: Builder) -> None:
    """Fill ``builder`` (made with ``strict_duplicates``) from a host list; InventoryError on a bad line."""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _TRAILING_COMMENT_RE.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        if len(tokens) != 1:
            raise builder.error(f"one host per line, got {line!r}", lineno)
        if "=" in line:
            raise builder.error(
                f"host variables are not allowed in a host list: {line!r} (use an INI or YAML inventory)",
                lineno,
            )
        builder.add_hosts(UNGROUPED, line, lineno, {})
