"""``become``'s pure logic: the sudo command line, where the settings come from (inventory, arguments, CLI
flags) and how bad ones are refused. What sudo does with them is tested on the testbed (test_become.py)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path

import pytest

from agents.sysinfo import SysinfoAgent
from sshfleet import _bootstrap
from sshfleet._cli._common import add_become_options, become_from_args
from sshfleet._options import Become, HostSpec, parse_bool, resolve_become
from sshfleet.errors import InventoryError, UsageError
from sshfleet.inventory import Inventory


def test_the_sudo_command_runs_the_same_bootstrap_command_and_says_when_sudo_let_it_through() -> None:
    inner = _bootstrap.remote_command("python3")
    words = shlex.split(_bootstrap.become_command(inner, Become()))
    assert words[:7] == ["exec", "sudo", "-H", "-n", "-u", "root", "--"]
    assert words[7:9] == ["/bin/sh", "-c"] and words[9] == f"echo '{_bootstrap.BECOME_SUCCESS}'; {inner}"
    with_password = shlex.split(_bootstrap.become_command(inner, Become("postgres", password="s3cret")))
    assert with_password[2:8] == ["-H", "-S", "-p", _bootstrap.BECOME_PROMPT, "-u", "postgres"]
    assert not any("s3cret" in word for word in with_password)  # the password goes on stdin only


def test_the_wrapper_prints_its_line_then_runs_the_command_verbatim() -> None:
    """The inner shell line survives sudo's argv: run it with ``sh`` in place of sudo's own options."""
    inner = "exec printf '%s|' \"$0\" 'a b' \"c'd\""
    words = shlex.split(_bootstrap.become_command(inner, Become()))
    out = subprocess.run(words[7:], capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == f"{_bootstrap.BECOME_SUCCESS}\n/bin/sh|a b|c'd|"


def test_discovery_goes_through_sudo_too() -> None:
    command = _bootstrap.become_command(_bootstrap.discovery_command(), Become())
    assert command.startswith("exec sudo -H -n -u root -- /bin/sh -c ") and _bootstrap.MARKER in command


@pytest.mark.parametrize(
    ("spec", "args", "expected"),
    [
        (HostSpec("h"), (None, None, None), None),
        (HostSpec("h"), (True, None, None), Become("root")),
        (HostSpec("h", become=True, become_user="pg", become_password="x"), (None, None, None), Become("pg", "x")),
        (HostSpec("h", become=True, become_user="pg"), (None, "root", "y"), Become("root", "y")),
        (HostSpec("h", become=True), (False, None, None), None),  # an explicit False wins over the inventory
        (HostSpec("h"), (None, "pg", "x"), None),  # as in Ansible, only become turns it on
    ],
)
def test_arguments_win_over_the_inventory(spec, args, expected) -> None:
    assert resolve_become(spec, *args) == expected


def test_a_password_never_shows_in_a_repr() -> None:
    assert "hunter2" not in repr(Become(password="hunter2"))
    assert "hunter2" not in repr(HostSpec("h", become_password="hunter2"))


@pytest.mark.parametrize("user", ["", "root; rm -rf /", "a b", "-u"])
def test_a_bad_become_user_is_a_usage_error(user) -> None:
    with pytest.raises(UsageError, match="become_user"):
        Become(user)


def test_a_password_of_two_lines_is_refused() -> None:
    with pytest.raises(UsageError, match="one line"):
        Become(password="a\nb")


def test_the_agent_refuses_a_bad_become_user_before_the_network() -> None:
    with pytest.raises(UsageError, match="become_user"):
        SysinfoAgent(["unreachable.invalid"], become=True, become_user="x y")


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("True", True), ("1", True), ("off", False), ("no", False)])
def test_inventory_booleans_read_as_ansible_reads_them(text, value) -> None:
    assert parse_bool(text) is value
    assert parse_bool("maybe") is None


def _load(tmp_path: Path, text: str) -> Inventory:
    path = tmp_path / "inv.ini"
    path.write_text(text)
    return Inventory.load(str(path))


def test_inventory_become_vars_per_host_with_group_precedence(tmp_path) -> None:
    inventory = _load(
        tmp_path,
        "[db]\npg1 ansible_become_user=postgres\npg2 ansible_become=no\n[web]\nw1\n"
        "[db:vars]\nansible_become=yes\nansible_become_pass='two words'\n",
    )
    specs = {spec.name: spec for spec in inventory}
    assert (specs["pg1"].become, specs["pg1"].become_user, specs["pg1"].become_password) == (
        True,
        "postgres",
        "two words",
    )
    assert specs["pg2"].become is False and specs["w1"].become is None
    assert "two words" not in repr(specs["pg1"]) and "ansible_become_pass" not in specs["pg1"].vars
    assert resolve_become(specs["pg1"]) == Become("postgres", "two words")


def test_become_password_spelled_in_full_wins_over_the_short_one(tmp_path) -> None:
    inventory = _load(tmp_path, "h ansible_become=true ansible_become_pass=short ansible_become_password=full\n")
    assert next(iter(inventory)).become_password == "full"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("h ansible_become_method=su", r"inv\.ini:1: .*sudo only"),
        ("h ansible_become=maybe", r"inv\.ini:1: .*not a boolean"),
        ("h ansible_become='{{ flag }}'", r"inv\.ini:1: .*Jinja template"),
    ],
)
def test_become_vars_sshfleet_cannot_honour_are_errors_at_their_line(tmp_path, line, message) -> None:
    with pytest.raises(InventoryError, match=message):
        _load(tmp_path, line + "\n")


def test_ansible_become_method_sudo_is_fine(tmp_path) -> None:
    assert next(iter(_load(tmp_path, "h ansible_become_method=sudo\n"))).become is None


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_become_options(parser)
    return parser.parse_args(list(argv))


def test_cli_flags_become_agent_arguments_and_k_asks_once() -> None:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "pw"

    assert become_from_args(_parse(), ask=ask) == {}
    assert become_from_args(_parse("--become", "--become-user", "pg"), ask=ask) == {
        "become": True,
        "become_user": "pg",
    }
    assert not asked
    assert become_from_args(_parse("--become", "-K"), ask=ask) == {"become": True, "become_password": "pw"}
    assert asked == ["BECOME password: "]


def test_k_without_a_terminal_is_a_usage_error() -> None:
    def no_tty(prompt: str) -> str:
        raise EOFError

    with pytest.raises(UsageError, match="-K"):
        become_from_args(_parse("-K"), ask=no_tty)
