"""Inventory formats (Ansible INI and YAML, plain host lists), variable precedence, and every parse error."""

from __future__ import annotations

import logging
import random
import re
import textwrap
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sshfleet import HostSpec, InventoryError
from sshfleet.inventory import Inventory, detect_format, load_hosts

EXAMPLES = Path(__file__).resolve().parents[2] / "inventory"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, name: str, text: str) -> Inventory:
    return Inventory.load(write(tmp_path, name, text))


def error_of(tmp_path: Path, name: str, text: str) -> InventoryError:
    path = write(tmp_path, name, text)
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    return info.value


# ---------------------------------------------------------------- INI


def test_ini_groups_children_and_vars(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "lab.ini",
        """
        # comment
        ; another comment
        bastion ansible_host=192.0.2.9

        [routers]
        vrouter ansible_host=10.0.0.1 ansible_port=2222 note="two words"  # trailing comment
        ct1

        [web]
        web[01:03].lab ansible_user=www

        [prod:children]
        routers
        web  # comment

        [prod:vars]
        ansible_user = admin
        motd="hello # not a comment"
        plain=value # a comment
        [all:vars]
        site='lab 2'
        """,
    )
    assert list(inv.hosts) == ["bastion", "vrouter", "ct1", "web01.lab", "web02.lab", "web03.lab"]
    assert list(inv.groups) == ["all", "ungrouped", "routers", "web", "prod"]
    assert inv.groups["ungrouped"].hosts == ("bastion",)
    assert inv.groups["prod"].hosts == ("vrouter", "ct1", "web01.lab", "web02.lab", "web03.lab")
    assert inv.groups["prod"].children == ("routers", "web")
    assert inv.groups["prod"].vars == {"ansible_user": "admin", "motd": "hello # not a comment", "plain": "value"}
    vrouter = inv.hosts["vrouter"]
    assert (vrouter.hostname, vrouter.port, vrouter.user) == ("10.0.0.1", 2222, "admin")
    assert vrouter.vars["note"] == "two words"
    assert vrouter.vars["site"] == "lab 2"
    assert inv.hosts["web02.lab"].user == "www"  # host var beats group var
    assert inv.hosts["bastion"] == HostSpec("bastion", hostname="192.0.2.9")
    assert inv.hosts["bastion"].vars == {"site": "lab 2", "ansible_host": "192.0.2.9"}


def test_ini_host_named_before_sections_and_in_a_group_is_not_ungrouped(tmp_path: Path) -> None:
    inv = load(tmp_path, "i.ini", "a\nb\n[g]\na\n[ungrouped:vars]\nx=1\n")
    assert inv.groups["ungrouped"].hosts == ("b",)
    assert "x" not in inv.hosts["a"].vars
    assert inv.hosts["b"].vars == {"x": "1"}


def test_ini_forward_references_and_explicit_hosts_kind(tmp_path: Path) -> None:
    inv = load(tmp_path, "i.ini", "[top:vars]\nv=1\n[top:children]\nmid\n[mid:hosts]\nh1\n[top]\n")
    assert inv.groups["top"].hosts == ("h1",)
    assert inv.hosts["h1"].vars == {"v": "1"}


def test_ini_user_and_port_on_the_host_name(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.ini",
        """
        [g]
        alice@a:2200
        b:2201 ansible_port=2300
        [2001:db8::1]:2202
        c
        2001:db8::7 ansible_user=six
        [g:vars]
        sshfleet_user=group
        ansible_port=22
        [s]
        d:2203
        [s:vars]
        sshfleet_port=2400
        """,
    )
    # user@ is sshfleet_user, the strongest; :port is the host var ansible_port, as in Ansible.
    assert (inv.hosts["a"].user, inv.hosts["a"].port) == ("alice", 2200)  # the host line beats group vars
    assert inv.hosts["a"].vars["ansible_port"] == "2200"
    assert inv.hosts["b"].port == 2300  # h:2222 ansible_port=3333 is 3333, as in Ansible
    assert inv.hosts["2001:db8::1"].port == 2202
    assert (inv.hosts["c"].user, inv.hosts["c"].port) == ("group", 22)
    assert inv.hosts["2001:db8::7"].user == "group"  # a bare IPv6 address is a host line
    assert inv.hosts["d"].port == 2400  # sshfleet_port wins over ansible_port wherever each was set


