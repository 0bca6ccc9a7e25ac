"""What every inventory parser fills in, and how it becomes HostSpecs with Ansible's variable precedence.

Parsers only record facts (a host in a group, a var on a line); precedence, ``ungrouped``, connection vars and
their validation all happen once, in ``Builder.build``, so the formats cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from sshfleet._inventory._ranges import _is_ipv6_literal, expand_hostrange
from sshfleet._options import BECOME_METHODS, HostSpec, parse_bool, parse_host_string
from sshfleet.errors import InventoryError

ALL = "all"
UNGROUPED = "ungrouped"

# For each HostSpec field, the vars that set it, strongest first (after merging every level): sshfleet's own names
# beat Ansible's, so an inventory shared with Ansible can say something different to sshfleet; among Ansible's,
# the ssh connection plugin takes ansible_ssh_host/_user/_port over ansible_host/_user/_port wherever each was set.
CONNECTION_VARS: dict[str, tuple[str, ...]] = {
    "hostname": ("sshfleet_host", "ansible_ssh_host", "ansible_host"),
    "port": ("sshfleet_port", "ansible_ssh_port", "ansible_port"),
    "user": ("sshfleet_user", "ansible_ssh_user", "ansible_user"),
    "identity_file": ("sshfleet_identity_file", "ansible_ssh_private_key_file", "ansible_private_key_file"),
    "python": ("sshfleet_python", "ansible_python_interpreter"),
}
# The launch settings of become (see _options.Become), strongest first; Ansible accepts both password spellings.
BECOME_VARS: dict[str, tuple[str, ...]] = {
    "become": ("ansible_become",),
    "become_user": ("ansible_become_user",),
    "become_password": ("ansible_become_password", "ansible_become_pass"),
}
BECOME_METHOD_VAR = "ansible_become_method"
# Ansible's "discover it yourself" values: sshfleet probes the host's python3 anyway.
_AUTO_PYTHON = {"auto", "auto_silent", "auto_legacy", "auto_legacy_silent"}
# Set in a group's inventory vars, it orders groups of the same depth (Ansible reads it there only).
PRIORITY_VAR = "ansible_group_priority"
_TEMPLATE_RE = re.compile(r"\{\{|\{%")


@dataclass(frozen=True)
class Group:
    """One inventory group. ``hosts`` holds every host in the group or in its descendants, in inventory order;
    ``children`` the direct child groups; ``vars`` the group's own variables as written."""

    name: str
    hosts: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    vars: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class VarValue:
    """A variable's value and where it was set, so a bad port can be reported at its own line."""

    value: str
    path: str
    line: int


_UNSET = VarValue("", "", 0)


@dataclass
class _RawGroup:
    name: str
    path: str
    line: int
    declared: bool = False
    vars: dict[str, VarValue] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    child_lines: dict[str, int] = field(default_factory=dict)  # where each child was named


@dataclass
class _RawHost:
    name: str
    line: int
    vars: dict[str, VarValue] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


