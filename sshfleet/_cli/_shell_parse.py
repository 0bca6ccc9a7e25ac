"""Parsing for ``sshfleet shell`` and ``sshfleet call``: words of a line, and ``field=value`` arguments.

Pure functions over strings and protobuf descriptors (no SSH, no terminal), so all of it is unit-tested.

Values are Python literals (``3``, ``2.5``, ``'text'``, ``[1, 2]``, ``{'port': 80}``, ``True``), read with
``ast.literal_eval`` so nothing is ever executed. Where the proto says what a field holds, a bare word is
taken as the user meant it: text for a ``string`` field (``message=hello``), an enum value's name for an enum
(``signal=SIGINT``), ``true``/``false`` for a ``bool``, as Ansible's ``key=value`` arguments do.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from sshfleet.errors import UsageError

_OPENERS = {"[": "]", "{": "}", "(": ")"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/:@]*")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
LITERAL_HELP = "values are Python literals: 3, 2.5, 'text', [1, 2], {'key': 1}, True"


def split_words(line: str) -> list[str]:
    """``line`` cut at whitespace outside quotes and brackets; quotes are kept, so literals survive whole, and
    a word starting with ``#`` starts a comment.

    ``Run argv=['ls', '-l /tmp'] env={'A': '1 2'}`` gives three words. Raises UsageError for an unterminated
    string or an unbalanced bracket.
    """
    words: list[str] = []
    current: list[str] = []
    stack: list[str] = []
    quote: Optional[str] = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quote is not None:
            current.append(ch)
            if ch == "\\" and i + 1 < len(line):
                current.append(line[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch in _OPENERS:
            stack.append(ch)
            current.append(ch)
        elif ch in _CLOSERS:
            if not stack or stack[-1] != _CLOSERS[ch]:
                raise UsageError(f"unbalanced {ch!r} at column {i + 1}")
            stack.pop()
            current.append(ch)
        elif ch.isspace() and not stack:
            if current:
                words.append("".join(current))
                current = []
        elif ch == "#" and not current and not stack:
            break  # a comment, as in sh: from a '#' that starts a word to the end of the line
        else:
            current.append(ch)
        i += 1
    if quote is not None:
        raise UsageError(f"unterminated string: missing closing {quote}")
    if stack:
        raise UsageError(f"unclosed {stack[-1]!r}: missing {_OPENERS[stack[-1]]!r}")
    if current:
        words.append("".join(current))
    return words


def split_assignments(words: Sequence[str]) -> list[tuple[str, str]]:
    """``["seconds=2", "message=hi"]`` -> ``[("seconds", "2"), ("message", "hi")]``; each word must be
    ``field=value`` with a field name before the ``=``, and no field given twice."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for word in words:
        name, eq, text = word.partition("=")
        if not eq or not _FIELD.fullmatch(name):
            raise UsageError(f"expected field=value, got {word!r}")
        if name in seen:
            raise UsageError(f"field {name!r} is given twice")
        seen.add(name)
        pairs.append((name, text))
    return pairs


