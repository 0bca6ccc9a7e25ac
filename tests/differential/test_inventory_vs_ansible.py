"""Every inventory of the corpus, read by sshfleet and by ansible-core: hosts, groups, merged vars, the ssh
plugin's connection settings and ``ansible PATTERN --list-hosts`` must agree.

Where sshfleet departs on purpose (inventory/README.md, "Differences from Ansible") the test says which rule
allows it: a name that matches nothing raises instead of selecting nothing; a file marked ``# sshfleet-only``
uses an extension Ansible refuses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sshfleet.errors import InventoryError
from sshfleet.inventory import Inventory
from tests.differential.conftest import CORPUS, AnsibleReference, check_inventory, check_patterns

INVENTORIES = sorted(
    p if p.is_file() else next(p.glob("hosts.*")) for p in (CORPUS / "inventories").iterdir() if p.name[0].isdigit()
)
_PATTERNS_RE = re.compile(r"^#\s*patterns:(.*)$", re.M)


def _id(path: Path) -> str:
    return path.name if path.parent.name == "inventories" else path.parent.name


def patterns_for(path: Path, inventory: Inventory | None) -> list[str]:
    """The file's own ``# patterns:`` plus, for every group and host, the usual ways of naming it."""
    found = [p.strip() for m in _PATTERNS_RE.finditer(path.read_text()) for p in m.group(1).split(" | ")]
    found += ["all", "*", "ungrouped", "all:!ungrouped"]
    if inventory is not None:
        for group in inventory.groups:
            found += [group, f"all:!{group}", f"all:&{group}", f"{group}[0]", f"{group}[-1]", f"{group}[1:]"]
        found += list(inventory.hosts)
    return list(dict.fromkeys(p for p in found if p))


def quirks(text: str) -> list[str]:
    """Groups named by ``# ansible-quirk: GROUP ...``: where Ansible's answer is a bug sshfleet does not copy
    (each one is listed in inventory/README.md), that group is left out of the comparison."""
    return [g for m in re.finditer(r"^#\s*ansible-quirk:(.*)$", text, re.M) for g in m.group(1).split()]


@pytest.fixture(scope="module")
def answers(ansible: AnsibleReference) -> dict[Path, tuple[Any, Any]]:
    found = {}
    for path in INVENTORIES:
        try:
            inventory: Inventory | None = Inventory.load(path)
        except InventoryError:
            inventory = None
        found[path] = ansible.ask({"op": "inventory", "path": str(path), "patterns": patterns_for(path, inventory)})
    return found


def test_the_corpus_is_large_enough() -> None:
    assert len(INVENTORIES) >= 30


@pytest.mark.parametrize("path", INVENTORIES, ids=_id)
def test_inventory_agrees_with_ansible(path: Path, answers: dict[Path, tuple[Any, Any]]) -> None:
    theirs = answers[path][0]
    text = path.read_text()
    if "# sshfleet-extension" in text:
        # user@ on a host line: Ansible reads "admin@nas1:2200" as a host name, sshfleet as a user, host, port.
        ours = Inventory.load(path)
        assert set(theirs["ssh"]) == {
            f"{s.user}@{name}" + (f":{s.port}" if s.port else "") for name, s in ours.hosts.items()
        }
        return
    if "error" in theirs:
        with pytest.raises(InventoryError, match=rf"^{re.escape(str(path))}:\d+: "):
            Inventory.load(path)
        return
    check_inventory(Inventory.load(path), answers[path], skip=quirks(text))


@pytest.mark.parametrize("path", INVENTORIES, ids=_id)
def test_patterns_agree_with_ansible(path: Path, answers: dict[Path, tuple[Any, Any]]) -> None:
    theirs = answers[path][0]
    if "error" in theirs:
        return  # covered above
    if "# sshfleet-extension" in path.read_text():
        return
    check_patterns(Inventory.load(path), answers[path], skip=quirks(path.read_text()))
