"""Host ranges: ``node[01:32]`` (Ansible), ``node[01-04,07]`` (pdsh), and the inverse used to label hosts.

Expansion is shared by every inventory format and by selection patterns, so ``fold_hosts`` output pasted back
into ``-H`` selects the same hosts. Errors are InventoryError without a location; the file parsers re-raise
them with ``path:line``.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import string
from collections.abc import Iterable

from sshfleet.errors import InventoryError

# A typo such as node[1:1000000] must fail fast instead of eating the controller's memory.
MAX_EXPANSION = 100_000

_LETTERS = string.ascii_letters  # Ansible's alphabet for [a:f]: lower case, then upper case.
_SINGLE_RE = re.compile(r"^[A-Za-z0-9]+$")
_LAST_NUMBER_RE = re.compile(r"^(.*?)(\d+)(\D*)$")


def _is_ipv6_literal(body: str) -> bool:
    """``[::1]`` is an address, not a range; only a real IPv6 address is left as written."""
    if ":" not in body:
        return False
    try:
        ipaddress.IPv6Address(body.split("%", 1)[0])
    except ValueError:
        return False
    return True


def split_top_level(text: str, separators: str) -> list[str]:
    """Split on ``separators`` outside ``[...]``, so ``node[01-04,07],web1`` has two parts."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(depth - 1, 0)
        elif ch in separators and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _bad(text: str, why: str) -> InventoryError:
    return InventoryError(f"bad host range {text!r}: {why}")


def _expand_element(element: str, text: str) -> list[str]:
    """One comma-separated element of a bracket: ``7``, ``01-04``, ``a:f`` or ``01:32:2``."""
    if not element:
        raise _bad(text, "empty element inside [...]")
    step_text = "1"
    if ":" in element:
        bounds = element.split(":")
        if len(bounds) not in (2, 3):
            raise _bad(text, f"{element!r} must be begin:end or begin:end:step")
        lo, hi = bounds[0] or "0", bounds[1]  # Ansible reads [:5] as [0:5]
        if len(bounds) == 3:
            step_text = bounds[2]
    elif "-" in element:
        bounds = element.split("-")
        if len(bounds) != 2 or not bounds[0]:
            raise _bad(text, f"{element!r} must be begin-end")
        lo, hi = bounds
    else:
        if not _SINGLE_RE.match(element):
            raise _bad(text, f"{element!r} is neither a number, a letter range nor a number range")
        return [element]
    if not hi:
        raise _bad(text, f"{element!r} has no end")
    if not step_text.isdigit() or int(step_text) == 0:
        raise _bad(text, f"step {step_text!r} must be a positive integer")
    step = int(step_text)
    if len(lo) == 1 and len(hi) == 1 and lo in _LETTERS and hi in _LETTERS:
        i_lo, i_hi = _LETTERS.index(lo), _LETTERS.index(hi)
        if i_lo > i_hi:
            raise _bad(text, f"begin {lo!r} comes after end {hi!r}")
        return list(_LETTERS[i_lo : i_hi + 1 : step])
    if not (lo.isdigit() and hi.isdigit()):
        raise _bad(text, f"{element!r} must be two numbers or two letters")
    # As Ansible: the begin's zero padding sets the width (and the end must be as wide); [8:010] is 8 9 10.
    padded = len(lo) > 1 and lo[0] == "0"
    if padded and len(lo) != len(hi):
        raise _bad(text, f"zero-padded {element!r} needs begin and end of the same width")
    n_lo, n_hi = int(lo), int(hi)
    if n_lo > n_hi:
        raise _bad(text, f"begin {lo} is greater than end {hi}")
    count = (n_hi - n_lo) // step + 1
    if count > MAX_EXPANSION:
        raise _bad(text, f"{count} names is more than the limit of {MAX_EXPANSION}")
    width = len(lo) if padded else 0
    return [str(n).zfill(width) for n in range(n_lo, n_hi + 1, step)]


