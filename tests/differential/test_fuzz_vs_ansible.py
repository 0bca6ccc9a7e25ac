"""Hypothesis against Ansible: host ranges and host patterns, generated at random, must get Ansible's answer.

Each example is one request to the long-lived reference processes, so a few hundred cases cost seconds, not the
minutes that one ``ansible`` start per case would. Where Ansible yields nothing (a range whose begin is past its
end, a term that matches nothing) sshfleet raises instead: that is its documented strictness, checked here too.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sshfleet._inventory._builder import Builder
from sshfleet.errors import InventoryError
from sshfleet.inventory import Inventory
from tests.differential.conftest import AnsibleReference, check_inventory, check_patterns

# In CI the examples are the same every run (a found disagreement fails every run, not one in N); elsewhere each
# run explores new ones. SSHFLEET_FUZZ_EXAMPLES=1000 for a long hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("SSHFLEET_FUZZ_EXAMPLES", "40")),
    derandomize=bool(os.environ.get("CI")),
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- host ranges ---------------------------------------------------------------------------------------------

_WORD = st.text(string.ascii_lowercase + string.digits + "-.", min_size=0, max_size=4)


@st.composite
def _bounds(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        letters = string.ascii_letters
        lo = draw(st.integers(0, len(letters) - 1))
        hi = draw(st.integers(max(0, lo - 2), min(len(letters) - 1, lo + 4)))
        body = f"{letters[lo]}:{letters[hi]}"
    else:
        lo = draw(st.integers(0, 120))
        hi = draw(st.integers(max(0, lo - 3), lo + 15))
        width = draw(st.sampled_from([0, 0, 2, 3]))
        lo_text = str(lo).zfill(width) if draw(st.booleans()) else str(lo)
        hi_text = str(hi).zfill(width) if draw(st.booleans()) else str(hi)
        body = f"{draw(st.sampled_from(['', lo_text, lo_text]))}:{hi_text}"
    if draw(st.integers(0, 3)) == 0:
        body += f":{draw(st.integers(1, 4))}"
    return f"[{body}]"


@st.composite
def _host_pattern(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from(string.ascii_lowercase)) + draw(_WORD)
    parts = [first, draw(_bounds()), draw(_WORD)]
    if draw(st.integers(0, 4)) == 0:
        parts += [draw(_bounds()), draw(_WORD)]
    text = "".join(parts).rstrip(".-") or first
    if draw(st.integers(0, 5)) == 0:
        text += f":{draw(st.integers(1, 65535))}"
    return text


def _ours(text: str) -> tuple[list[str], int | None] | None:
    builder = Builder("<fuzz>")
    try:
        names = builder.add_hosts("g", text, 1, {})
    except InventoryError:
        return None
    given = [builder.hosts[n].vars.get("ansible_port") for n in names]
    ports = {None if value is None else value.value for value in given}
    port = ports.pop() if len(ports) == 1 else None
    return names, int(port) if port else None


@FUZZ
@given(st.lists(_host_pattern(), min_size=25, max_size=25))
def test_host_ranges_expand_as_in_ansible(ansible: AnsibleReference, items: list[str]) -> None:
    answers = ansible.ask({"op": "expand", "items": items})[0]
    for text, theirs in zip(items, answers):
        ours = _ours(text)
        if "error" in theirs or not theirs["hosts"]:
            assert ours is None, f"{text!r}: Ansible {theirs}, sshfleet {ours}"
            continue
        assert ours is not None, f"{text!r}: sshfleet refused it, Ansible gave {theirs}"
        # Ansible lists a name twice when two expansions spell it (k[1:16]6[0:66] has k1660 twice); an inventory
        # then holds the host once, as sshfleet's expansion does.
        expected = (list(dict.fromkeys(theirs["hosts"])), theirs["port"])
        tails = {h.rpartition(":")[2] for h in theirs["hosts"] if ":" in h}
        if theirs["port"] is None and len(tails) == 1 and all(":" in h for h in theirs["hosts"]):
            # Ansible's address parser refuses ranges such as [:5] or [A:C]; it then leaves ":port" inside every
            # name. sshfleet reads the port (inventory/README.md, differences from Ansible).
            expected = (list(dict.fromkeys(h.rpartition(":")[0] for h in theirs["hosts"])), int(tails.pop()))
        assert ours == expected, text


# --- host patterns -------------------------------------------------------------------------------------------

_HOSTS = [f"h{i}" for i in range(6)]
_GROUPS = [f"g{i}" for i in range(4)]


_HOST_VARS = st.sampled_from(
    [
        "",
        "v=host",
        "ansible_user=hu",
        "ansible_ssh_user=hsu",
        "ansible_host=10.0.0.1",
        "ansible_ssh_host=10.0.0.2",
        "ansible_port=2201",
        "ansible_ssh_port=2202",
        "ansible_private_key_file=/k/p",
        "ansible_ssh_private_key_file=/k/s",
    ]
)
_GROUP_VARS = st.sampled_from(
    [
        "v=GROUP",
        "w=GROUP",
        "ansible_user=GROUP",
        "ansible_ssh_user=GROUP",
        "ansible_port=2300",
        "ansible_ssh_port=2301",
        "ansible_host=GROUP.example",
        "ansible_group_priority=5",
        "ansible_group_priority=-2",
    ]
)


@st.composite
def _inventory_text(draw: st.DrawFn) -> str:
    """A random INI inventory: hosts before any section, groups with children (no cycles), host lines with
    ``:port`` and vars, group vars with priorities and the ssh aliases."""

    def host_line(name: str) -> str:
        port = f":{draw(st.integers(2000, 2010))}" if draw(st.integers(0, 4)) == 0 else ""
        extra = " ".join(v for v in draw(st.lists(_HOST_VARS, max_size=2, unique=True)) if v)
        if name in _GROUPS:
            extra = ""  # Ansible sets them on the group of that name (inventory/README.md, differences)
        return f"{name}{port} {extra}".strip()

    hosts = draw(st.lists(st.sampled_from([*_HOSTS, "g1"]), min_size=1, max_size=7, unique=True))
    lines = [host_line(h) for h in hosts if draw(st.integers(0, 3)) == 0]
    for index, group in enumerate(_GROUPS):
        members = draw(st.lists(st.sampled_from(hosts), max_size=4, unique=True))
        lines += [f"[{group}]", *(host_line(h) for h in members)]
        later = _GROUPS[index + 1 :]
        children = draw(st.lists(st.sampled_from(later), max_size=2, unique=True)) if later else []
        if children:
            lines += [f"[{group}:children]", *children]
        group_vars = draw(st.lists(_GROUP_VARS, max_size=3, unique_by=lambda v: v.split("=")[0]))
        if group_vars:
            lines += [f"[{group}:vars]", *(v.replace("GROUP", group) for v in group_vars)]
    if draw(st.booleans()):
        lines += ["[all:vars]", "v=all", "ansible_user=everyone"]
    return "\n".join(lines) + "\n"


_TERMS = st.sampled_from(
    [*_HOSTS, *_GROUPS, "all", "*", "ungrouped", "g*", "h?", "~h[0-2]", "~g", "*1", "nope"]
    + [f"{g}{s}" for g in ("g0", "g1", "g2", "all") for s in ("[0]", "[1]", "[-1]", "[1:]", "[0:1]", "[2:3]")]
)


@st.composite
def _pattern(draw: st.DrawFn) -> str:
    terms = draw(st.lists(st.tuples(st.sampled_from(["", "", "&", "!"]), _TERMS), min_size=1, max_size=4))
    return draw(st.sampled_from([":", ","])).join(op + term for op, term in terms)


@FUZZ
@given(text=_inventory_text(), patterns=st.lists(_pattern(), min_size=8, max_size=8, unique=True))
def test_random_inventories_read_and_select_as_in_ansible(
    ansible: AnsibleReference, tmp_path_factory: pytest.TempPathFactory, text: str, patterns: list[str]
) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "inventory.ini"
    path.write_text(text)
    answers = ansible.ask({"op": "inventory", "path": str(path), "patterns": patterns})
    assert "error" not in answers[0], answers[0]
    ours = Inventory.load(path)
    check_inventory(ours, answers)
    check_patterns(ours, answers)


@st.composite
def _yaml_inventory_text(draw: st.DrawFn) -> str:
    """A random YAML inventory: hosts under ``all`` and in groups nested as children, host and group vars with
    priorities, ssh aliases, ports on names and typed values."""
    values = st.sampled_from(["text", 5, 2.5, True, "yes", None, [1, "two"], {"k": "v"}])

    def host_vars() -> dict[str, object]:
        chosen = draw(st.lists(_HOST_VARS, max_size=2, unique=True))
        found: dict[str, object] = dict(v.split("=", 1) for v in chosen if v)
        if draw(st.booleans()):
            found["typed"] = draw(values)
        return found

    def hosts() -> dict[str, object]:
        names = draw(st.lists(st.sampled_from(_HOSTS), max_size=3, unique=True))
        port = draw(st.sampled_from(["", "", ":2005"]))
        return {f"{name}{port if i == 0 else ''}": host_vars() or None for i, name in enumerate(names)}

    def group(index: int, depth: int) -> dict[str, object]:
        body: dict[str, object] = {}
        if draw(st.booleans()):
            body["hosts"] = hosts()
        group_vars = draw(st.lists(_GROUP_VARS, max_size=2, unique_by=lambda v: v.split("=")[0]))
        if group_vars:
            body["vars"] = {k: v.replace("GROUP", _GROUPS[index]) for k, v in (g.split("=", 1) for g in group_vars)}
        later = [i for i in range(index + 1, len(_GROUPS))]
        if later and depth < 2 and draw(st.booleans()):
            kids = draw(st.lists(st.sampled_from(later), min_size=1, max_size=2, unique=True))
            body["children"] = {_GROUPS[i]: group(i, depth + 1) or None for i in kids}
        return body

    top: dict[str, object] = {"hosts": hosts() or None}
    if draw(st.booleans()):
        top["vars"] = {"v": "all", "ansible_user": "everyone"}
    top["children"] = {_GROUPS[i]: group(i, 0) or None for i in draw(st.lists(st.integers(0, 3), unique=True))}
    return yaml.safe_dump({"all": top}, sort_keys=False)


@FUZZ
@given(text=_yaml_inventory_text(), patterns=st.lists(_pattern(), min_size=6, max_size=6, unique=True))
def test_random_yaml_inventories_read_and_select_as_in_ansible(
    ansible: AnsibleReference, tmp_path_factory: pytest.TempPathFactory, text: str, patterns: list[str]
) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "inventory.yml"
    path.write_text(text)
    answers = ansible.ask({"op": "inventory", "path": str(path), "patterns": patterns})
    assert "error" not in answers[0], answers[0]
    ours = Inventory.load(path)
    check_inventory(ours, answers)
    check_patterns(ours, answers)