class Builder:
    """Collects groups, hosts and vars from one source; ``build()`` resolves them.

    ``strict_duplicates`` is for plain host lists: there, ``alice@a`` then ``bob@a`` is a mistake, whereas an
    Ansible inventory may name a host in several groups and add vars each time.
    """

    def __init__(self, path: str, strict_duplicates: bool = False) -> None:
        self.path = path
        self.strict_duplicates = strict_duplicates
        self.groups: dict[str, _RawGroup] = {}
        self.hosts: dict[str, _RawHost] = {}
        self.dir_group_vars: dict[str, dict[str, VarValue]] = {}
        self.dir_host_vars: dict[str, dict[str, VarValue]] = {}
        self.declare_group(ALL, 0)
        self.declare_group(UNGROUPED, 0)

    def error(self, message: str, line: Optional[int]) -> InventoryError:
        return InventoryError(message, self.path, line)

    def _group(self, name: str, line: int) -> _RawGroup:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _RawGroup(name, self.path, line)
        return group

    def declare_group(self, name: str, line: int) -> None:
        """A group defined here (``[name]``, ``[name:children]``, a YAML group)."""
        self._group(name, line).declared = True

    def group_vars(self, name: str, line: int) -> dict[str, VarValue]:
        """The vars of ``name``; the group must be declared somewhere (``check_declared`` says so if not)."""
        return self._group(name, line).vars

    def add_child(self, parent: str, child: str, line: int) -> None:
        if child == ALL:
            raise self.error(f"group {ALL!r} cannot be a child of {parent!r}: it already contains every group", line)
        path = self._path_between(child, parent)
        if path is not None:
            cycle = " -> ".join([parent, *path])
            raise self.error(f"cycle in children: {cycle}", line)
        group = self._group(parent, line)
        self._group(child, line)
        if child not in group.children:
            group.children.append(child)
            group.child_lines[child] = line

    def _path_between(self, start: str, goal: str) -> Optional[list[str]]:
        """The chain of children from ``start`` down to ``goal``, if any (goal->start would close it)."""
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            name, chain = stack.pop()
            if name == goal:
                return chain
            if name in seen:
                continue
            seen.add(name)
            group = self.groups.get(name)
            if group is not None:
                stack.extend((child, [*chain, child]) for child in reversed(group.children))
        return None

    def check_declared(self) -> None:
        """Every group named in ``children`` or ``[g:vars]`` must be defined: that catches typos in names."""
        for group in self.groups.values():
            if group.declared:
                continue
            for parent in self.groups.values():
                if group.name in parent.child_lines:
                    raise self.error(
                        f"[{parent.name}:children] names group {group.name!r}, which is defined nowhere",
                        parent.child_lines[group.name],
                    )
            raise self.error(f"[{group.name}:vars] is for group {group.name!r}, which is defined nowhere", group.line)

    def add_hosts(self, group: str, pattern: str, line: int, host_vars: dict[str, str]) -> list[str]:
        """Add the hosts ``pattern`` expands to (``[user@]name[range][:port]``) to ``group``, with their vars.

        ``:port`` is the host var ``ansible_port``, set before the inline ones (as Ansible: ``h:2222
        ansible_port=3333`` means 3333), and only where the host is first listed (Ansible ignores it later);
        ``user@`` (sshfleet's own) is ``sshfleet_user``, which beats every Ansible user var. A bare IPv6
        address is a host name, as in Ansible.
        """
        try:
            names = expand_hostrange(pattern)
        except InventoryError as exc:
            raise self.error(str(exc), line) from exc
        if not names:
            raise self.error(f"empty host name {pattern!r}", line)
        added: list[str] = []
        for text in names:
            spec = HostSpec(text) if _is_ipv6_literal(text) else parse_host_string(text, self.path, line)
            given: dict[str, str] = {}
            if spec.user is not None:
                given["sshfleet_user"] = spec.user
            if spec.port is not None:
                given["ansible_port"] = str(spec.port)
            host = self.hosts.get(spec.name)
            if host is None:
                host = self.hosts[spec.name] = _RawHost(spec.name, line)
            elif self.strict_duplicates:
                before = {k: v.value for k, v in host.vars.items()}
                if before != given:
                    raise self.error(
                        f"host {spec.name!r} is listed again with a different user or port "
                        f"(first at {self.path}:{host.line})",
                        line,
                    )
            elif "ansible_port" in given:
                # As Ansible: the port on a host's name counts where the host is first listed, nowhere else.
                del given["ansible_port"]
            for key, value in [*given.items(), *host_vars.items()]:
                host.vars[key] = VarValue(value, self.path, line)
            if group not in host.groups:
                host.groups.append(group)
                self._group(group, line).hosts.append(spec.name)
            added.append(spec.name)
        return added

    def _priority(self, name: str) -> int:
        value = self.groups[name].vars.get(PRIORITY_VAR)
        if value is None:
            return 1
        try:
            return int(value.value.strip())
        except ValueError as exc:
            raise InventoryError(
                f"group {name!r}: {PRIORITY_VAR}={value.value!r} is not an integer", value.path, value.line
            ) from exc

    def _ungrouped(self) -> list[str]:
        """Ansible's reconciliation: a host named in ``ungrouped`` and in another group leaves ``ungrouped``;
        a host in no group (or only in ``all``) joins it, after the ones named there."""

        def alone(host: _RawHost) -> bool:
            return all(g in (ALL, UNGROUPED) for g in host.groups)

        kept = [h for h in self.groups[UNGROUPED].hosts if alone(self.hosts[h])]
        return kept + [h.name for h in self.hosts.values() if alone(h) and h.name not in kept]

    def _ordered_groups(self, name: str) -> list[str]:
        """The group, its children, then each further level: the order Ansible lists a group's hosts in
        (``Group.get_hosts``). Ansible walks levels below the children as sets; here they keep file order."""
        children = self.groups[name].children
        ordered = [name, *children]
        seen: set[str] = set()
        level = list(dict.fromkeys(ordered))
        while level:
            seen.update(level)
            below: dict[str, None] = {}
            for group in level:
                for child in self.groups[group].children:
                    below[child] = None
                    if child not in seen:
                        ordered.append(child)
            level = [g for g in below if g not in seen]
        return ordered

    def build(self) -> tuple[dict[str, HostSpec], dict[str, Group]]:
        """Resolve into HostSpecs (inventory order) and Groups (``all``, ``ungrouped``, then as seen).

        A Group's ``hosts`` are in Ansible's order: its own hosts, then its children's, level by level.
        """
        self.check_declared()
        parents: dict[str, set[str]] = {name: set() for name in self.groups}
        for group in self.groups.values():
            for child in group.children:
                parents[child].add(group.name)
        all_group, ungrouped = self.groups[ALL], self.groups[UNGROUPED]
        ungrouped.hosts = self._ungrouped()
        # As Ansible: ungrouped is all's first child, then children named under all, then every group with no
        # parent in the order it was made.
        orphans = [name for name in self.groups if name not in (ALL, UNGROUPED) and not parents[name]]
        all_group.children = list(dict.fromkeys([UNGROUPED, *all_group.children, *orphans]))
        for name in self.groups:
            if name != ALL:
                parents[name].add(ALL)
        depth: dict[str, int] = {}

        def depth_of(name: str) -> int:
            # Longest path from all: the deeper group is the more specific one and wins.
            if name not in depth:
                depth[name] = 1 + max((depth_of(p) for p in parents[name]), default=-1)
            return depth[name]

        priority = {name: self._priority(name) for name in self.groups}
        groups: dict[str, Group] = {}
        for name, raw in self.groups.items():
            hosts: dict[str, None] = {}
            for member in self._ordered_groups(name):
                hosts.update(dict.fromkeys(self.groups[member].hosts))
            groups[name] = Group(
                name=name,
                hosts=tuple(hosts),
                children=tuple(raw.children),
                vars={k: v.value for k, v in raw.vars.items() if k != PRIORITY_VAR},
            )
        specs: dict[str, HostSpec] = {}
        in_ungrouped = set(ungrouped.hosts)
        for host in self.hosts.values():
            ancestors: set[str] = {ALL}
            # A host named before the first section and in a group later is not ungrouped (Ansible agrees).
            pending = [g for g in host.groups if g != UNGROUPED or host.name in in_ungrouped]
            if host.name in in_ungrouped:
                pending.append(UNGROUPED)
            while pending:
                name = pending.pop()
                if name not in ancestors:
                    ancestors.add(name)
                    pending.extend(parents[name])
            ranked = sorted(ancestors, key=lambda g: (depth_of(g), priority[g], g))
            merged: dict[str, VarValue] = {}
            for name in ranked:
                merged.update((k, v) for k, v in self.groups[name].vars.items() if k != PRIORITY_VAR)
            for name in ranked:
                merged.update(self.dir_group_vars.get(name, {}))
            merged.update(host.vars)
            merged.update(self.dir_host_vars.get(host.name, {}))
            specs[host.name] = self._spec(host.name, merged)
        return specs, groups

    def _spec(self, name: str, merged: dict[str, VarValue]) -> HostSpec:
        values: dict[str, Optional[str]] = {}
        for field_name, var_names in CONNECTION_VARS.items():
            values[field_name] = None
            var_name = next((v for v in var_names if merged.get(v, _UNSET).value.strip()), None)
            if var_name is None:
                continue
            chosen = merged[var_name]
            value = chosen.value.strip()
            if _TEMPLATE_RE.search(value):
                raise InventoryError(
                    f"host {name!r}: {var_name}={value!r} is a Jinja template, which sshfleet does not "
                    f"evaluate (set {var_names[0]} to a plain value)",
                    chosen.path,
                    chosen.line,
                )
            if field_name == "port" and not (value.isdigit() and 0 < int(value) < 65536):
                raise InventoryError(
                    f"host {name!r}: {var_name}={value!r} is not a port (1-65535)", chosen.path, chosen.line
                )
            if field_name == "python" and value in _AUTO_PYTHON:
                continue
            values[field_name] = value
        port = values["port"]
        become, become_user, become_password = self._become(name, merged)
        return HostSpec(
            name=name,
            hostname=values["hostname"],
            port=int(port) if port is not None else None,
            user=values["user"],
            identity_file=values["identity_file"],
            python=values["python"],
            # The become password stays out of ``vars`` (a repr or a dump of vars would show it).
            vars={k: v.value for k, v in merged.items() if k not in BECOME_VARS["become_password"]},
            become=become,
            become_user=become_user,
            become_password=become_password,
        )

    def _become(self, name: str, merged: dict[str, VarValue]) -> tuple[Optional[bool], Optional[str], Optional[str]]:
        """The host's become settings; an error names the line of a value sshfleet cannot honour (a method
        other than sudo, a become that is not a boolean, a template), as a bad port is."""
        method = merged.get(BECOME_METHOD_VAR)
        if method is not None and method.value.strip() and method.value.strip() not in BECOME_METHODS:
            raise InventoryError(
                f"host {name!r}: {BECOME_METHOD_VAR}={method.value.strip()!r}: sshfleet becomes another user "
                f"with sudo only (set {BECOME_METHOD_VAR}=sudo or leave it out)",
                method.path,
                method.line,
            )
        out: dict[str, Optional[str]] = {}
        become: Optional[bool] = None
        for field_name, var_names in BECOME_VARS.items():
            out[field_name] = None
            var_name = next((v for v in var_names if v in merged), None)
            if var_name is None:
                continue
            chosen = merged[var_name]
            value = chosen.value if field_name == "become_password" else chosen.value.strip()
            if _TEMPLATE_RE.search(value):
                raise InventoryError(
                    f"host {name!r}: {var_name} is a Jinja template, which sshfleet does not evaluate "
                    f"(set {var_names[0]} to a plain value)",
                    chosen.path,
                    chosen.line,
                )
            if field_name == "become":
                flag = parse_bool(value)
                if flag is None:
                    raise InventoryError(
                        f"host {name!r}: {var_name}={value!r} is not a boolean (true/false, yes/no)",
                        chosen.path,
                        chosen.line,
                    )
                become = flag
            elif value:
                out[field_name] = value
        return become, out["become_user"], out["become_password"]