def _expand_part(part: str, text: str) -> list[str]:
    segments: list[list[str]] = []
    literal: list[str] = []
    i = 0
    while i < len(part):
        ch = part[i]
        if ch == "[":
            end = part.find("]", i + 1)
            if end < 0:
                raise _bad(text, "unclosed '['")
            body = part[i + 1 : end]
            if "[" in body:
                raise _bad(text, "'[' inside [...]")
            if _is_ipv6_literal(body):
                literal.append(part[i : end + 1])
            else:
                segments.append(["".join(literal)])
                literal = []
                alternatives: list[str] = []
                for element in body.split(","):
                    alternatives.extend(_expand_element(element, text))
                segments.append(alternatives)
            i = end + 1
        elif ch == "]":
            raise _bad(text, "']' without '['")
        else:
            literal.append(ch)
            i += 1
    segments.append(["".join(literal)])
    total = 1
    for alternatives in segments:
        total *= len(alternatives)
    if total > MAX_EXPANSION:
        raise _bad(text, f"{total} names is more than the limit of {MAX_EXPANSION}")
    return ["".join(combo) for combo in itertools.product(*segments)]


def expand_hostrange(text: str) -> list[str]:
    """Expand every range in ``text`` into host names, in order, without duplicates.

    ``node[01:32]`` and ``node[01-32]`` keep the zero padding of the bounds, ``[a:f]`` is a letter range,
    ``[01:32:2]`` has a stride, ``[01-04,07]`` lists several elements, several brackets multiply (the first
    varies slowest), and top-level commas separate host lists: ``node[1-2],web1``. ``[::1]`` (an IPv6
    address) is left as written. Raises InventoryError for a malformed range.
    """
    text = text.strip()
    if not any(ch in text for ch in "[],"):
        return [text] if text else []
    names: dict[str, None] = {}
    for part in split_top_level(text, ","):
        part = part.strip()
        if part:
            names.update(dict.fromkeys(_expand_part(part, text)))
    return list(names)


def _fold_numbers(numbers: list[str]) -> list[str]:
    """Bracket elements for the digit strings of one prefix/suffix, each padding kept exactly."""
    padded_widths = {len(s) for s in numbers if len(s) > 1 and s[0] == "0"}
    classes: dict[int, set[int]] = {}
    for s in numbers:
        # "10" belongs with "08" and "09" when width-2 names exist; otherwise it is a plain number.
        width = len(s) if len(s) in padded_widths else 0
        classes.setdefault(width, set()).add(int(s))
    elements: list[tuple[int, str]] = []
    for width, values in classes.items():
        ordered = sorted(values)
        run_start = previous = ordered[0]
        for value in [*ordered[1:], None]:
            if value is not None and value == previous + 1:
                previous = value
                continue
            lo, hi = str(run_start).zfill(width), str(previous).zfill(width)
            elements.append((run_start, lo if run_start == previous else f"{lo}-{hi}"))
            if value is not None:
                run_start = previous = value
    elements.sort()
    return [text for _, text in elements]


def fold_hosts(names: Iterable[str]) -> str:
    """The shortest usual label for a set of host names: ``node01..04, node07`` -> ``node[01-04,07]``.

    Names fold on their last number; groups with different prefixes or suffixes are joined with commas in
    sorted order, so the same set always gives the same text, whatever the input order. The result expands
    back to the same set with ``expand_hostrange`` (names that themselves contain ``[``, ``]`` or ``,`` are
    kept as written and do not round-trip).
    """
    groups: dict[tuple[str, str, int], list[str]] = {}
    for name in dict.fromkeys(names):
        m = _LAST_NUMBER_RE.match(name)
        if m is None or any(ch in name for ch in "[],"):
            groups.setdefault((name, "", 0), [])
        else:
            groups.setdefault((m.group(1), m.group(3), 1), []).append(m.group(2))
    labels: list[str] = []
    for (prefix, suffix, foldable), numbers in sorted(groups.items()):
        if not foldable:
            labels.append(prefix)
            continue
        elements = _fold_numbers(numbers)
        if len(elements) == 1 and "-" not in elements[0]:
            labels.append(f"{prefix}{elements[0]}{suffix}")
        else:
            labels.append(f"{prefix}[{','.join(elements)}]{suffix}")
    return ",".join(labels)