def test_same_host_in_several_groups_merges_its_vars(tmp_path: Path) -> None:
    inv = load(tmp_path, "i.ini", "[a]\nh x=1 y=1\n[b]\nh y=2\n")
    assert inv.hosts["h"].vars == {"x": "1", "y": "2"}
    assert inv.groups["a"].hosts == inv.groups["b"].hosts == ("h",)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[web\nh\n", 1, None),  # "[web" is a host line then: not a host
        ("[web name]\n", 1, "bad section header '[web name]'"),
        ("[web:hostz]\nh\n", 1, "unknown section kind 'hostz'"),
        ("[web]\nh\n[web:vars]\nnovalue\n", 4, "expected key=value in a vars section, got 'novalue'"),
        ("[web]\nh\n[web:vars]\n=x\n", 4, "bad variable name ''"),
        ("[web]\nh\n[web:vars]\nbad key=x\n", 4, "bad variable name 'bad key'"),
        ('[web]\nh\n[web:vars]\nk="open\n', 4, 'unclosed " in value'),
        ('[web]\nh\n[web:vars]\nk="a" b\n', 4, "text after the closing quote"),
        ("[web]\n\nh port\n", 3, "expected key=value host variable after the host name, got 'port'"),
        ("[web]\nh 1x=2\n", 2, "bad variable name '1x'"),
        ('[web]\nh note="open\n', 2, "cannot split host line"),
        ("[web]\nnode[01:3]\n", 2, "same width"),
        ("[web]\nnode[1:3\n", 2, "unclosed '['"),
        ("[web]\nh:99999\n", 2, "port out of range"),
        ("[web]\nh:22:33\n", 2, "not a host"),
        ("[web]\nh ansible_port=ssh\n", 2, "ansible_port='ssh' is not a port"),
        ("[web]\nh\n[web:vars]\nsshfleet_port=0\n", 4, "sshfleet_port='0' is not a port"),
        ("[web]\nh ansible_host='{{ inventory_hostname }}.lab'\n", 2, "is a Jinja template"),
        ("[a:children]\nb\n[b:children]\na\n", 4, "cycle in children: b -> a -> b"),
        ("[a:children]\na\n", 2, "cycle in children: a -> a"),
        ("[a:children]\nall\n", 2, "'all' cannot be a child of 'a'"),
        ("[a]\nh\n[a:children]\nb c\n", 4, "expected one group name in [a:children], got 'b c'"),
        ("[a]\nh\n\n[a:children]\nweb\n", 5, "[a:children] names group 'web', which is defined nowhere"),
        ("[a]\nh\n[wbe:vars]\nx=1\n", 3, "[wbe:vars] is for group 'wbe', which is defined nowhere"),
    ],
)
def test_ini_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str | None) -> None:
    error = error_of(tmp_path, "bad.ini", text)
    path = str(tmp_path / "bad.ini")
    assert str(error).startswith(f"{path}:{line}: ")
    assert (error.path, error.line) == (path, line)
    if message is not None:
        assert message in str(error)


def test_jinja_in_an_overridden_ansible_var_is_fine(tmp_path: Path) -> None:
    inv = load(tmp_path, "i.ini", "h ansible_host='{{ x }}' sshfleet_host=10.1.1.1\n")
    assert inv.hosts["h"].hostname == "10.1.1.1"


# ---------------------------------------------------------------- precedence


def test_precedence_all_parent_child_host(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.ini",
        """
        [all:vars]
        a=all
        b=all
        c=all
        d=all
        [parent:children]
        child
        [parent:vars]
        b=parent
        c=parent
        d=parent
        [child]
        h d=host
        [child:vars]
        c=child
        d=child
        """,
    )
    assert inv.hosts["h"].vars == {"a": "all", "b": "parent", "c": "child", "d": "host"}


