"""Tab completion for ``sshfleet shell``: commands, agent names, methods, fields, enum values, hosts, groups.

Everything comes from what the shell knows right now (the loaded agents' proto descriptors, the inventory),
through the small ``CompletionSource`` protocol, so the completer is tested without a fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from sshfleet._cli._shell_agents import BUILTIN_AGENTS

SETTINGS = {"timeout": (), "forks": (), "output": ("table", "json", "gathered")}


class CompletionSource(Protocol):
    """What the completer asks the shell."""

    def commands(self) -> list[str]: ...

    def methods(self) -> Mapping[str, Any]:
        """``Method`` and ``agent.Method`` -> MethodDescriptor, for every loaded agent."""
        ...

    def loaded_names(self) -> list[str]: ...

    def host_names(self) -> list[str]: ...

    def group_names(self) -> list[str]: ...


def _starting(word: str, options: Iterable[str], meta: str = "") -> Iterator[Completion]:
    for option in options:
        if option.startswith(word) and option != word:
            yield Completion(option, start_position=-len(word), display_meta=meta)


class ShellCompleter(Completer):
    """Completes the word under the cursor from what the words before it mean."""

    def __init__(self, source: CompletionSource) -> None:
        self.source = source
        self._paths = PathCompleter(file_filter=lambda name: name.endswith(".proto") or "." not in name)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        if text.lstrip().startswith("!"):
            return
        words = text.split()
        if not words or text[-1:].isspace():
            words.append("")
        current, before = words[-1], words[:-1]
        if not before:
            yield from _starting(current, self.source.commands(), "command")
            yield from _starting(current, sorted(self.source.methods()), "method")
            return
        head = before[0]
        if head in ("load",):
            yield from self._agents(document, current)
        elif head in ("unload",):
            yield from _starting(current, self.source.loaded_names(), "agent")
        elif head in ("use", "cd"):
            yield from self._targets(current)
        elif head == "help":
            yield from _starting(current, self.source.commands(), "command")
            yield from _starting(current, sorted(self.source.methods()), "method")
        elif head == "set":
            if len(before) == 1:
                yield from _starting(current, list(SETTINGS), "setting")
            elif len(before) == 2:
                yield from _starting(current, SETTINGS.get(before[1], ()), "value")
        else:
            method = self.source.methods().get(head)
            if method is not None:
                yield from self._fields(method, current, before[1:])

    def _agents(self, document: Document, current: str) -> Iterator[Completion]:
        if "/" in current or current.startswith("."):
            sub = Document(current, len(current))
            yield from self._paths.get_completions(sub, CompleteEvent())
            return
        yield from _starting(current, list(BUILTIN_AGENTS), "built-in agent")

    def _targets(self, current: str) -> Iterator[Completion]:
        """Host and group names after ``use``, ``use +``, ``use -`` and after ``:`` / ``,`` in a pattern."""
        body = current[1:] if current[:1] in ("+", "-") else current
        cut = max(body.rfind(":"), body.rfind(","))
        word = body[cut + 1 :].lstrip("!&")
        yield from _starting(word, self.source.group_names(), "group")
        yield from _starting(word, self.source.host_names(), "host")

    def _fields(self, method: Any, current: str, given: list[str]) -> Iterator[Completion]:
        fields = method.input_type.fields_by_name
        name, eq, value = current.partition("=")
        if not eq:
            used = {word.split("=", 1)[0] for word in given}
            for field_name, field in fields.items():
                if field_name.startswith(name) and field_name not in used:
                    yield Completion(
                        field_name + "=", start_position=-len(current), display_meta=field_type_name(field)
                    )
            return
        field = fields.get(name)
        if field is None:
            return
        if field.enum_type is not None:
            yield from _starting(value, list(field.enum_type.values_by_name), "enum value")
        elif field.type == field.TYPE_BOOL:
            yield from _starting(value, ["True", "False"], "bool")


def field_type_name(field: Any) -> str:
    from google.protobuf.descriptor import FieldDescriptor as FD

    if field.message_type is not None:
        base = field.message_type.name
    elif field.enum_type is not None:
        base = field.enum_type.name
    else:
        names = {v: k[len("TYPE_") :].lower() for k, v in vars(FD).items() if k.startswith("TYPE_")}
        base = names.get(field.type, "?")
    repeated = getattr(field, "is_repeated", None)
    if repeated is None:
        repeated = field.label == field.LABEL_REPEATED
    return f"repeated {base}" if repeated else base
