"""``group_vars/`` and ``host_vars/`` next to an inventory file, as Ansible reads them.

Real Ansible inventories often keep ``ansible_user`` or ``ansible_port`` there rather than in the inventory
itself; ignoring them would connect as the wrong user. Vault-encrypted files are skipped with a warning:
sshfleet cannot decrypt them and only needs connection vars, which are rarely secret.
"""

from __future__ import annotations

import logging
import os

from sshfleet._inventory._builder import Builder, VarValue
from sshfleet._inventory._yaml_format import read_vars_file
from sshfleet.errors import InventoryError

log = logging.getLogger("sshfleet.inventory")

VARS_EXTENSIONS = (".yml", ".yaml", ".json")


def _files_in(directory: str) -> list[str]:
    """Every vars file under ``directory``, recursively, in sorted order (later files win)."""
    found: list[str] = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith("."):
            continue
        full = os.path.join(directory, entry)
        if os.path.isdir(full):
            found.extend(_files_in(full))
        elif os.path.isfile(full) and os.path.splitext(entry)[1] in ("", *VARS_EXTENSIONS):
            found.append(full)
    return found


def _read(path: str) -> dict[str, VarValue]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read vars file: {exc}", path) from exc
    if text.startswith("$ANSIBLE_VAULT"):
        log.warning("%s: encrypted with ansible-vault; sshfleet skips it", path)
        return {}
    return read_vars_file(text, path)


def _load(base: str, names: list[str]) -> dict[str, dict[str, VarValue]]:
    if not os.path.isdir(base):
        return {}
    entries = set(os.listdir(base))
    loaded: dict[str, dict[str, VarValue]] = {}
    for name in names:
        files: list[str] = []
        for candidate in (name, *(name + ext for ext in VARS_EXTENSIONS)):
            if candidate not in entries:
                continue
            full = os.path.join(base, candidate)
            files.extend(_files_in(full) if os.path.isdir(full) else [full])
        for path in files:
            loaded.setdefault(name, {}).update(_read(path))
    return loaded


def load_vars_dirs(builder: Builder, inventory_dir: str) -> None:
    """Read ``group_vars/<group>`` and ``host_vars/<host>``: a file (bare, .yml, .yaml, .json) or a dir."""
    builder.dir_group_vars = _load(os.path.join(inventory_dir, "group_vars"), list(builder.groups))
    builder.dir_host_vars = _load(os.path.join(inventory_dir, "host_vars"), list(builder.hosts))
