"""What the fleet subcommands share: the host selection flags, the SSH connection flags and the SshOptions they
make, and the wording of library messages on the command line.

One flag, one meaning, in ``ping``, ``run``, ``call``, ``shell``, ``put``, ``get`` and ``sync``, spelled as
users of ssh, clush, pssh, pdsh and Ansible type it:

====================  =====================================================================================
``-i INVENTORY``      Ansible's inventory (``ansible -i``)
``-H/-w HOSTS``       hosts by name, repeatable, commas and ranges (pssh ``-H``, clush/pdsh ``-w``)
``-x HOSTS``          leave these hosts out (clush/pdsh ``-x``)
``-l/-u USER``        login user (ssh/pssh/clush/pdsh ``-l``, Ansible ``-u``)
``-f/--forks N``      hosts at once (Ansible/clush ``-f``)
``-F FILE``           ssh_config (ssh ``-F``)
``-o OPTION=VALUE``   an ssh_config option for every host (ssh/clush ``-o``)
``-v``                more logging, before or after the subcommand
``--become``          start the agents' servicers through sudo (Ansible ``--become``; ``call``, ``shell``)
``--become-user U``   as U, default root (Ansible ``--become-user``)
``-K``                ask once for the sudo password, sent to every host (Ansible ``-K/--ask-become-pass``)
====================  =====================================================================================

``--become`` has no ``-b``: Ansible's short form is taken by ``run -b`` (gather identical outputs, as in clush).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from sshfleet._options import TRANSPORTS, SshOptions, Timeouts
from sshfleet.errors import InventoryError, UsageError

if TYPE_CHECKING:
    from sshfleet._options import HostSpec

_Group = Union[argparse.ArgumentParser, "argparse._ArgumentGroup"]

DEFAULT_SSH_CONFIG = "~/.ssh/config"

# The ssh_config keywords sshfleet reads (through ``ssh -G``), by their lower-case name. ``-o`` takes these only:
# any other keyword would be accepted by ssh and then do nothing here, which is worse than a clear refusal.
CONFIG_KEYWORDS = {
    k.lower(): k
    for k in (
        "HostName",
        "Port",
        "User",
        "IdentityFile",
        "IdentitiesOnly",
        "ProxyJump",
        "ConnectTimeout",
        "ServerAliveInterval",
        "ServerAliveCountMax",
        "UserKnownHostsFile",
        "GlobalKnownHostsFile",
        "StrictHostKeyChecking",
        "HostKeyAlias",
    )
}
# Accepted and without effect, because sshfleet already behaves so: it never prompts (BatchMode=yes).
NO_EFFECT = {"batchmode": "yes"}

# Library messages name the Python keyword; on the command line the same advice is a flag.
_CLI_WORDS = (
    ("use host_key_policy='accept-new' or --accept-new", "pass --accept-new"),
    ("host_key_policy='accept-new'", "--accept-new"),
    ("give it with become_password= (or ansible_become_password in the inventory)", "give it with -K"),
    ("give the login user's sudo password with become_password=", "give the login user's sudo password to -K"),
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def cli_text(message: str) -> str:
    """A library message as the command line says it: ``--accept-new`` for ``host_key_policy='accept-new'``."""
    for python, flag in _CLI_WORDS:
        message = message.replace(python, flag)
    return message


# --- hosts ----------------------------------------------------------------------------------------------


def add_host_options(group: _Group, *, pattern: bool = True, list_hosts: bool = False) -> None:
    """-i INVENTORY [PATTERN], -H/-w HOSTS (repeatable), -x/--exclude HOSTS (repeatable) and, when asked,
    --list-hosts. Without ``pattern`` the subcommand reads PATTERN from its own positional words."""
    group.add_argument("-i", "--inventory", metavar="INVENTORY", help="inventory file (Ansible INI/YAML, plain)")
    if pattern:
        group.add_argument(
            "pattern", nargs="?", default=None, metavar="PATTERN", help="Ansible host pattern (needs -i)"
        )
    group.add_argument(
        "-H",
        "-w",
        "--hosts",
        action="append",
        metavar="HOSTS",
        help="hosts without an inventory: comma-separated, ranges allowed, repeatable "
        "(-H node[01-04] -H admin@r1:2222)",
    )
    group.add_argument(
        "-x",
        "--exclude",
        action="append",
        metavar="HOSTS",
        help="leave these hosts out: names, ranges, globs, and with -i groups (repeatable)",
    )
    if list_hosts:
        group.add_argument(
            "--list-hosts",
            action="store_true",
            help="print the hosts that would be used, as ansible --list-hosts does, and connect to nothing",
        )


def split_hosts(text: str) -> list[str]:
    """``a,node[01-03,07],b`` -> ``["a", "node[01-03,07]", "b"]``: commas inside brackets belong to ranges."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def _host_items(values: Union[str, list[str], None]) -> list[str]:
    if not values:
        return []
    texts = [values] if isinstance(values, str) else values
    return [item for text in texts for item in split_hosts(text)]