def _is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def _field_kind(field: Any) -> str:
    """One word for how a bare word is read: "string", "bytes", "bool", "enum", or "other"."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    if _is_repeated(field):
        return "other"
    return {FD.TYPE_STRING: "string", FD.TYPE_BYTES: "bytes", FD.TYPE_BOOL: "bool", FD.TYPE_ENUM: "enum"}.get(
        field.type, "other"
    )


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is None:  # protobuf < 5.29
        return bool(field.label == field.LABEL_REPEATED)
    return bool(repeated)


def parse_value(text: str, field: Any = None, *, where: str = "") -> object:
    """The Python value ``text`` stands for, read for ``field`` (a FieldDescriptor, or None: literals only).

    Raises UsageError naming the field when ``text`` is neither a literal nor a bare word the field accepts.
    """
    kind = _field_kind(field) if field is not None else "other"
    label = f"{where}field '{field.name}'" if field is not None else f"{where}value"
    if kind == "string" and not _is_quoted(text):
        return text  # message=hello world (one shell word), port=80 as text
    if kind == "bytes" and not _is_quoted(text) and not text.startswith(("b'", 'b"')):
        return text.encode()
    if kind == "bool" and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text and _WORD.fullmatch(text):
        return text  # an enum value's name (checked by build_request), or a word inside a dict
    shown = text if len(text) <= 40 else text[:37] + "..."
    raise UsageError(f"{label}: {shown!r} is not a value ({LITERAL_HELP})")


def parse_fields(method: Any, words: Sequence[str], *, agent: str = "") -> dict[str, object]:
    """The request fields of ``method`` (a MethodDescriptor) from ``field=value`` words.

    Unknown names are reported with the fields the request has; values go through ``parse_value``. The
    values' types are checked later by ``build_request``, which names the field and its proto type.
    """
    fields = method.input_type.fields_by_name
    where = f"{agent}.{method.name}: " if agent else f"{method.name}: "
    out: dict[str, object] = {}
    for name, text in split_assignments(words):
        field = fields.get(name)
        if field is None:
            known = ", ".join(fields) or "(none)"
            raise UsageError(f"{where}no field {name!r}; fields: {known}")
        out[name] = parse_value(text, field, where=where)
    return out


# --- shell lines ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One shell input line, classified: ``kind`` is "empty", "bang" (``!cmd``, ``rest`` the command line),
    "builtin" (``word`` a shell command), or "call" (``word`` the ``[agent.]Method``); ``args`` the rest."""

    kind: str
    word: str = ""
    args: tuple[str, ...] = ()
    rest: str = ""


def classify_line(line: str, builtins: Sequence[str]) -> Line:
    """What ``line`` asks for. ``!cmd`` keeps the command line verbatim (its quoting is the remote shell's);
    ``!!`` is kept as the word ``!!`` for the caller to repeat the last command; ``=`` and ``?`` are builtins
    when listed in ``builtins``."""
    text = line.strip()
    if not text or text.startswith("#"):
        return Line("empty")
    if text.startswith("!"):
        if text == "!!":
            return Line("bang", word="!!")
        return Line("bang", rest=text[1:].strip())
    words = split_words(text)
    head, args = words[0], tuple(words[1:])
    if head in builtins:
        return Line("builtin", word=head, args=args, rest=" ".join(args))
    return Line("call", word=head, args=args)


def split_target(word: str) -> tuple[Optional[str], str]:
    """``agent.Method`` -> (agent, Method); ``Method`` -> (None, Method)."""
    agent, dot, method = word.rpartition(".")
    return (agent, method) if dot else (None, word)


# --- sshfleet call --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallWords:
    """``sshfleet call``'s positional words, sorted out: [PATTERN] AGENT Method [field=value ...]."""

    pattern: Optional[str]
    agent: str
    method: str
    assignments: tuple[str, ...]


def split_call_words(words: Sequence[str], *, with_inventory: bool) -> CallWords:
    """Tell PATTERN from AGENT: with an inventory, the first word is a pattern when the second names an agent
    (a built-in's name or a .proto) and the third is a method, not ``field=value``."""
    from sshfleet._cli._shell_agents import builtin_name, is_proto_path

    def is_agent(word: str) -> bool:
        return builtin_name(word) is not None or is_proto_path(word)

    rest = list(words)
    pattern = None
    if with_inventory and len(rest) >= 3 and is_agent(rest[1]) and "=" not in rest[2]:
        pattern, rest = rest[0], rest[1:]
    if len(rest) < 2 or "=" in rest[0] or "=" in rest[1]:
        raise UsageError("give AGENT Method [field=value ...] (AGENT: a built-in agent's name or a .proto)")
    return CallWords(pattern, rest[0], rest[1], tuple(rest[2:]))