def test_precedence_same_depth_is_alphabetical(tmp_path: Path) -> None:
    # As in Ansible: groups of equal depth merge in name order, so "zeta" beats "alpha" whatever the file order.
    inv = load(tmp_path, "i.ini", "[zeta]\nh\n[alpha]\nh\n[zeta:vars]\nv=zeta\n[alpha:vars]\nv=alpha\n")
    assert inv.hosts["h"].vars["v"] == "zeta"


def test_depth_is_the_longest_path_from_all(tmp_path: Path) -> None:
    # "deep" is a child of "top" and of "mid" (itself a child of "top"): depth 3 beats "mid"'s 2.
    inv = load(
        tmp_path,
        "i.ini",
        "[top:children]\nmid\ndeep\n[mid:children]\ndeep\n[deep]\nh\n[mid:vars]\nv=mid\n[deep:vars]\nv=deep\n",
    )
    assert inv.hosts["h"].vars["v"] == "deep"


@pytest.mark.parametrize(
    ("host_vars", "expected"),
    [
        ("ansible_host=a ansible_ssh_host=b", "b"),  # the ssh plugin takes ansible_ssh_host
        ("ansible_ssh_host=b", "b"),
        ("sshfleet_host=s ansible_host=a", "s"),
        ("sshfleet_host= ansible_host=a", "a"),  # empty means unset
    ],
)
def test_hostname_var_names(tmp_path: Path, host_vars: str, expected: str) -> None:
    assert load(tmp_path, "i.ini", f"h {host_vars}\n").hosts["h"].hostname == expected


def test_sshfleet_names_win_over_ansible_names_at_any_level(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.ini",
        """
        [g]
        h ansible_user=hostuser ansible_port=2222
        h ansible_python_interpreter=/usr/bin/python3 ansible_ssh_private_key_file=/k/a
        [g:vars]
        sshfleet_user=fleet
        sshfleet_port=2200
        sshfleet_python=/opt/py3
        sshfleet_identity_file=/k/s
        """,
    )
    spec = inv.hosts["h"]
    assert (spec.user, spec.port, spec.python, spec.identity_file) == ("fleet", 2200, "/opt/py3", "/k/s")
    assert spec.vars["ansible_user"] == "hostuser"


@pytest.mark.parametrize("value", ["auto", "auto_silent", "auto_legacy", "auto_legacy_silent"])
def test_ansible_auto_python_means_probe(tmp_path: Path, value: str) -> None:
    assert load(tmp_path, "i.ini", f"h ansible_python_interpreter={value}\n").hosts["h"].python is None


# ---------------------------------------------------------------- YAML


def test_yaml_nested_groups(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "lab.yml",
        """
        all:
          hosts:
            bastion:
              ansible_host: 192.0.2.9
          vars:
            site: lab
            debug: yes
            mode: 0755
            empty:
            ports: [1, 2]
            nested: {a: b}
          children:
            prod:
              vars: {ansible_user: admin}
              children:
                routers:
                  hosts:
                    vrouter: {ansible_host: 10.0.0.1, ansible_port: 2222}
                    ct1:
                web:
                  hosts:
                    web[01:02]:
                      ansible_user: www
            routers:
              vars:
                role: router
        """,
    )
    assert list(inv.hosts) == ["bastion", "vrouter", "ct1", "web01", "web02"]
    assert inv.groups["prod"].children == ("routers", "web")
    assert inv.groups["routers"].vars == {"role": "router"}
    assert inv.groups["ungrouped"].hosts == ("bastion",)
    vrouter = inv.hosts["vrouter"]
    assert (vrouter.hostname, vrouter.port, vrouter.user) == ("10.0.0.1", 2222, "admin")
    assert vrouter.vars["role"] == "router"
    assert inv.hosts["web01"].user == "www"
    # Values keep the text as written; lists and mappings become JSON.
    bastion = inv.hosts["bastion"].vars
    assert (bastion["debug"], bastion["mode"], bastion["empty"]) == ("yes", "0755", "")
    assert (bastion["ports"], bastion["nested"]) == ("[1, 2]", '{"a": "b"}')