def select_hosts(args: argparse.Namespace, *, allow_empty: bool = False) -> list[HostSpec]:
    """The HostSpecs of ``-i INVENTORY [PATTERN]`` or ``-H HOSTS``, less ``-x HOSTS``. Raises UsageError (or
    InventoryError) for a bad combination, a bad pattern, or an empty selection unless ``allow_empty``."""
    from sshfleet.inventory import Inventory

    hosts = _host_items(args.hosts)
    pattern = getattr(args, "pattern", None)
    if hosts and args.inventory:
        raise UsageError("give -i INVENTORY [PATTERN] or -H HOSTS, not both")
    if hosts:
        if pattern:
            raise UsageError(f"PATTERN {pattern!r} needs -i INVENTORY (with -H, list the hosts themselves)")
        inventory = Inventory.from_hosts(hosts)
        where = ",".join(hosts)
    elif args.inventory:
        inventory = Inventory.load(args.inventory)
        where = args.inventory
    else:
        raise UsageError("which hosts? give -i INVENTORY [PATTERN] or -H host1,host2")
    specs = list(inventory) if pattern is None else inventory.select(pattern)
    excluded = _host_items(getattr(args, "exclude", None))
    if excluded:
        specs = _exclude(inventory, specs, excluded)
    if not specs and not allow_empty:
        matching = f" matching {pattern!r}" if pattern else ""
        left = " once -x is applied" if excluded else ""
        raise UsageError(f"no hosts{matching} in {where}{left}")
    return specs


def _exclude(inventory: Any, specs: list[HostSpec], items: list[str]) -> list[HostSpec]:
    """``specs`` without the hosts ``items`` name. Each item is read as a pattern of the same inventory: a host
    or group name, a range, a glob (so ``-x odd`` leaves out the group ``odd``). An item that names nothing is
    an error, as a typo in a pattern is: leaving a host in by mistake is the costly direction."""
    gone: set[str] = set()
    for item in items:
        if item.startswith("!"):
            raise UsageError(f"-x {item}: -x already excludes; give the hosts themselves: -x {item[1:]}")
        try:
            names = [spec.name for spec in inventory.select(item)]
        except InventoryError as exc:
            raise UsageError(f"-x {item}: {exc}") from exc
        if not names:
            raise UsageError(f"-x {item}: matches no host in {inventory.source}")
        gone.update(names)
    return [spec for spec in specs if spec.name not in gone]


def print_host_list(specs: list[HostSpec]) -> None:
    """What ``ansible PATTERN --list-hosts`` prints."""
    print(f"  hosts ({len(specs)}):")
    for spec in specs:
        print(f"    {spec.name}")


def host_args(args: argparse.Namespace) -> list[str]:
    """The flags that selected the hosts, to show a command line the user can run next."""
    words: list[str] = []
    if args.inventory:
        words += ["-i", args.inventory]
        if getattr(args, "pattern", None):
            words.append(args.pattern)
    for text in args.hosts or []:
        words += ["-H", text]
    for text in getattr(args, "exclude", None) or []:
        words += ["-x", text]
    if args.ssh_config is not None:
        words += ["-F", args.ssh_config]
    if args.known_hosts is not None:
        words += ["--known-hosts", args.known_hosts]
    return words


