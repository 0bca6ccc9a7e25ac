"""Inventories and host selection: Ansible INI and YAML inventories, plain host lists, host ranges.

::

    inv = Inventory.load("inventory/lab.ini")          # format guessed: INI, YAML or one host per line
    routers = inv.select("routers:!ct1")                # Ansible patterns, in Ansible's order
    specs = load_hosts(["admin@r1:2222", "node[01-04]"])
    fold_hosts(["node01", "node02", "node07"])          # 'node[01-02,07]'

Every parse error is an InventoryError whose message starts with ``path:line:``.
"""

from __future__ import annotations

from sshfleet._inventory._builder import CONNECTION_VARS, Group
from sshfleet._inventory._core import (
    FORMATS,
    HostSource,
    Inventory,
    InventoryFormat,
    detect_format,
    load_hosts,
)
from sshfleet._inventory._ranges import MAX_EXPANSION, expand_hostrange, fold_hosts

__all__ = [
    "CONNECTION_VARS",
    "FORMATS",
    "MAX_EXPANSION",
    "Group",
    "HostSource",
    "Inventory",
    "InventoryFormat",
    "detect_format",
    "expand_hostrange",
    "fold_hosts",
    "load_hosts",
]
