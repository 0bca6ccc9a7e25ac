"""``Inventory``: load a file in any supported format, or a list of host strings, and select hosts from it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Callable, Literal, Optional, Union

from sshfleet._inventory._builder import ALL, UNGROUPED, Builder, Group
from sshfleet._inventory._ini import SECTION_RE, looks_like_host_with_brackets, parse_ini
from sshfleet._inventory._patterns import Matcher
from sshfleet._inventory._plain import parse_plain
from sshfleet._inventory._vars_dirs import load_vars_dirs
from sshfleet._inventory._yaml_format import parse_yaml
from sshfleet._options import HostSpec
from sshfleet.errors import InventoryError

InventoryFormat = Literal["ini", "yaml", "hosts"]
FORMATS: tuple[str, ...] = ("ini", "yaml", "hosts")
HostSource = Union[str, "os.PathLike[str]", Iterable[Union[str, HostSpec]], "Inventory"]

_YAML_KEY_RE = re.compile(r"^[^\s#;\[][^=\s]*:(\s|$)")
_INLINE_VAR_RE = re.compile(r"\s[A-Za-z_][A-Za-z0-9_]*=")
_PARSERS: dict[str, Callable[[str, Builder], None]] = {
    "ini": parse_ini,
    "yaml": parse_yaml,
    "hosts": parse_plain,
}


def detect_format(path: str, text: str) -> str:
    """``yaml`` for .yml/.yaml/.json or a YAML-looking first line, ``ini`` for sections or inline vars,
    otherwise ``hosts`` (a plain list). ``.ini`` forces INI."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".yml", ".yaml", ".json"):
        return "yaml"
    if ext == ".ini":
        return "ini"
    lines = [line.strip() for line in text.splitlines()]
    significant = [line for line in lines if line and not line.startswith("#")]
    if not significant:
        return "hosts"
    first = significant[0]
    if first.startswith(("---", "%YAML", "{")) or _YAML_KEY_RE.match(first):
        return "yaml"
    for line in significant:
        if line.startswith(";") or _INLINE_VAR_RE.search(line):
            return "ini"
        if line.startswith("[") and not looks_like_host_with_brackets(line) and SECTION_RE.match(line):
            return "ini"
    return "hosts"


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise InventoryError("no such inventory file (to pass host names, give a list)", path) from exc
    except IsADirectoryError as exc:
        raise InventoryError("is a directory; give an inventory file", path) from exc
    except OSError as exc:
        raise InventoryError(f"cannot read inventory: {exc.strerror or exc}", path) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InventoryError("not UTF-8 text", path, line) from exc