def first_contact_hint(args: argparse.Namespace, unknown: list[str]) -> Optional[str]:
    """For hosts refused only because their key is not known yet: the one command that records their keys."""
    if not unknown or args.accept_new:
        return None
    from sshfleet.inventory import fold_hosts

    command = shlex.join(["sshfleet", "ping", "--accept-new", *host_args(args)])
    return f"no host key known yet for {fold_hosts(unknown)}: if they are new hosts, record their keys with: {command}"


def is_unknown(host_key_message: str) -> bool:
    """A host key refusal because the key is not known yet (not because it changed or is revoked)."""
    return "no host key known" in host_key_message


# --- connection -----------------------------------------------------------------------------------------


def add_connection_options(group: _Group, *, timeout_flag: str, forks_help: str, transport: bool = False) -> None:
    """-F, -o, --known-hosts, --accept-new, -l/-u, -f/--forks, --transport and the connect deadline (named
    ``timeout_flag``: ``ping`` calls it --timeout, the others --connect-timeout because their --timeout limits
    the command, call or transfer)."""
    group.add_argument(
        "-F", "--ssh-config", metavar="FILE", default=None, help="ssh_config file (default: ~/.ssh/config)"
    )
    group.add_argument(
        "-o",
        "--ssh-option",
        dest="ssh_options",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an ssh_config option for every host, as ssh -o gives it (repeatable): it wins over the "
        "ssh_config file; the inventory and -l still win over it",
    )
    group.add_argument(
        "--known-hosts", metavar="FILE", default=None, help="known_hosts file (default: as ssh_config says)"
    )
    group.add_argument(
        "--accept-new",
        action="store_true",
        help="trust and record the keys of hosts not yet in known_hosts (first contact); changed keys are "
        "still refused",
    )
    group.add_argument("-l", "-u", "--user", metavar="USER", default=None, help="login user for every host")
    group.add_argument("-f", "--forks", type=positive_int, default=64, metavar="N", help=forks_help)
    group.add_argument(
        timeout_flag,
        dest="connect_timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="deadline of each connect phase: TCP, then SSH handshake + auth (default 10 and 20)",
    )
    if transport:
        group.add_argument(
            "--transport",
            choices=TRANSPORTS,
            default="paramiko",
            help="SSH implementation: paramiko (default) or openssh (the ssh binary with a ControlMaster per host)",
        )


_OPTION_RE = re.compile(r"^\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*?)\s*$", re.DOTALL)


def parse_ssh_option(text: str) -> tuple[str, str]:
    """``Keyword=value`` or ``Keyword value`` (as ``ssh -o`` takes them) -> (Keyword, value). Raises UsageError
    for anything else, or a keyword sshfleet does not use."""
    match = _OPTION_RE.match(text)
    if not match or not match.group(2):
        raise UsageError(f"-o {text!r}: give OPTION=VALUE, as with ssh -o (e.g. -o ConnectTimeout=5)")
    keyword, value = match.group(1), match.group(2)
    if "\n" in value or "\r" in value or "\0" in value:
        raise UsageError(f"-o {keyword}: the value must be one line")
    if keyword.lower() in NO_EFFECT:
        if value.lower() != NO_EFFECT[keyword.lower()]:
            raise UsageError(f"-o {keyword}={value}: sshfleet never prompts; only {keyword}=yes is accepted")
        return keyword, value
    if keyword.lower() not in CONFIG_KEYWORDS:
        known = ", ".join(sorted(CONFIG_KEYWORDS.values()))
        raise UsageError(f"-o {keyword}: not an ssh_config option sshfleet uses; it uses {known}")
    return CONFIG_KEYWORDS[keyword.lower()], value