def test_yaml_top_level_groups_anchors_and_merge_keys(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.yaml",
        """
        web:
          hosts:
            w1: &defaults
              ansible_user: ops
              ansible_port: 2222
            w2:
              <<: *defaults
              ansible_port: 22
        db:
          hosts:
            d1: *defaults
        """,
    )
    assert (inv.hosts["w2"].user, inv.hosts["w2"].port) == ("ops", 22)
    assert (inv.hosts["d1"].user, inv.hosts["d1"].port) == ("ops", 2222)
    assert list(inv.groups) == ["all", "ungrouped", "web", "db"]


def test_yaml_vault_values_are_skipped(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.yml",
        """
        all:
          hosts:
            h:
              ansible_user: ops
              ansible_password: !vault |
                $ANSIBLE_VAULT;1.1;AES256
                6162
        """,
    )
    assert inv.hosts["h"].vars == {"ansible_user": "ops"}


@pytest.mark.parametrize("text", ["", "---\n", "# only a comment\n", "~\n"])
def test_empty_yaml_is_an_empty_inventory(tmp_path: Path, text: str) -> None:
    inv = load(tmp_path, "i.yml", text)
    assert len(inv) == 0
    assert inv.select("all") == []


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("all:\n  hosts:\n    - a\n    - b\n", 3, "hosts of group 'all' must be a mapping (host: vars), not a list"),
        ("- a\n- b\n", 1, "a YAML inventory must be a mapping of groups (like 'all:'), got a list"),
        ("just-a-host\n", 1, "must be a mapping of groups"),
        ("all:\n  host:\n    a:\n", 2, "unknown key 'host' in group 'all' (expected hosts, vars or children)"),
        ("all: [a]\n", 1, "group 'all' must be a mapping with hosts, vars or children, got a list"),
        ("all:\n  vars: [a]\n", 2, "vars of group 'all' must be a mapping, got a list"),
        ("all:\n  children: x\n", 2, "children of group 'all' must be a mapping"),
        ("all:\n  hosts:\n    a: [1]\n", 3, "vars of host 'a' must be a mapping"),
        ("all:\n  hosts:\n    a:\n      [x]: 1\n", 4, "a variable name in vars of host 'a' must be a non-empty string"),
        ("all:\n  hosts:\n    ~:\n", 3, "a host name in group 'all' must be a non-empty string"),
        ("all:\n  hosts:\n    a: {b: 1\n", 4, "invalid YAML"),
        ("all:\n\tbad\n", 2, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", 2, "invalid YAML: expected a single document in the stream but found another"),
        ("all:\n  hosts:\n    n[3:1]:\n", 3, "begin 3 is greater than end 1"),
        ("all:\n  hosts:\n    a:\n      ansible_port: x\n", 4, "ansible_port='x' is not a port"),
        ("a:\n  children:\n    b:\n      children:\n        a:\n", 5, "cycle in children: b -> a -> b"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    error = error_of(tmp_path, "bad.yml", text)
    assert str(error).startswith(f"{tmp_path / 'bad.yml'}:{line}: ")
    assert message in str(error)


def test_yaml_python_tags_are_not_executed(tmp_path: Path) -> None:
    error = error_of(tmp_path, "bad.yml", "all:\n  vars:\n    k: !!python/object/apply:os.getpid [[]]\n")
    assert str(error).startswith(f"{tmp_path / 'bad.yml'}:3: cannot read value")
    inv = load(tmp_path, "ok.yml", "all:\n  hosts:\n    h:\n      k: !!python/name:os.system\n      u: !unsafe x\n")
    assert inv.hosts["h"].vars == {"k": "", "u": "x"}  # a tagged scalar is only its text


# ---------------------------------------------------------------- plain host lists


def test_plain_host_list(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "hosts",
        """
        # fleet
        vrouter.lab
        admin@ct1.lab:2222   # trailing comment

        node[01-03]
        [::1]:2200
        vrouter.lab
        """,
    )
    assert list(inv.hosts) == ["vrouter.lab", "ct1.lab", "node01", "node02", "node03", "::1"]
    assert inv.hosts["ct1.lab"] == HostSpec("ct1.lab", user="admin", port=2222)
    assert inv.hosts["::1"].port == 2200
    assert inv.groups["ungrouped"].hosts == tuple(inv.hosts)
    assert list(inv.groups) == ["all", "ungrouped"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a\nb c\n", 2, "one host per line, got 'b c'"),
        ("a\n\nb=c\n", 3, "host variables are not allowed in a host list"),
        ("a\nb:0\n", 2, "port out of range"),
        ("a\nn[1-\n", 2, "unclosed '['"),
        ("a\nalice@a\n", 2, "host 'a' is listed again with a different user or port (first at"),
        ("a\nb:22\nb:23\n", 3, "first at"),
        ("a\nbad/host\n", 2, "not a host"),
    ],
)
def test_plain_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    error = error_of(tmp_path, "hosts.txt", text)
    assert str(error).startswith(f"{tmp_path / 'hosts.txt'}:{line}: ")
    assert message in str(error)


# ---------------------------------------------------------------- loading, detection, files


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("x.yml", "a\n", "yaml"),
        ("x.yaml", "a\n", "yaml"),
        ("x.json", "{}", "yaml"),
        ("x.ini", "a\n", "ini"),
        ("x", "---\nall:\n", "yaml"),
        ("x", "# c\nall:\n  hosts:\n", "yaml"),
        ("x", "all: {hosts: {a: }}\n", "yaml"),
        ("x", "a\n[web]\nb\n", "ini"),
        ("x", "a ansible_host=b\n", "ini"),
        ("x", "; comment\na\n", "ini"),
        ("x", "a\nb:22\nuser@c\n", "hosts"),
        ("x", "[::1]:22\n[fe80::1]\n", "hosts"),
        ("x", "", "hosts"),
    ],
)
def test_detect_format(name: str, text: str, kind: str) -> None:
    assert detect_format(name, text) == kind


