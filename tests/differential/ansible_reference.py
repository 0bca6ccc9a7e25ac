"""Ansible's own answers, served to the differential tests by one long-lived process (ansible is slow to start).

Run with the venv's python; it reads one JSON request per line on stdin and writes one JSON answer per line:

* ``{"op": "inventory", "path": P, "patterns": [...]}`` -> ``{"list": <ansible-inventory --list -i P>,
  "patterns": {pattern: [host, ...] | {"error": text}}, "group_hosts": {group: [host, ...]},
  "ssh": {host: {"host", "port", "remote_user", "private_key_file"}}}`` (the ssh connection plugin's options,
  resolved from the host's vars as a play would), or ``{"error": text}`` when Ansible refuses the inventory.
* ``{"op": "expand", "items": [text, ...]}`` -> ``[{"hosts": [...], "port": P} | {"error": text}, ...]``: how the
  inventory plugins expand a host pattern such as ``web[01:10:2].lab:2222``.

With ``SSHFLEET_WALK_ORDER=ascending|descending`` it walks a group's descendants below its children in name
order instead of Python's set order (see ``_fix_walk_order``). Not a test module: pytest does not collect it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings


def _quiet() -> None:
    os.environ.setdefault("ANSIBLE_LOCALHOST_WARNING", "False")
    os.environ["ANSIBLE_INVENTORY_UNPARSED_FAILED"] = "True"  # a file no plugin can read is an error, not empty
    os.environ["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "True"
    os.environ["ANSIBLE_INVENTORY_ENABLED"] = "ini,yaml"
    os.environ["ANSIBLE_NOCOLOR"] = "1"
    os.environ["ANSIBLE_DEPRECATION_WARNINGS"] = "False"
    warnings.simplefilter("ignore")


_CLI: list = []


def _inventory_list(inventory: object, loader: object, variables: object) -> dict:
    """What ``ansible-inventory --list`` prints for ``inventory``, from the CLI class's own methods.

    The CLI's options live in a process-wide singleton set by the first ``parse()``; every request here uses the
    same options (only the inventory differs), so the CLI is parsed once and handed each inventory.
    """
    from ansible.cli.inventory import InventoryCLI

    if not _CLI:
        cli = InventoryCLI(["ansible-inventory", "--list", "-i", "localhost,"])
        cli.parse()
        _CLI.append(cli)
    cli = _CLI[0]
    cli.loader, cli.inventory, cli.vm = loader, inventory, variables
    return json.loads(cli.dump(cli.json_inventory(cli._get_group("all"))))


def _inventory(path: str, patterns: list[str]) -> dict:
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager, split_host_pattern
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            inventory = InventoryManager(loader=loader, sources=[path])
    except AnsibleError as exc:
        return {"error": str(exc).splitlines()[0]}
    variables = VariableManager(loader=loader, inventory=inventory)
    listed = _inventory_list(inventory, loader, variables)
    answer: dict = {"list": listed, "patterns": {}, "terms": {}, "ssh": {}, "group_hosts": {}}
    for pattern in patterns:
        inventory.clear_pattern_cache()
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                answer["patterns"][pattern] = [h.name for h in inventory.list_hosts(pattern)]
        except AnsibleError as exc:
            answer["patterns"][pattern] = {"error": str(exc).splitlines()[0]}
        answer["terms"][pattern] = {}
        for term in split_host_pattern(pattern):
            bare = term[1:] if term[0] in "&!" else term
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    found = [h.name for h in inventory._match_one_pattern(bare)]
            except AnsibleError as exc:
                found = {"error": str(exc).splitlines()[0]}  # type: ignore[assignment]
            if bare in inventory.hosts:
                found = [bare]
            answer["terms"][pattern][bare] = found
    for name, group in inventory.groups.items():
        answer["group_hosts"][name] = [h.name for h in group.get_hosts()]
    for host in inventory.get_hosts("all"):
        hostvars = variables.get_vars(host=host, include_hostvars=False)
        conn = connection_loader.get("ssh", PlayContext(), io.StringIO())
        conn.set_options(var_options=hostvars)
        answer["ssh"][host.name] = {
            key: None if conn.get_option(key) is None else str(conn.get_option(key))
            for key in ("host", "port", "remote_user", "private_key_file")
        }
    return answer


def _expand(items: list[str]) -> list[dict]:
    from ansible.plugins.inventory.ini import InventoryModule

    plugin = InventoryModule()
    answers: list[dict] = []
    for text in items:
        try:
            hosts, port = plugin._expand_hostpattern(text)
            answers.append({"hosts": list(hosts), "port": port})
        except Exception as exc:  # AnsibleError, and ValueError for a zero step
            answers.append({"error": f"{type(exc).__name__}: {exc}"})
    return answers


def _fix_walk_order(descending: bool) -> None:
    """Make Ansible's walk below a group's children deterministic, by name, ascending or descending.

    Ansible walks those levels in Python set order: an order no user can count on. The tests run one reference
    each way; where the two answers differ, the order depends on that walk and only the set is compared. The walk
    is otherwise Ansible's own (``Group._walk_relationship``), line for line.
    """
    from itertools import chain

    from ansible.inventory.group import Group

    def walk(self, rel, include_self=False, preserve_ordering=False):  # type: ignore[no-untyped-def]
        seen = set()
        unprocessed = set(getattr(self, rel))
        if include_self:
            unprocessed.add(self)
        if preserve_ordering:
            ordered = [self] if include_self else []
            ordered.extend(getattr(self, rel))
        while unprocessed:
            seen.update(unprocessed)
            new_unprocessed = set()
            level = sorted(unprocessed, key=lambda g: g.name, reverse=descending)
            for new_item in chain.from_iterable(getattr(g, rel) for g in level):
                new_unprocessed.add(new_item)
                if preserve_ordering and new_item not in seen:
                    ordered.append(new_item)
            new_unprocessed.difference_update(seen)
            unprocessed = new_unprocessed
        if preserve_ordering:
            return ordered
        return seen

    Group._walk_relationship = walk


def main() -> None:
    _quiet()
    if os.environ.get("SSHFLEET_WALK_ORDER"):
        _fix_walk_order(os.environ["SSHFLEET_WALK_ORDER"] == "descending")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            if request["op"] == "inventory":
                answer: object = _inventory(request["path"], request["patterns"])
            else:
                answer = _expand(request["items"])
        except Exception as exc:  # keep serving: the test reports the request that broke Ansible
            answer = {"crash": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