class Inventory:
    """Hosts and groups from one source.

    ``hosts`` maps name -> HostSpec in inventory order (first appearance). ``groups`` maps name -> Group and
    always has ``all`` and ``ungrouped``. Treat both as read-only. ``source`` names where it came from.
    """

    def __init__(
        self,
        hosts: Iterable[HostSpec] = (),
        groups: Optional[Mapping[str, Group]] = None,
        source: str = "<hosts>",
    ) -> None:
        self.hosts: dict[str, HostSpec] = {}
        for spec in hosts:
            self.hosts.setdefault(spec.name, spec)
        names = tuple(self.hosts)
        given_groups: dict[str, Group] = dict(groups or {})
        grouped = {h for name, g in given_groups.items() if name not in (ALL, UNGROUPED) for h in g.hosts}
        # all and ungrouped come first, as Ansible keeps them: patterns such as '*' list their hosts first.
        self.groups: dict[str, Group] = {
            ALL: given_groups.pop(ALL, Group(ALL, names)),
            UNGROUPED: given_groups.pop(UNGROUPED, Group(UNGROUPED, tuple(h for h in names if h not in grouped))),
        }
        self.groups.update(given_groups)
        for group in self.groups.values():
            missing = [h for h in group.hosts if h not in self.hosts]
            if missing:
                raise InventoryError(f"group {group.name!r} names unknown hosts: {', '.join(missing)}")
        self.source = source
        self._matcher = Matcher(names, self.groups, source)

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]], format: Optional[InventoryFormat] = None) -> Inventory:
        """Parse an Ansible INI or YAML inventory, or a plain host list; the format is guessed unless given.

        ``group_vars/`` and ``host_vars/`` beside an INI or YAML file are read as Ansible does. Raises
        InventoryError (message starting ``path:line:``) for anything malformed or unreadable.
        """
        path = os.fspath(path)
        text = _read_text(path)
        kind = format or detect_format(path, text)
        if kind not in _PARSERS:
            raise InventoryError(f"unknown inventory format {kind!r} (expected one of {', '.join(FORMATS)})", path)
        builder = Builder(path, strict_duplicates=kind == "hosts")
        _PARSERS[kind](text, builder)
        if kind != "hosts":
            load_vars_dirs(builder, os.path.dirname(os.path.abspath(path)))
        specs, groups = builder.build()
        return cls(specs.values(), groups, path)

    @classmethod
    def from_hosts(cls, hosts: Iterable[Union[str, HostSpec]], source: str = "<hosts>") -> Inventory:
        """An inventory of ``[user@]host[:port]`` strings (ranges allowed) and/or HostSpecs, all ungrouped.

        Errors name the item as ``<hosts>:N:`` (N counts from 1). A HostSpec is taken as it is.
        """
        if isinstance(hosts, (str, bytes)):
            raise InventoryError(f"from_hosts() wants a list of host strings, got the string {hosts!r}")
        builder = Builder(source, strict_duplicates=True)
        order: list[Union[str, HostSpec]] = []
        spec_at: dict[str, int] = {}  # where each HostSpec item was; strings are checked by the builder
        listed: set[str] = set()
        for index, item in enumerate(hosts, start=1):
            if isinstance(item, HostSpec):
                first = spec_at.get(item.name) or (builder.hosts[item.name].line if item.name in builder.hosts else 0)
                if first:
                    raise InventoryError(
                        f"host {item.name!r} is given twice (first at {source}:{first})", source, index
                    )
                spec_at[item.name] = index
                order.append(item)
            elif isinstance(item, str):
                for name in builder.add_hosts(UNGROUPED, item, index, {}):
                    if name in spec_at:
                        raise InventoryError(
                            f"host {name!r} is given twice (first at {source}:{spec_at[name]})", source, index
                        )
                    if name not in listed:
                        listed.add(name)
                        order.append(name)
            else:
                raise InventoryError(f"a host must be a string or a HostSpec, got {type(item).__name__}", source, index)
        specs, _ = builder.build()
        ordered = [item if isinstance(item, HostSpec) else specs[item] for item in order]
        return cls(ordered, None, source)

    def select(self, pattern: str) -> list[HostSpec]:
        """The hosts ``pattern`` selects, in the order ``ansible PATTERN --list-hosts`` prints them, each once.

        Ansible's patterns: a host or group name, ``all`` or ``*``, globs ``web*``, ``a:b`` or ``a,b``
        (union), ``a:&b`` (intersection), ``a:!b`` (exclusion), ``~regex``, subscripts ``web[0]``,
        ``web[1:]``, ``web[-1]``; brackets on a name that selects nothing are a host range (``node[01-04]``).
        Raises InventoryError for a name that matches no host and no group, a subscript past the end, or a
        malformed pattern; a glob or regex that matches nothing gives ``[]``.
        """
        return [self.hosts[name] for name in self._matcher.select(pattern)]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[HostSpec]:
        return iter(self.hosts.values())

    def __contains__(self, name: object) -> bool:
        return name in self.hosts

    def __repr__(self) -> str:
        return f"<Inventory {self.source}: {len(self.hosts)} hosts, {len(self.groups)} groups>"


def load_hosts(source: HostSource, pattern: Optional[str] = None) -> list[HostSpec]:
    """HostSpecs from an inventory path, a list of host strings / HostSpecs, or an Inventory.

    ``pattern`` selects among them (see ``Inventory.select``); None means every host, in inventory order.
    """
    if isinstance(source, Inventory):
        inventory = source
    elif isinstance(source, (str, os.PathLike)):
        inventory = Inventory.load(source)
    else:
        inventory = Inventory.from_hosts(source)
    return list(inventory.hosts.values()) if pattern is None else inventory.select(pattern)