def test_format_can_be_forced(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.txt", "a\nb\n")
    assert list(Inventory.load(path, format="ini").hosts) == ["a", "b"]
    with pytest.raises(InventoryError, match="unknown inventory format 'toml'"):
        Inventory.load(path, format="toml")  # type: ignore[arg-type]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no such inventory file") as info:
        Inventory.load(tmp_path / "missing.ini")
    assert str(info.value).startswith(str(tmp_path / "missing.ini"))
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(InventoryError, match="is a directory"):
        Inventory.load(tmp_path)
    (tmp_path / "bin.ini").write_bytes(b"a\nb\n\xff\xfe\n")
    with pytest.raises(InventoryError, match=re.escape(f"{tmp_path / 'bin.ini'}:3: not UTF-8 text")):
        Inventory.load(tmp_path / "bin.ini")


def test_bom_and_crlf(tmp_path: Path) -> None:
    (tmp_path / "w.ini").write_bytes(b"\xef\xbb\xbf[g]\r\nh1 ansible_port=22\r\nh2\r\n")
    inv = Inventory.load(tmp_path / "w.ini")
    assert inv.groups["g"].hosts == ("h1", "h2")
    assert inv.hosts["h1"].port == 22


def test_group_vars_and_host_vars_directories(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "inv/hosts.ini", "[web]\nw1 ansible_user=inline x=inline\nw2\n[web:vars]\nansible_port=2000\n")
    write(tmp_path, "inv/group_vars/all.yml", "ansible_port: 1000\nsite: lab\n")
    write(tmp_path, "inv/group_vars/web/10-main.yaml", "ansible_port: 3000\nrole: web\n")
    write(tmp_path, "inv/group_vars/web/20-more", "role: frontend\n")
    write(tmp_path, "inv/group_vars/web/.hidden.yml", "role: hidden\n")
    write(tmp_path, "inv/group_vars/web/notes.txt", "not: read\n")
    write(tmp_path, "inv/group_vars/web/vault.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    write(tmp_path, "inv/group_vars/unknown.yml", "{not even: [valid\n")  # no such group: never read
    write(tmp_path, "inv/host_vars/w1.yml", "ansible_user: fromdir\n")
    write(tmp_path, "inv/host_vars/w2.json", '{"ansible_host": "10.0.0.2"}')
    with caplog.at_level(logging.WARNING, logger="sshfleet.inventory"):
        inv = Inventory.load(tmp_path / "inv" / "hosts.ini")
    assert "vault.yml: encrypted with ansible-vault" in caplog.text
    w1, w2 = inv.hosts["w1"], inv.hosts["w2"]
    # inventory group vars < group_vars/all < group_vars/web < inline host vars < host_vars/
    assert (w1.port, w1.user, w1.vars["x"], w1.vars["role"], w1.vars["site"]) == (
        3000,
        "fromdir",
        "inline",
        "frontend",
        "lab",
    )
    assert (w2.port, w2.hostname, w2.user) == (3000, "10.0.0.2", None)


def test_bad_vars_file_names_its_own_path_and_line(tmp_path: Path) -> None:
    write(tmp_path, "inv/hosts.yml", "all:\n  hosts:\n    h:\n")
    write(tmp_path, "inv/host_vars/h.yml", "a: 1\nansible_port: many\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load(tmp_path / "inv" / "hosts.yml")
    assert str(info.value).startswith(f"{tmp_path / 'inv/host_vars/h.yml'}:2: host 'h': ansible_port='many'")
    write(tmp_path, "inv/host_vars/h.yml", "- a\n")
    with pytest.raises(InventoryError, match=re.escape("h.yml:1: a vars file must be a mapping, got a list")):
        Inventory.load(tmp_path / "inv" / "hosts.yml")


def test_plain_host_lists_ignore_vars_directories(tmp_path: Path) -> None:
    write(tmp_path, "hosts.txt", "h\n")
    write(tmp_path, "host_vars/h.yml", "ansible_user: x\n")
    assert Inventory.load(tmp_path / "hosts.txt").hosts["h"].user is None


def test_example_inventories_agree() -> None:
    ini = Inventory.load(EXAMPLES / "lab.ini")
    yml = Inventory.load(EXAMPLES / "lab.yml")
    assert list(ini.hosts) == list(yml.hosts)
    for a, b in zip(ini, yml):
        assert (a, a.vars) == (b, b.vars)
    assert {k: g.hosts for k, g in ini.groups.items()} == {k: g.hosts for k, g in yml.groups.items()}
    node = ini.hosts["node03"]
    assert (node.user, node.python, node.identity_file) == ("hpc", "/usr/bin/python3.11", "~/.ssh/lab_ed25519")
    assert [h.name for h in ini.select("lab:!compute:!storage")] == ["vrouter", "ct1"]
    plain = Inventory.load(EXAMPLES / "hosts.txt")
    assert plain.hosts["192.0.2.20"] == HostSpec("192.0.2.20", user="admin", port=2222)
    assert plain.hosts["2001:db8::5"].port == 22


# ---------------------------------------------------------------- from_hosts, load_hosts, Inventory


def test_from_hosts() -> None:
    spec = HostSpec("c", hostname="10.0.0.3", vars={"k": "v"})
    inv = Inventory.from_hosts(["user@a:2222", "b", spec, "n[1-2]", "b"])
    assert list(inv.hosts) == ["a", "b", "c", "n1", "n2"]
    assert (inv.hosts["a"].user, inv.hosts["a"].port) == ("user", 2222)
    assert inv.hosts["c"] is spec
    assert inv.select("n*") == [HostSpec("n1"), HostSpec("n2")]


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (["a", "bad host"], "<hosts>:2: not a host: 'bad host'"),
        (["a", "b:70000"], "<hosts>:2: port out of range"),
        (["a", "n[1:"], "<hosts>:2: bad host range"),
        (["alice@a", "bob@a"], "<hosts>:2: host 'a' is listed again with a different user or port"),
        ([HostSpec("a"), "a"], "<hosts>:2: host 'a' is given twice (first at <hosts>:1)"),
        (["a", HostSpec("a")], "<hosts>:2: host 'a' is given twice (first at <hosts>:1)"),
        (["a", 3], "<hosts>:2: a host must be a string or a HostSpec, got int"),
    ],
)
def test_from_hosts_errors(hosts: list[object], message: str) -> None:
    with pytest.raises(InventoryError, match=re.escape(message)):
        Inventory.from_hosts(hosts)  # type: ignore[arg-type]


def test_from_hosts_rejects_a_bare_string() -> None:
    with pytest.raises(InventoryError, match="wants a list"):
        Inventory.from_hosts("a,b")


def test_load_hosts(tmp_path: Path) -> None:
    path = write(tmp_path, "i.ini", "[web]\nw1\nw2\n[db]\nd1\n")
    assert [h.name for h in load_hosts(path)] == ["w1", "w2", "d1"]
    assert [h.name for h in load_hosts(str(path), "db")] == ["d1"]
    assert [h.name for h in load_hosts(["x", "y:22"], "y")] == ["y"]
    assert [h.name for h in load_hosts(("x",))] == ["x"]
    inv = Inventory.load(path)
    assert load_hosts(inv, "web:!w1") == [inv.hosts["w2"]]
    with pytest.raises(InventoryError, match="no such inventory file"):
        load_hosts("not-a-file-but-a-host")


def test_inventory_container_protocol() -> None:
    inv = Inventory([HostSpec("a"), HostSpec("b"), HostSpec("a", user="dup")])
    assert len(inv) == 2 and "a" in inv and "z" not in inv
    assert [h.name for h in inv] == ["a", "b"]
    assert inv.hosts["a"].user is None  # the first one wins
    assert inv.groups["all"].hosts == inv.groups["ungrouped"].hosts == ("a", "b")
    assert repr(inv) == "<Inventory <hosts>: 2 hosts, 2 groups>"


def test_inventory_built_from_groups_computes_all_and_ungrouped() -> None:
    from sshfleet.inventory import Group

    inv = Inventory([HostSpec("a"), HostSpec("b"), HostSpec("c")], {"g": Group("g", ("b",))})
    assert inv.groups["all"].hosts == ("a", "b", "c")
    assert inv.groups["ungrouped"].hosts == ("a", "c")


def test_inventory_rejects_groups_naming_unknown_hosts() -> None:
    from sshfleet.inventory import Group

    with pytest.raises(InventoryError, match="group 'g' names unknown hosts: zz"):
        Inventory([HostSpec("a")], {"g": Group("g", ("a", "zz"))})


# ---------------------------------------------------------------- against Ansible itself (bench extra)


def _random_ini(rng: random.Random) -> str:
    groups = [f"g{i}" for i in range(rng.randint(1, 5))]
    hosts = [f"h{i}" for i in range(rng.randint(1, 8))]

    def host_line(host: str, value: str, p: float) -> str:
        return host + "".join(f" v{k}={value}" for k in range(3) if rng.random() < p)

    lines = [host_line(h, f"host_{h}", 0.4) for h in hosts if rng.random() < 0.3]
    for g in groups:
        lines.append(f"[{g}]")
        lines += [host_line(h, f"{h}_{g}", 0.3) for h in hosts if rng.random() < 0.3]
        children = [c for c in groups if c > g and rng.random() < 0.4]
        lines += [f"[{g}:children]", *children] if children else []
        values = [f"v{k}=grp_{g}" for k in range(3) if rng.random() < 0.5]
        lines += [f"[{g}:vars]", *values] if values else []
    if rng.random() < 0.5:
        lines += ["[all:vars]", "v0=all", "v2=all"]
    return "\n".join(lines) + "\n"


def test_agrees_with_ansible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random inventories: same hosts, same merged vars, same selections as ansible-core (when installed)."""
    monkeypatch.setenv("ANSIBLE_HOME", str(tmp_path / "ansible"))
    monkeypatch.setenv("ANSIBLE_LOCAL_TEMP", str(tmp_path / "ansible" / "tmp"))
    pytest.importorskip("ansible")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.vars.manager import VariableManager

        for seed in range(60):
            rng = random.Random(seed)
            path = tmp_path / f"inv{seed}.ini"
            path.write_text(_random_ini(rng))
            loader = DataLoader()
            theirs = InventoryManager(loader=loader, sources=[str(path)])
            variables = VariableManager(loader=loader, inventory=theirs)
            ours = Inventory.load(path)
            assert set(ours.hosts) == {h.name for h in theirs.get_hosts()}, path.read_text()
            for host in theirs.get_hosts():
                merged = variables.get_vars(host=host, include_hostvars=False)
                expected = {k: merged[k] for k in ("v0", "v1", "v2") if k in merged}
                assert {k: v for k, v in ours.hosts[host.name].vars.items() if k[0] == "v"} == expected
            names = [*ours.groups, *ours.hosts, "*", "g*", "~h[0-3]"]
            for _ in range(10):
                terms = [rng.choice(["", "", "&", "!"]) + rng.choice(names) for _ in range(rng.randint(1, 4))]
                pattern = rng.choice([":", ","]).join(terms)
                assert {h.name for h in ours.select(pattern)} == {h.name for h in theirs.list_hosts(pattern)}, pattern


_TOKENS = [*"ab01:-,[]=@#;'\"\\ \n\t{}!&~*|%.>", "all", "[g:vars]", "[g:children]", "  ", "h x=1", "- "]
_SOUP = st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=_SOUP, kind=st.sampled_from(["ini", "yaml", "hosts"]))
def test_any_text_loads_or_raises_inventory_error(
    tmp_path_factory: pytest.TempPathFactory, text: str, kind: str
) -> None:
    path = tmp_path_factory.mktemp("soup") / "inv"
    path.write_text(text)
    try:
        inv = Inventory.load(path, format=kind)  # type: ignore[arg-type]
    except InventoryError as exc:
        assert str(exc).startswith(f"{path}:")
    else:
        assert set(inv.groups["all"].hosts) == set(inv.hosts)


# --- Ansible's precedence, aliases and order (issue 13; tests/differential checks the same against Ansible) ----


def test_group_priority_orders_groups_of_the_same_depth(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.ini",
        """
        [a]
        h
        [b]
        h
        [a:vars]
        ansible_group_priority=10
        v=a
        [b:vars]
        v=b
        """,
    )
    assert inv.hosts["h"].vars["v"] == "a"  # a has the higher priority: merged later, so it wins over b
    assert "ansible_group_priority" not in inv.hosts["h"].vars
    assert "ansible_group_priority" not in inv.groups["a"].vars


def test_group_priority_never_beats_depth(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.ini",
        "[p:children]\nc\n[p:vars]\nansible_group_priority=99\nv=p\n[c]\nh\n[c:vars]\nv=c\n",
    )
    assert inv.hosts["h"].vars["v"] == "c"


def test_a_bad_group_priority_names_its_line(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "i.ini", "[a]\nh\n[a:vars]\nansible_group_priority=high\n")
    assert ":4:" in str(exc) and "not an integer" in str(exc)


def test_ssh_aliases_win_even_from_a_group(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.ini",
        "[g]\nh ansible_user=mine ansible_host=10.0.0.1 ansible_port=2201\n"
        "[g:vars]\nansible_ssh_user=grp\nansible_ssh_host=10.9.9.9\nansible_ssh_port=2299\n",
    )
    spec = inv.hosts["h"]
    assert (spec.user, spec.hostname, spec.port) == ("grp", "10.9.9.9", 2299)


def test_yaml_ungrouped_and_hosts_under_all(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        "i.yml",
        """
        all:
          hosts:
            a1:
          children:
            ungrouped:
              hosts:
                u1:
                u2:
            g:
              hosts:
                u2:
        """,
    )
    assert inv.groups["ungrouped"].hosts == ("u1", "a1")  # u2 is in g, so not ungrouped
    assert [s.name for s in inv.select("ungrouped")] == ["u1", "a1"]


def test_a_child_defined_later_joins_when_its_section_appears(tmp_path: Path) -> None:
    inv = load(tmp_path, "i.ini", "[top:children]\nlate\nearly\n[early]\ne1\n[late]\nl1\n")
    assert inv.groups["top"].children == ("early", "late")
    assert inv.groups["top"].hosts == ("e1", "l1")
    assert [s.name for s in inv.select("top[0]")] == ["e1"]


def test_a_port_on_the_name_counts_where_the_host_is_first_listed(tmp_path: Path) -> None:
    inv = load(tmp_path, "i.ini", "[a]\nh\n[b]\nh:2000\n[b:vars]\nv=1\n[c]\nk:2001\n[d]\nk:2002\n")
    assert inv.hosts["h"].port is None  # Ansible ignores :2000: h already existed
    assert inv.hosts["k"].port == 2001
