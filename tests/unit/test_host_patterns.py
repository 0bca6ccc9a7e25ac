"""Host ranges (expand/fold) and Ansible selection patterns, including property tests against Python sets."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sshfleet import HostSpec, InventoryError
from sshfleet.inventory import MAX_EXPANSION, Group, Inventory, expand_hostrange, fold_hosts

QUICK = settings(max_examples=200, deadline=None)


# ---------------------------------------------------------------- expand_hostrange


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web1", ["web1"]),
        ("node[01:04]", ["node01", "node02", "node03", "node04"]),
        ("node[01-04]", ["node01", "node02", "node03", "node04"]),
        ("node[8:11]", ["node8", "node9", "node10", "node11"]),
        ("node[08:11]", ["node08", "node09", "node10", "node11"]),
        ("node[01:07:3]", ["node01", "node04", "node07"]),
        ("h[a:d]", ["ha", "hb", "hc", "hd"]),
        ("h[a-c]", ["ha", "hb", "hc"]),
        ("h[x:B]", ["hx", "hy", "hz", "hA", "hB"]),  # Ansible's alphabet: a-z then A-Z
        ("h[a:e:2]", ["ha", "hc", "he"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("node[07,01-02]", ["node07", "node01", "node02"]),
        ("node[1,01]", ["node1", "node01"]),
        ("r[1:2]n[a:b].lab", ["r1na.lab", "r1nb.lab", "r2na.lab", "r2nb.lab"]),
        ("[1:2]x", ["1x", "2x"]),
        ("n[:2]", ["n0", "n1", "n2"]),  # Ansible reads a missing begin as 0
        ("web1,db[1-2]", ["web1", "db1", "db2"]),
        ("a,a,b,", ["a", "b"]),
        ("", []),
        ("[::1]:22", ["[::1]:22"]),
        ("admin@[fe80::1%eth0]", ["admin@[fe80::1%eth0]"]),
        ("admin@node[1:2]:2222", ["admin@node1:2222", "admin@node2:2222"]),
    ],
)
def test_expand(text: str, expected: list[str]) -> None:
    assert expand_hostrange(text) == expected


def test_the_begin_sets_the_padding_as_in_ansible() -> None:
    assert expand_hostrange("node[8:010]") == ["node8", "node9", "node10"]
    assert expand_hostrange("node[1:05]") == ["node1", "node2", "node3", "node4", "node5"]
    assert expand_hostrange("node[08:10]") == ["node08", "node09", "node10"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("node[01:04", "unclosed"),
        ("node01:04]", "without '['"),
        ("node[[1:2]]", "inside"),
        ("node[]", "empty element"),
        ("node[1,,2]", "empty element"),
        ("node[4:1]", "greater than end"),
        ("node[d:a]", "comes after"),
        ("node[01:100]", "same width"),
        ("node[1:5:0]", "step"),
        ("node[1:5:x]", "step"),
        ("node[1:2:3:4]", "begin:end"),
        ("node[1-2-3]", "begin-end"),
        ("node[-3]", "begin-end"),
        ("node[1:]", "no end"),
        ("node[a:5]", "two numbers or two letters"),
        ("node[1-3:2]", "two numbers or two letters"),
        ("node[a_b]", "neither"),
        ("node[0:999999999]", "limit"),
        ("a[0:999]b[0:999]", "limit"),
    ],
)
def test_expand_errors(text: str, why: str) -> None:
    with pytest.raises(InventoryError, match=re.escape(why)) as info:
        expand_hostrange(text)
    assert repr(text) in str(info.value)


def test_expansion_limit_is_inclusive() -> None:
    assert len(expand_hostrange(f"n[1:{MAX_EXPANSION}]")) == MAX_EXPANSION


@QUICK
@given(
    lo=st.integers(0, 500),
    span=st.integers(0, 300),
    step=st.integers(1, 7),
    width=st.integers(1, 4),
    form=st.sampled_from([":", "-"]),
)
def test_expand_count_and_order(lo: int, span: int, step: int, width: int, form: str) -> None:
    hi = lo + span
    width = max(width, len(str(hi)))
    padded = width > len(str(lo)) or width > len(str(hi))
    lo_s, hi_s = (str(lo).zfill(width), str(hi).zfill(width)) if padded else (str(lo), str(hi))
    if form == "-":
        step = 1
        body = f"{lo_s}-{hi_s}"
    else:
        body = f"{lo_s}:{hi_s}:{step}"
    names = expand_hostrange(f"n[{body}]x")
    numbers = list(range(lo, hi + 1, step))
    assert len(names) == len(numbers)
    assert [int(name[1:-1]) for name in names] == numbers  # right order
    if padded:
        assert all(len(name) == width + 2 for name in names)
    else:
        assert all(name == f"n{n}x" for name, n in zip(names, numbers))


# ---------------------------------------------------------------- fold_hosts


@pytest.mark.parametrize(
    ("names", "label"),
    [
        (["node01", "node02", "node03", "node04", "node07"], "node[01-04,07]"),
        (["node07", "node03", "node01", "node02", "node04"], "node[01-04,07]"),
        (["node1", "node2", "node10"], "node[1-2,10]"),
        (["node8", "node9", "node10", "node11"], "node[8-11]"),
        (["node08", "node09", "node10", "node11"], "node[08-11]"),
        (["node098", "node099", "node100"], "node[098-100]"),
        (["node08", "node09", "node100"], "node[08-09,100]"),
        (["node1", "node01"], "node[01,1]"),
        (["web5"], "web5"),
        (["web"], "web"),
        (["b", "a", "a"], "a,b"),
        (["r1-n01.lab", "r1-n02.lab", "r2-n01.lab"], "r1-n[01-02].lab,r2-n01.lab"),
        (["db1", "web1", "web2", "gw"], "db1,gw,web[1-2]"),
        ([], ""),
    ],
)
def test_fold(names: list[str], label: str) -> None:
    assert fold_hosts(names) == label
    assert set(expand_hostrange(label)) == set(names)


def _numbered_names() -> st.SearchStrategy[list[str]]:
    prefix = st.text(string.ascii_lowercase + "-.", max_size=4)
    suffix = st.text(string.ascii_lowercase + "-.", max_size=3)
    number = st.integers(0, 120).flatmap(lambda n: st.integers(0, 4).map(lambda w: str(n).zfill(w)))
    name = st.builds(lambda p, n, s: p + n + s, prefix, number, suffix) | st.text(
        string.ascii_lowercase, min_size=1, max_size=3
    )
    return st.lists(name, max_size=40)


@QUICK
@given(_numbered_names())
def test_fold_round_trips(names: list[str]) -> None:
    label = fold_hosts(names)
    expanded = expand_hostrange(label)
    assert sorted(expanded) == sorted(set(names))  # same set, nothing twice
    assert fold_hosts(expanded) == label  # stable
    assert fold_hosts(reversed(names)) == label  # input order does not matter


@QUICK
@given(st.sets(st.integers(0, 200), min_size=1), st.integers(1, 4))
def test_fold_padded_numbers_expand_in_order(numbers: set[int], width: int) -> None:
    names = [f"node{n:0{width}d}" for n in sorted(numbers)]
    assert expand_hostrange(fold_hosts(names)) == names


# ---------------------------------------------------------------- select


@pytest.fixture
def inventory() -> Inventory:
    hosts = ["web1", "web2", "web3", "db1", "db2", "gw", "node01", "node02", "node03", "::1"]
    groups = {
        "web": Group("web", ("web1", "web2", "web3")),
        "db": Group("db", ("db1", "db2")),
        "prod": Group("prod", ("web1", "web2", "db1"), children=()),
        "webservers": Group("webservers", ("web3",)),
        "nodes": Group("nodes", ("node01", "node02", "node03")),
    }
    return Inventory([HostSpec(h) for h in hosts], groups, source="test-inventory")


def names(inventory: Inventory, pattern: str) -> list[str]:
    return [spec.name for spec in inventory.select(pattern)]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("all", "web1 web2 web3 db1 db2 gw node01 node02 node03 ::1"),
        ("*", "web1 web2 web3 db1 db2 gw node01 node02 node03 ::1"),
        ("web", "web1 web2 web3"),
        ("gw", "gw"),
        ("db:web", "db1 db2 web1 web2 web3"),  # Ansible's order: each plain term's hosts in turn
        ("db,web", "db1 db2 web1 web2 web3"),
        ("web[0]", "web1"),  # Ansible's subscripts on a group
        ("web[1:]", "web2 web3"),
        ("web[-1]", "web3"),
        ("web[0:1]", "web1 web2"),
        ("web[1:0]", "web2"),  # an end of 0 means "no end": the single host 1, as in Ansible
        ("web[0-1]", "web1 web2"),
        ("all:!web[0]", "web2 web3 db1 db2 gw node01 node02 node03 ::1"),
        ("nodes[1:],web[0]", "node02 node03 web1"),
        ("web db", "web1 web2 web3 db1 db2"),  # whitespace separates terms too
        ("web:web1:web", "web1 web2 web3"),
        ("web:&prod", "web1 web2"),
        ("web:!prod", "web3"),
        ("!web", "db1 db2 gw node01 node02 node03 ::1"),
        ("&prod", "web1 web2 db1"),
        ("!prod:web", "web3"),  # exclusions apply last, wherever they are written
        ("web:!prod:db", "web3 db2"),
        ("web*", "web1 web2 web3"),
        ("web?", "web1 web2 web3"),
        ("*1", "web1 db1 node01 ::1"),
        ("w*:&*2", "web2"),
        ("zzz*", ""),
        ("~web[12]", "web1 web2"),
        ("~(web|db)1", "web1 db1"),
        ("~eb", ""),  # re.match: anchored at the start, as in Ansible
        ("~[[w]eb1", "web1"),  # a FutureWarning from re must not break selection
        ("~zzz", ""),
        ("node[01-02]", "node01 node02"),
        ("node[01-03,07]", None),  # node07 is unknown: an error, see below
        ("all:!node[02:03]", "web1 web2 web3 db1 db2 gw node01 ::1"),
        ("node[01-02]*", "node01 node02"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("gw,::1", "gw ::1"),
        (" web , db ", "web1 web2 web3 db1 db2"),
        ("web::db", "web1 web2 web3 db1 db2"),
    ],
)
def test_select(inventory: Inventory, pattern: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InventoryError, match="node07"):
            inventory.select(pattern)
    else:
        assert names(inventory, pattern) == expected.split()


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("wbe1", "no host or group named 'wbe1' in test-inventory (did you mean 'web1'"),
        ("web:!wbe", "no host or group named 'wbe'"),  # a misspelt exclusion must not exclude nothing
        ("web:&nope", "no host or group named 'nope'"),
        ("node[04-06]", "3 names match no host or group in test-inventory: node[04-06]"),
        ("", "empty host pattern"),
        ("   ", "empty host pattern"),
        ("web:!", "nothing after it"),
        ("~web[,db", "bad regular expression"),
        ("~web[", "unclosed '['"),  # Ansible would drop the '[' and select web*
        ("web[7]", "no hosts matched the subscripted pattern 'web[7]'"),
        ("node[3:1]", "in host pattern 'node[3:1]'"),
    ],
)
def test_select_errors(inventory: Inventory, pattern: str, message: str) -> None:
    with pytest.raises(InventoryError, match=re.escape(message)):
        inventory.select(pattern)


def test_select_returns_hostspecs(inventory: Inventory) -> None:
    assert inventory.select("gw") == [inventory.hosts["gw"]]
    assert all(isinstance(spec, HostSpec) for spec in inventory.select("all"))


def test_a_host_wins_over_a_group_of_the_same_name() -> None:
    inv = Inventory([HostSpec("g"), HostSpec("b"), HostSpec("c")], {"g": Group("g", ("b",))})
    assert names(inv, "g") == ["g"]
    # After & and !, the group wins, as in Ansible.
    assert names(inv, "all:!g") == ["g", "c"]
    assert names(inv, "all:&g") == ["b"]
    assert names(inv, "g*") == ["b", "g"]  # a glob matches the group, then the host


@st.composite
def _inventory_and_groups(draw: st.DrawFn) -> tuple[Inventory, dict[str, set[str]]]:
    hosts = draw(st.lists(st.sampled_from([f"h{i}" for i in range(12)]), min_size=1, unique=True))
    members = {
        f"g{i}": set(draw(st.lists(st.sampled_from(hosts), unique=True))) for i in range(draw(st.integers(1, 5)))
    }
    groups = {name: Group(name, tuple(h for h in hosts if h in found)) for name, found in members.items()}
    members.update({h: {h} for h in hosts})
    return Inventory([HostSpec(h) for h in hosts], groups), members


@QUICK
@given(_inventory_and_groups(), st.data())
def test_patterns_agree_with_set_operations(case: tuple[Inventory, dict[str, set[str]]], data: st.DataObject) -> None:
    inv, members = case
    terms = data.draw(
        st.lists(st.tuples(st.sampled_from(["", "&", "!"]), st.sampled_from(sorted(members))), min_size=1)
    )
    separator = data.draw(st.sampled_from([":", ","]))
    pattern = separator.join(op + name for op, name in terms)
    plain = [members[n] for op, n in terms if op == ""]
    expected: set[str] = set().union(*plain) if plain else set(inv.hosts)
    for op, name in terms:
        if op == "&":
            expected &= members[name]
    for op, name in terms:
        if op == "!":
            expected -= members[name]
    # Ansible's order: the hosts of each plain term in turn (a group's in its order), each once.
    order = [h for op, n in terms if op == "" for h in (inv.groups[n].hosts if n in inv.groups else (n,))]
    if not plain:
        order = list(inv.hosts)
    selected = names(inv, pattern)
    assert selected == [h for h in dict.fromkeys(order) if h in expected]