def config_with_options(base: Optional[str], options: list[str]) -> Optional[str]:
    """An ssh_config file that holds ``options`` first and then includes ``base`` (the user's file): ssh keeps
    the first value it reads for a keyword, so these win over ``base`` for every host, exactly as ``ssh -o``
    options do. None when there is nothing to add. The file lives until the process ends."""
    lines = []
    for text in options:
        keyword, value = parse_ssh_option(text)
        if keyword.lower() not in NO_EFFECT:
            lines.append(f"{keyword} {value}")
    if not lines:
        return None
    path = os.path.abspath(os.path.expanduser(base or DEFAULT_SSH_CONFIG))
    if '"' in path or "%" in path:
        raise UsageError(f'-o cannot be combined with an ssh_config path holding " or %: {path}')
    import atexit
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="sshfleet-options-")
    atexit.register(shutil.rmtree, directory, True)
    config = os.path.join(directory, "config")
    with open(config, "w", encoding="utf-8") as file:
        file.write("# sshfleet -o options, then the ssh_config they apply on top of\n")
        file.write("".join(line + "\n" for line in lines))
        file.write(f'Include "{path}"\n')
    return config


def options_from_args(args: argparse.Namespace) -> SshOptions:
    """SshOptions from the flags of add_connection_options(); unset flags keep ssh_config's and the defaults."""
    changes: dict[str, Any] = {
        "forks": args.forks,
        "user": args.user,
        "known_hosts": args.known_hosts,
        "transport": getattr(args, "transport", "paramiko"),
    }
    if args.ssh_config is not None:
        changes["ssh_config"] = args.ssh_config
    with_options = config_with_options(args.ssh_config, getattr(args, "ssh_options", []))
    if with_options is not None:
        changes["ssh_config"] = with_options
    if args.accept_new:
        changes["host_key_policy"] = "accept-new"
    if args.connect_timeout is not None:
        changes["timeouts"] = Timeouts(connect=args.connect_timeout, auth=args.connect_timeout)
    return SshOptions().replace(**changes)


# --- become ---------------------------------------------------------------------------------------------

BECOME_PROMPT = "BECOME password: "  # Ansible's words for -K


def add_become_options(group: _Group) -> None:
    """--become, --become-user USER, -K/--ask-become-pass, as Ansible spells them (no ``-b``: see above).

    Without --become, a host's inventory ``ansible_become`` still decides, as in Ansible; --become-user and -K
    alone only say how, for the hosts that become."""
    group.add_argument(
        "--become",
        action="store_true",
        default=None,
        help="start the agent on each host through sudo, as --become-user (default: the inventory's "
        "ansible_become); sudo must not ask for a password unless -K gives it",
    )
    group.add_argument(
        "--become-user", metavar="USER", default=None, help="the user to become (default: root, or ansible_become_user)"
    )
    group.add_argument(
        "-K",
        "--ask-become-pass",
        action="store_true",
        help="ask for the sudo password once, and send it to each host on the bootstrap channel's stdin",
    )


def become_from_args(args: argparse.Namespace, ask: Optional[Callable[[str], str]] = None) -> dict[str, Any]:
    """The agent keyword arguments (``become``, ``become_user``, ``become_password``) of the flags of
    ``add_become_options``, asking for the password now when -K says so: call it once per run, after the
    usage checks and before starting any agent, and pass the result to every agent the run starts
    (``XAgent(specs, ..., **become_from_args(args))``). Raises UsageError when -K cannot ask (no terminal)."""
    kwargs: dict[str, Any] = {}
    if getattr(args, "become", None):
        kwargs["become"] = True
    if getattr(args, "become_user", None):
        kwargs["become_user"] = args.become_user
    if getattr(args, "ask_become_pass", False):
        if ask is None:
            import getpass

            ask = getpass.getpass
        try:
            password = ask(BECOME_PROMPT)
        except EOFError:
            raise UsageError("-K: no password given (the terminal closed)") from None
        except OSError as exc:
            raise UsageError(f"-K needs a terminal to ask for the sudo password: {exc}") from None
        kwargs["become_password"] = password
    return kwargs


def check_ssh_options(args: argparse.Namespace) -> None:
    """Refuse a bad ``-o`` before anything else happens (UsageError)."""
    for text in getattr(args, "ssh_options", []):
        parse_ssh_option(text)


def say(command: str, *lines: str) -> None:
    for line in lines:
        print(f"sshfleet {command}: {line}", file=sys.stderr)
    sys.stderr.flush()
