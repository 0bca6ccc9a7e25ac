"""Ansible's YAML inventory (``all: {hosts, vars, children}``) and ``group_vars``/``host_vars`` files.

The document is walked as PyYAML *nodes*, not Python objects, so every error names its line and every var
keeps the text the user wrote (``yes`` stays ``yes``, ``0755`` stays ``0755``).
"""

from __future__ import annotations

from typing import Any, Optional

from sshfleet._inventory._builder import ALL, Builder, VarValue
from sshfleet.errors import InventoryError

GROUP_KEYS = ("hosts", "vars", "children")
_NULL_TAG = "tag:yaml.org,2002:null"


def _line(node: Any) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Any) -> str:
    import yaml  # type: ignore[import-untyped]

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the scalar {node.value!r}"


class _Reader:
    """One YAML source: its loader (for merge keys and constructing lists) and the path for errors."""

    def __init__(self, text: str, path: str) -> None:
        import yaml  # type: ignore[import-untyped]

        self.yaml = yaml
        self.path = path
        # libyaml's parser when PyYAML has it: 10x faster on large inventories, same nodes and marks.
        self.loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)

    def error(self, message: str, node: Any) -> InventoryError:
        return InventoryError(message, self.path, _line(node))

    def root(self) -> Any:
        """The single document's root node, or None for an empty file."""
        try:
            return self.loader.get_single_node()
        except self.yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = " ".join(part for part in (exc.context, exc.problem) if part)
            raise InventoryError(f"invalid YAML: {problem}", self.path, line) from exc
        except self.yaml.YAMLError as exc:
            raise InventoryError(f"invalid YAML: {exc}", self.path, 1) from exc
        finally:
            self.loader.dispose()

    def is_null(self, node: Any) -> bool:
        return isinstance(node, self.yaml.ScalarNode) and node.tag == _NULL_TAG

    def mapping(self, node: Any, what: str) -> list[tuple[Any, Any]]:
        """The (key, value) node pairs of a mapping, with ``<<`` merges applied; null is an empty mapping."""
        if self.is_null(node):
            return []
        if not isinstance(node, self.yaml.MappingNode):
            raise self.error(f"{what} must be a mapping, got {_kind(node)}", node)
        try:
            self.loader.flatten_mapping(node)
        except self.yaml.MarkedYAMLError as exc:
            raise self.error(f"bad merge key in {what}: {exc.problem}", node) from exc
        return list(node.value)

    def name(self, node: Any, what: str) -> str:
        if not isinstance(node, self.yaml.ScalarNode) or self.is_null(node) or node.value == "":
            raise self.error(f"{what} must be a non-empty string, got {_kind(node)}", node)
        return str(node.value)

    def value(self, node: Any) -> Optional[str]:
        """A var's value as a string; None for an ansible-vault value, which sshfleet cannot decrypt."""
        if isinstance(node, self.yaml.ScalarNode):
            if node.tag == "!vault":
                return None
            return "" if node.tag == _NULL_TAG else str(node.value)
        try:
            data = self.loader.construct_object(node, deep=True)
        except self.yaml.YAMLError as exc:
            raise self.error(f"cannot read value: {exc}", node) from exc
        import json

        return json.dumps(data, default=str)

    def vars(self, node: Any, what: str) -> dict[str, VarValue]:
        found: dict[str, VarValue] = {}
        for key_node, value_node in self.mapping(node, what):
            key = self.name(key_node, f"a variable name in {what}")
            value = self.value(value_node)
            if value is not None:
                found[key] = VarValue(value, self.path, _line(key_node))
        return found


def _walk_group(reader: _Reader, builder: Builder, name: str, node: Any, line: int, parent: Optional[str]) -> None:
    builder.declare_group(name, line)
    if parent is not None:
        builder.add_child(parent, name, line)
    what = f"group {name!r}"
    if not reader.is_null(node) and not isinstance(node, reader.yaml.MappingNode):
        raise reader.error(f"{what} must be a mapping with hosts, vars or children, got {_kind(node)}", node)
    for key_node, value_node in reader.mapping(node, what):
        key = reader.name(key_node, f"a key of {what}")
        if key == "hosts":
            if isinstance(value_node, reader.yaml.SequenceNode):
                raise reader.error(f"hosts of {what} must be a mapping (host: vars), not a list", value_node)
            for host_node, host_vars_node in reader.mapping(value_node, f"hosts of {what}"):
                pattern = reader.name(host_node, f"a host name in {what}")
                host_vars = reader.vars(host_vars_node, f"vars of host {pattern!r}")
                names = builder.add_hosts(name, pattern, _line(host_node), {})
                for host in names:
                    builder.hosts[host].vars.update(host_vars)
        elif key == "vars":
            builder.group_vars(name, line).update(reader.vars(value_node, f"vars of {what}"))
        elif key == "children":
            for child_node, child_value in reader.mapping(value_node, f"children of {what}"):
                child = reader.name(child_node, f"a child group of {what}")
                _walk_group(reader, builder, child, child_value, _line(child_node), name)
        else:
            raise reader.error(f"unknown key {key!r} in {what} (expected hosts, vars or children)", key_node)


def parse_yaml(text: str, builder: Builder) -> None:
    """Fill ``builder`` from a YAML inventory; InventoryError names the line of the first problem."""
    reader = _Reader(text, builder.path)
    root = reader.root()
    if root is None or reader.is_null(root):
        return
    if not isinstance(root, reader.yaml.MappingNode):
        raise reader.error(f"a YAML inventory must be a mapping of groups (like '{ALL}:'), got {_kind(root)}", root)
    for key_node, value_node in reader.mapping(root, "the inventory"):
        group = reader.name(key_node, "a group name")
        _walk_group(reader, builder, group, value_node, _line(key_node), None)


def read_vars_file(text: str, path: str) -> dict[str, VarValue]:
    """A ``group_vars``/``host_vars`` file: a mapping of vars (empty file: no vars)."""
    reader = _Reader(text, path)
    root = reader.root()
    if root is None:
        return {}
    return reader.vars(root, "a vars file")
