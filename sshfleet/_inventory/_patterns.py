"""Host selection patterns with Ansible's semantics: ``web:db``, ``web,&prod``, ``all:!bad``, ``~web\\d+``,
``web[0]``, ``web[1:]``.

Follows ansible-core's InventoryManager: terms split on commas if the pattern has one, otherwise on colons and
whitespace (an IPv6 address stays whole); plain terms are applied first, then every ``&`` term, then every ``!``
term; with no plain term the start is ``all``. A plain term that is a host name selects the host; otherwise (and
always after ``&`` or ``!``) a group of that name wins over a host of that name. ``name[i]``, ``name[i:j]``,
``name[i:]`` and ``name[-i]`` subscript the hosts that ``name`` selects, in Ansible's order. The result is in
Ansible's order too: the hosts of each plain term in turn, each host once.

sshfleet's own additions, where Ansible has no answer: brackets on a name that selects nothing are a host range
(``node[01-04,07]``, the label ``--gather`` prints, pasted back), commas inside brackets do not split terms, and a
name that matches no host and no group is an error (a typo must not silently select nothing, or worse, exclude
nothing); a glob or a regex that matches nothing gives an empty selection, as in Ansible.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Mapping, Sequence

from sshfleet._inventory._builder import ALL, Group
from sshfleet._inventory._ranges import _is_ipv6_literal, expand_hostrange, fold_hosts, split_top_level
from sshfleet.errors import InventoryError

_GLOB_CHARS = ("*", "?")
# Ansible's PATTERN_WITH_SUBSCRIPT: a pattern ending in [i], [i:j], [i:] (or the old [i-j]).
_SUBSCRIPT_RE = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
# Ansible's fallback split when the pattern has no comma: runs of anything but whitespace, ':' and brackets, or
# a whole bracketed expression.
_COLON_TERM_RE = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")


def _is_address(text: str) -> bool:
    if text.startswith("[") and "]" in text:
        body, _, rest = text[1:].partition("]")
        return _is_ipv6_literal(body) and (not rest or (rest[0] == ":" and rest[1:].isdigit()))
    return _is_ipv6_literal(text)


def split_pattern(pattern: str) -> list[str]:
    """The terms of a pattern, stripped, empty ones dropped (Ansible's ``split_host_pattern``)."""
    if "," in pattern:
        parts = split_top_level(pattern, ",")
    elif _is_address(pattern.strip()):
        parts = [pattern]
    else:
        parts = _COLON_TERM_RE.findall(pattern)
        lost = _COLON_TERM_RE.sub("", pattern).replace(":", "").split()
        if lost:
            # Ansible would silently drop a stray bracket; a pattern that loses characters is a mistake.
            why = "unclosed '['" if "[" in "".join(lost) else "']' without '['"
            raise InventoryError(f"bad host pattern {pattern!r}: {why}")
    return [term.strip() for term in parts if term.strip()]


def order_terms(terms: list[str]) -> list[str]:
    """Plain terms, then ``&`` terms, then ``!`` terms; ``all`` when there is no plain term."""
    plain = [t for t in terms if t[0] not in "&!"]
    narrowing = [t for t in terms if t[0] == "&"]
    excluding = [t for t in terms if t[0] == "!"]
    return (plain or [ALL]) + narrowing + excluding


class Matcher:
    """Evaluates patterns against one inventory's hosts (in order) and groups (``all`` and ``ungrouped``
    first, then in the order they were made, as Ansible keeps them)."""

    def __init__(self, host_names: Sequence[str], groups: Mapping[str, Group], source: str) -> None:
        self.host_names = list(host_names)
        self.hosts = set(host_names)
        self.groups = groups
        self.source = source

    def select(self, pattern: str) -> list[str]:
        """Host names selected by ``pattern``, in Ansible's order, each once."""
        text = pattern.strip()
        if not text:
            raise InventoryError("empty host pattern (use 'all' to select every host)")
        if text in self.hosts:
            return [text]
        selected: list[str] = []
        for term in order_terms(split_pattern(text)):
            if term in self.hosts:
                selected.append(term)  # a plain term naming a host selects it, even if a group has the name
                continue
            found = self.match_term(term[1:].strip() if term[0] in "&!" else term)
            if term[0] == "!":
                drop = set(found)
                selected = [h for h in selected if h not in drop]
            elif term[0] == "&":
                keep = set(found)
                selected = [h for h in selected if h in keep]
            else:
                selected.extend(found)
        return list(dict.fromkeys(selected))

    def match_term(self, term: str) -> list[str]:
        """The hosts one term (without ``&``/``!``) selects, in Ansible's order."""
        if not term:
            raise InventoryError("'&' or '!' with nothing after it in a host pattern")
        if term.startswith("~"):
            return self._enumerate(term)[0]
        m = _SUBSCRIPT_RE.match(term)
        if m is not None:
            subscripted, named = self._enumerate(m.group(1))
            if named:
                return self._subscript(subscripted, m, term) if subscripted else []
        if "[" in term or "]" in term:
            try:
                pieces = expand_hostrange(term)
            except InventoryError as exc:
                if any(ch in term for ch in _GLOB_CHARS):
                    return self._enumerate(term)[0]
                raise InventoryError(f"in host pattern {term!r}: {exc}") from exc
        else:
            pieces = [term]
        found: list[str] = []
        unknown: list[str] = []
        for piece in pieces:
            if piece.startswith("[") and piece.endswith("]"):
                piece = piece[1:-1]  # [::1] names the host ::1
            matched, named = self._enumerate(piece)
            if not named and not any(ch in piece for ch in _GLOB_CHARS):
                unknown.append(piece)
            found.extend(matched)
        if unknown:
            raise InventoryError(self._unknown_message(unknown))
        return list(dict.fromkeys(found))

    @staticmethod
    def _subscript(found: list[str], m: re.Match[str], term: str) -> list[str]:
        index, start, end = m.group(2), m.group(3), m.group(5)
        if index is not None:
            try:
                return [found[int(index)]]
            except IndexError:
                raise InventoryError(
                    f"no hosts matched the subscripted pattern {term!r} ({len(found)} hosts to pick from)"
                ) from None
        last = int(end) if end else -1
        if last == -1:
            last = len(found) - 1
        elif last == 0:
            # Ansible reads an end of 0 as "no end given": [i:0] is the single host i.
            try:
                return [found[int(start)]]
            except IndexError:
                raise InventoryError(f"no hosts matched the subscripted pattern {term!r}") from None
        return found[int(start) : last + 1]

    def _enumerate(self, pattern: str) -> tuple[list[str], bool]:
        """Ansible's ``_enumerate_matches``: the hosts of every group the pattern matches (fnmatch, or a regex
        after ``~``), then matching hosts if no group matched or the pattern has ``. ? * [`` or ``~``; and
        whether any group or host matched at all (an empty group is a name, not a typo)."""
        if pattern.startswith("~"):
            try:
                with warnings.catch_warnings():
                    # "possible nested set" FutureWarnings are about future Python versions, not the user's intent.
                    warnings.simplefilter("ignore", FutureWarning)
                    regex = re.compile(pattern[1:])
            except re.error as exc:
                raise InventoryError(f"bad regular expression in host pattern {pattern!r}: {exc}") from exc

            def matches(name: str) -> bool:
                return regex.match(name) is not None  # anchored at the start, not at the end, as in Ansible

        else:

            def matches(name: str) -> bool:
                return fnmatch.fnmatchcase(name, pattern)

        found: list[str] = []
        groups = [name for name in self.groups if matches(name)]
        for name in groups:
            found.extend(self.groups[name].hosts)
        hosts: list[str] = []
        if not groups or pattern[0] == "~" or any(ch in pattern for ch in ".?*["):
            hosts = [name for name in self.host_names if matches(name)]
        return list(dict.fromkeys([*found, *hosts])), bool(groups or hosts)

    def _unknown_message(self, unknown: list[str]) -> str:
        if len(unknown) == 1:
            message = f"no host or group named {unknown[0]!r} in {self.source}"
            import difflib  # only for the error message: not on every run's path

            close = difflib.get_close_matches(unknown[0], [*self.groups, *self.host_names], n=3)
            if close:
                message += f" (did you mean {', '.join(repr(c) for c in close)}?)"
            return message
        return f"{len(unknown)} names match no host or group in {self.source}: {fold_hosts(unknown)}"
