"""Reference tools for the differential suite: Ansible (one long-lived process per hash seed) and ``ssh -G``.

A reference tool that is missing skips its tests on a developer's machine, and fails them where ``CI`` is set:
CI installs both, so a differential test can never pass there by not running.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshfleet.errors import InventoryError
from sshfleet.inventory import Inventory

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"


def require(available: bool, what: str) -> None:
    """Skip without ``what``, except in CI, where its absence fails the test."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI for the differential suite", pytrace=False)
    pytest.skip(f"{what} is not installed: the differential test cannot run")


class AnsibleReference:
    """Two ansible_reference.py servers that walk a group's grandchildren in opposite name orders (Ansible walks
    them in set order): where the two answers differ, Ansible's order is not defined and only sets compare."""

    def __init__(self, home: Path) -> None:
        env = {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp")}
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / "ansible_reference.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**env, "PYTHONHASHSEED": seed, "SSHFLEET_WALK_ORDER": order},
            )
            for seed, order in (("0", "ascending"), ("1", "descending"))
        ]

    def ask(self, request: dict) -> tuple:
        """The answer of each server (both work at once: one per core)."""
        line = json.dumps(request) + "\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            reply = proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"ansible_reference.py exited with status {proc.wait()}")
            answers.append(json.loads(reply))
        return tuple(answers)

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnsibleReference]:
    require(importlib.util.find_spec("ansible") is not None, "ansible-core")
    reference = AnsibleReference(tmp_path_factory.mktemp("ansible-home"))
    yield reference
    reference.close()


@pytest.fixture(scope="session")
def ssh_binary() -> str:
    path = shutil.which("ssh")
    require(path is not None, "the OpenSSH client (ssh)")
    assert path is not None
    return path


def stable(answers: tuple[Any, Any], *keys: str) -> tuple[Any, bool]:
    """Ansible's answer at ``keys``, and whether its order is defined (both hash seeds gave the same list)."""
    first, second = answers
    for key in keys:
        first, second = first[key], second[key]
    return first, first == second


def check_patterns(ours: Inventory, answers: tuple[Any, Any], skip: Sequence[str] = ()) -> None:
    """Every pattern Ansible was asked about selects the same hosts in sshfleet, in the same order where
    Ansible's order is defined; the one allowed difference is an error for a term that matches nothing."""
    theirs = answers[0]
    for pattern, expected in theirs["patterns"].items():
        if any(name in pattern for name in skip):
            continue
        if isinstance(expected, dict):
            # Ansible's only refusal: a subscript past the end. sshfleet refuses too (or first names a typo, or a
            # subscript on a name that is no group, which it reads as a host range).
            with pytest.raises(
                InventoryError, match=r"no hosts matched the subscripted pattern|no host or group|bad host range"
            ):
                ours.select(pattern)
            continue
        try:
            selected = [spec.name for spec in ours.select(pattern)]
        except InventoryError as exc:
            # sshfleet's deliberate difference: a term that matches nothing (a typo, a malformed range, an IPv6
            # address split on its colons) is an error, where Ansible warns and goes on without it.
            # Allowed only where Ansible itself drops a term that selects nothing; a term sshfleet names as
            # malformed must be one of those.
            empty = {term for term, found in theirs["terms"][pattern].items() if found == []}
            assert empty, f"{pattern!r}: sshfleet raised {exc}, Ansible selected {expected} using every term"
            named = re.search(r"in host pattern '([^']*)'", str(exc))
            if named is not None:
                assert named.group(1) in empty, f"{pattern!r}: sshfleet raised {exc}; Ansible's empty terms: {empty}"
            continue
        _, ordered = stable(answers, "patterns", pattern)
        if ordered:
            assert selected == expected, pattern
        else:
            assert sorted(selected) == sorted(expected), pattern


def same_value(ours: str, theirs: Any) -> bool:
    """sshfleet keeps the text written; Ansible types INI values with literal_eval and YAML ones with YAML."""
    if isinstance(theirs, str):
        return ours == theirs
    candidates: list[Any] = []
    for parse in (json.loads, ast.literal_eval, yaml.safe_load):
        try:
            candidates.append(parse(ours))
        except Exception:
            continue
    return theirs in candidates or (theirs is None and ours == "")


def check_inventory(ours: Inventory, answers: tuple[Any, Any], skip: Sequence[str] = ()) -> None:
    """Hosts, groups (hosts in Ansible's order where it is defined, children), every merged variable and the
    ssh plugin's host / port / user / key agree with Ansible's answer."""
    theirs = answers[0]
    listed = theirs["list"]
    hostvars = listed["_meta"]["hostvars"]
    assert set(ours.hosts) == set(theirs["ssh"])
    assert set(ours.groups) == set(theirs["group_hosts"])
    for name, group in ours.groups.items():
        if name in skip:
            continue
        expected, ordered = stable(answers, "group_hosts", name)
        if ordered:
            assert list(group.hosts) == expected, f"hosts of group {name}"
        else:
            assert set(group.hosts) == set(expected), f"hosts of group {name}"
        if name in listed:
            assert list(group.children) == listed[name].get("children", []), f"children of group {name}"
    for name, spec in ours.hosts.items():
        expected_vars = hostvars.get(name, {})
        assert set(spec.vars) == set(expected_vars), f"variables of {name}"
        for key, value in expected_vars.items():
            assert same_value(spec.vars[key], value), f"{name}: {key}={spec.vars[key]!r}, Ansible {value!r}"
    for name, spec in ours.hosts.items():
        plugin = theirs["ssh"][name]
        assert (spec.hostname or name) == plugin["host"], f"address of {name}"
        assert (None if spec.port is None else str(spec.port)) == plugin["port"], f"port of {name}"
        assert spec.user == plugin["remote_user"], f"user of {name}"
        assert spec.identity_file == plugin["private_key_file"], f"key of {name}"
