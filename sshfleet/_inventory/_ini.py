"""Ansible's INI inventory: ``[group]``, ``[group:children]``, ``[group:vars]``, ``host key=value ...``.

Follows ansible-core's ini plugin: hosts before the first section are ``ungrouped``, host lines are split like
a shell line (quotes, trailing ``# comment``), ``[g:vars]`` and ``[g:children]`` must name groups defined
somewhere in the file. Values stay strings; quotes around a whole value are removed.
"""

from __future__ import annotations

import ast
import re
import shlex

from sshfleet._inventory._builder import UNGROUPED, Builder, VarValue
from sshfleet._inventory._ranges import _is_ipv6_literal

SECTION_RE = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
_GROUP_NAME_RE = re.compile(r"^([^:\]\s]+)\s*(?:[#;].*)?$")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_COMMENT_RE = re.compile(r"\s+[#;].*$")
SECTION_KINDS = ("hosts", "children", "vars")


def looks_like_host_with_brackets(line: str) -> bool:
    """``[::1]:22`` or ``[fe80::1]`` on a line of its own is a host, not a malformed section header."""
    end = line.find("]")
    return end > 0 and _is_ipv6_literal(line[1:end])


def _unquote(value: str, builder: Builder, lineno: int) -> str:
    """A ``[g:vars]`` value: ``"a b"`` -> ``a b``; an unquoted value loses a trailing `` # comment``."""
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = 1
        while end < len(value) and value[end] != quote:
            end += 2 if value[end] == "\\" else 1
        if end >= len(value):
            raise builder.error(f"unclosed {quote} in value {value!r}", lineno)
        rest = value[end + 1 :].strip()
        if rest and rest[0] not in "#;":
            raise builder.error(f"text after the closing quote in value {value!r}", lineno)
        quoted = value[: end + 1]
        try:
            literal = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            return quoted[1:-1]
        return literal if isinstance(literal, str) else quoted[1:-1]
    return _TRAILING_COMMENT_RE.sub("", value)


def _var_line(line: str, builder: Builder, lineno: int) -> tuple[str, str]:
    if "=" not in line:
        raise builder.error(f"expected key=value in a vars section, got {line!r}", lineno)
    key, value = (part.strip() for part in line.split("=", 1))
    if not _VAR_NAME_RE.match(key):
        raise builder.error(f"bad variable name {key!r} (letters, digits and _ only)", lineno)
    return key, _unquote(value, builder, lineno)


def _host_line(line: str, group: str, builder: Builder, lineno: int) -> None:
    try:
        # shlex is slow; most lines have nothing for it to do (20k-host inventories load 3x faster).
        tokens = shlex.split(line, comments=True) if any(c in line for c in "'\"\\#") else line.split()
    except ValueError as exc:
        raise builder.error(f"cannot split host line ({exc}): {line!r}", lineno) from exc
    if not tokens:
        return
    host_vars: dict[str, str] = {}
    for token in tokens[1:]:
        if "=" not in token:
            raise builder.error(f"expected key=value host variable after the host name, got {token!r}", lineno)
        key, value = token.split("=", 1)
        if not _VAR_NAME_RE.match(key):
            raise builder.error(f"bad variable name {key!r} (letters, digits and _ only)", lineno)
        host_vars[key] = value
    builder.add_hosts(group, tokens[0], lineno, host_vars)


def parse_ini(text: str, builder: Builder) -> None:
    """Fill ``builder`` from INI ``text``; raises InventoryError at the first bad line.

    As Ansible's ini plugin, a child named in ``[g:children]`` before any section of its own is attached to
    ``g`` only when its section appears: that decides the order of ``g``'s children, hence of its hosts.
    """
    group, kind = UNGROUPED, "hosts"
    pending: dict[str, list[tuple[str, int]]] = {}  # child -> (parent, line) waiting for the child's section
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[" and not looks_like_host_with_brackets(line):
            m = SECTION_RE.match(line)
            if m:
                group, kind = m.group(1), m.group(2) or "hosts"
                if kind not in SECTION_KINDS:
                    raise builder.error(
                        f"unknown section kind {kind!r} in {line!r} (expected :children, :vars or none)",
                        lineno,
                    )
                if kind == "vars":
                    builder.group_vars(group, lineno)
                else:
                    builder.declare_group(group, lineno)
                    for parent, named_at in pending.pop(group, []):
                        builder.add_child(parent, group, named_at)
                continue
            if _TRAILING_COMMENT_RE.sub("", line).endswith("]") and "[" not in line[1:]:
                raise builder.error(
                    f"bad section header {line!r}: expected [group], [group:children] or [group:vars] with no spaces",
                    lineno,
                )
        if kind == "hosts":
            _host_line(line, group, builder, lineno)
        elif kind == "children":
            m = _GROUP_NAME_RE.match(line)
            if not m:
                raise builder.error(f"expected one group name in [{group}:children], got {line!r}", lineno)
            child = m.group(1)
            if child in builder.groups:
                builder.add_child(group, child, lineno)
            else:
                pending.setdefault(child, []).append((group, lineno))
        else:
            key, value = _var_line(line, builder, lineno)
            builder.group_vars(group, lineno)[key] = VarValue(value, builder.path, lineno)
    for child, parents in pending.items():
        for parent, named_at in parents:
            builder.add_child(parent, child, named_at)  # never defined: check_declared names it
