"""Host selection patterns with Ansible's semantics: ``web:db``, ``web,&prod``, ``all:!bad``, ``~web\\d+``.

Terms are split on commas when the pattern has one outside brackets, otherwise on colons (so IPv6 names work
with commas). Plain terms are applied first, then every ``&`` term, then every ``!`` term, whatever their
position; with no plain term the start is ``all``. Brackets are host ranges, as in inventories: the label
``node[01-04,07]`` printed by ``--gather`` can be pasted back as a pattern.

A name that matches no host and no group is an error (a typo must not silently select nothing, or worse,
exclude nothing); a glob or a regex that matches nothing gives an empty selection.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from collections.abc import Mapping, Sequence

from sshfleet._inventory._builder import Group
from sshfleet._inventory._ranges import expand_hostrange, fold_hosts, split_top_level
from sshfleet.errors import InventoryError

_GLOB_CHARS = ("*", "?")


def split_pattern(pattern: str) -> list[str]:
    """The terms of a pattern, stripped, empty ones dropped."""
    separators = "," if len(split_top_level(pattern, ",")) > 1 else ":"
    return [term.strip() for term in split_top_level(pattern, separators) if term.strip()]


class Matcher:
    """Evaluates patterns against one inventory's host order and groups."""

    def __init__(self, host_names: Sequence[str], groups: Mapping[str, Group], source: str) -> None:
        self.host_names = list(host_names)
        self.hosts = set(host_names)
        self.groups = groups
        self.source = source

    def select(self, pattern: str) -> list[str]:
        """Host names selected by ``pattern``, in inventory order, each once."""
        text = pattern.strip()
        if not text:
            raise InventoryError("empty host pattern (use 'all' to select every host)")
        if text in self.hosts:
            return [text]
        terms = split_pattern(text)
        plain = [t for t in terms if t[0] not in "&!"]
        narrowing = [t for t in terms if t[0] == "&"]
        excluding = [t for t in terms if t[0] == "!"]
        selected: set[str] = set()
        for term in plain or ["all"]:
            selected |= self.match_term(term)
        for term in narrowing:
            selected &= self.match_term(term[1:].strip())
        for term in excluding:
            selected -= self.match_term(term[1:].strip())
        return [name for name in self.host_names if name in selected]

    def match_term(self, term: str) -> set[str]:
        if not term:
            raise InventoryError("'&' or '!' with nothing after it in a host pattern")
        if term.startswith("~"):
            return self._match_regex(term)
        try:
            pieces = expand_hostrange(term) if "[" in term or "]" in term else [term]
        except InventoryError as exc:
            raise InventoryError(f"in host pattern {term!r}: {exc}") from exc
        found: set[str] = set()
        unknown: list[str] = []
        for piece in pieces:
            if piece.startswith("[") and piece.endswith("]"):
                piece = piece[1:-1]  # [::1] names the host ::1
            if any(ch in piece for ch in _GLOB_CHARS):
                found |= self._match_glob(piece)
            elif piece in self.hosts:
                found.add(piece)  # a host wins over a group of the same name, as in Ansible
            elif piece in self.groups:
                found.update(self.groups[piece].hosts)
            else:
                unknown.append(piece)
        if unknown:
            raise InventoryError(self._unknown_message(unknown))
        return found

    def _match_glob(self, glob: str) -> set[str]:
        found: set[str] = set()
        for name, group in self.groups.items():
            if fnmatch.fnmatchcase(name, glob):
                found.update(group.hosts)
        found.update(name for name in self.host_names if fnmatch.fnmatchcase(name, glob))
        return found

    def _match_regex(self, term: str) -> set[str]:
        try:
            with warnings.catch_warnings():
                # "possible nested set" FutureWarnings are about future Python versions, not the user's intent.
                warnings.simplefilter("ignore", FutureWarning)
                regex = re.compile(term[1:])
        except re.error as exc:
            raise InventoryError(f"bad regular expression in host pattern {term!r}: {exc}") from exc
        # re.match, as Ansible: anchored at the start, not at the end.
        found: set[str] = set()
        for name, group in self.groups.items():
            if regex.match(name):
                found.update(group.hosts)
        found.update(name for name in self.host_names if regex.match(name))
        return found

    def _unknown_message(self, unknown: list[str]) -> str:
        if len(unknown) == 1:
            message = f"no host or group named {unknown[0]!r} in {self.source}"
            close = difflib.get_close_matches(unknown[0], [*self.groups, *self.host_names], n=3)
            if close:
                message += f" (did you mean {', '.join(repr(c) for c in close)}?)"
            return message
        return f"{len(unknown)} names match no host or group in {self.source}: {fold_hosts(unknown)}"
