"""The command line's dialect, without hosts: --version, one flag one meaning in every fleet subcommand, -v
after the subcommand, where a command typed without -- begins, -o parsing and the ssh_config it makes (held to
``ssh -G -o``), --list-hosts held to ``ansible --list-hosts``, and library advice turned into flags."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sshfleet._cli import EXIT_OK, EXIT_USAGE, build_parser, main
from sshfleet._cli._common import cli_text, config_with_options, options_from_args, parse_ssh_option
from sshfleet._cli.run import check_command
from sshfleet._ssh import _sshg
from sshfleet._ssh._sshg import Query
from sshfleet.errors import UsageError

SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))
ANSIBLE = str(Path(sys.executable).with_name("ansible"))

# The words each fleet subcommand needs besides the shared flags.
FLEET_COMMANDS = {
    "ping": [],
    "run": ["--", "true"],
    "call": ["sysinfo", "Uname"],
    "shell": [],
    "put": ["a", "b"],
    "get": ["a", "b"],
    "sync": ["a", "b"],
}


def test_version_is_the_installed_one():
    for flag in ("--version", "-V"):
        proc = subprocess.run([SSHFLEET, flag], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"sshfleet {importlib.metadata.version('sshfleet')}\n"


@pytest.mark.parametrize("command", FLEET_COMMANDS)
def test_one_flag_one_meaning_in_every_fleet_command(command):
    shared = [
        "-H",
        "a,b[1-2]",
        "-w",
        "c",
        "-x",
        "b1",
        "-l",
        "bob",
        "-f",
        "3",
        "-o",
        "User=x",
        "-F",
        "cfg",
        "--known-hosts",
        "kh",
        "--accept-new",
        "-v",
    ]
    shared += ["-o", "Port 2"]  # ssh -o takes "Keyword value" too
    args = build_parser().parse_args([command, *shared, *FLEET_COMMANDS[command]])
    assert args.hosts == ["a,b[1-2]", "c"]
    assert args.exclude == ["b1"]
    assert (args.user, args.forks, args.ssh_config, args.known_hosts) == ("bob", 3, "cfg", "kh")
    assert args.ssh_options == ["User=x", "Port 2"]
    assert args.accept_new and args.verbose_after == 1
    spelled = ["--hosts", "a", "--exclude", "b", "--user", "u", "--forks", "2", "--ssh-option", "User=y"]
    long = build_parser().parse_args([command, *spelled, *FLEET_COMMANDS[command]])
    assert (long.hosts, long.exclude, long.user, long.forks, long.ssh_options) == (["a"], ["b"], "u", 2, ["User=y"])
    assert build_parser().parse_args([command, "-u", "ann", *FLEET_COMMANDS[command]]).user == "ann"


def test_verbose_counts_before_and_after_the_subcommand(monkeypatch):
    seen = {}

    def fake(args):
        seen["verbose"] = args.verbose
        return EXIT_OK

    parser = build_parser()
    args = parser.parse_args(["-v", "run", "-vv", "--list-hosts", "-H", "a"])
    assert (args.verbose, args.verbose_after) == (1, 2)
    monkeypatch.setattr("sshfleet._cli.run.run", fake)
    monkeypatch.setattr("sshfleet._cli.build_parser", lambda *argv: _with_func(parser, fake))
    assert main(["-v", "run", "-vv", "--list-hosts", "-H", "a"]) == EXIT_OK
    assert seen["verbose"] == 3


def _with_func(parser, func):
    parser._subparsers._group_actions[0].choices["run"].set_defaults(func=func)
    return parser


# --- a command typed without -- -------------------------------------------------------------------------


def parse_run(*argv):
    return build_parser().parse_args(["run", *argv])


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        (["-H", "a", "uname", "-r"], "sshfleet run -H a -- uname -r"),
        (["-i", "inv", "web", "ls", "-la"], "sshfleet run -i inv web -- ls -la"),
        (["-i", "inv", "web", "--json", "tail", "-f", "x"], "sshfleet run -i inv web --json -- tail -f x"),
        (["-Ha", "-b", "--forks=3", "df", "-h"], "sshfleet run -Ha -b --forks=3 -- df -h"),
        (["--inventory=inv", "all", "echo", "a b"], "sshfleet run --inventory=inv all -- echo 'a b'"),
        (["-H", "a", "-l", "root", "-x", "b", "id"], "sshfleet run -H a -l root -x b -- id"),
    ],
)
def test_a_command_without_double_dash_is_named_with_the_fix(argv, fix):
    args = parse_run(*argv)
    with pytest.raises(UsageError) as caught:
        check_command(args)
    assert str(caught.value) == f"the command goes after --, so that its words are not read as ours: {fix}"


def test_words_that_are_not_a_command_are_left_to_the_usual_checks():
    assert parse_run("-i", "inv", "web", "-c", "uptime").unmarked_command is None
    assert parse_run("-i", "inv", "web").unmarked_command is None
    with pytest.raises(UsageError, match=r"put it after --: sshfleet run -i inv -- uptime\)$"):
        check_command(parse_run("-i", "inv", "uptime"))


def test_the_missing_double_dash_is_one_line_and_exit_2(capsys):
    assert main(["run", "-H", "a", "uname", "-r"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert not captured.out
    assert captured.err == (
        "sshfleet run: the command goes after --, so that its words are not read as ours: "
        "sshfleet run -H a -- uname -r\n"
    )


# --- -o -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("User=bob", ("User", "bob")),
        ("user = bob", ("User", "bob")),
        ("ConnectTimeout 5", ("ConnectTimeout", "5")),
        ("identityfile=~/.ssh/a b", ("IdentityFile", "~/.ssh/a b")),
        ("BatchMode=yes", ("BatchMode", "yes")),
    ],
)
def test_ssh_option_forms(text, parsed):
    assert parse_ssh_option(text) == parsed


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("User", "give OPTION=VALUE"),
        ("=bob", "give OPTION=VALUE"),
        ("User=", "give OPTION=VALUE"),
        ("Compression=yes", "not an ssh_config option sshfleet uses"),
        ("Host=x", "not an ssh_config option sshfleet uses"),
        ("Include=/etc/passwd", "not an ssh_config option sshfleet uses"),
        ("User=a\nHost *", "must be one line"),
        ("BatchMode=no", "sshfleet never prompts"),
    ],
)
def test_bad_ssh_options_are_refused(text, error):
    with pytest.raises(UsageError, match=error):
        parse_ssh_option(text)


BASE_CONFIG = """\
Host web*
    User webuser
    Port 2200
    ConnectTimeout 7
Host jump
    HostName 10.0.0.9
Host *
    IdentityFile ~/.ssh/id_%h
    ServerAliveInterval 9
"""

OPTION_SETS = [
    ["User=alice"],
    ["Port=2022", "ConnectTimeout 3"],
    ["HostName=10.1.2.3"],
    ["ProxyJump=jump", "IdentityFile=/keys/%r@%h"],
    ["StrictHostKeyChecking=accept-new", "ServerAliveInterval=4", "ServerAliveCountMax=2"],
    ["UserKnownHostsFile=/tmp/kh", "HostKeyAlias=alias"],
]


@pytest.mark.parametrize("reader", ["ssh", "python"])
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o))
def test_o_reads_as_ssh_G_o_reads(tmp_path, monkeypatch, reader, options):
    """What the made config gives for each host (and user) is what ``ssh -G -F base -o ...`` prints. A user
    given as well (-l, the inventory) wins over ``-o User``, as it does in ssh when ``-l`` comes first."""
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("the OpenSSH client is not installed: nothing to compare with")
    base = tmp_path / "config"
    base.write_text(BASE_CONFIG)
    made = config_with_options(str(base), options)
    assert made is not None
    monkeypatch.setattr(_sshg, "SSH_BINARY", None if reader == "ssh" else "")
    for host in ("web1", "db", "jump"):
        for user in (None, "carol"):
            expected = subprocess.run(
                [ssh, "-G", "-F", str(base), *(["-l", user] if user else []), *(f"-o{o}" for o in options), host],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            want: dict[str, list[str]] = {}
            for line in expected.splitlines():
                key, _, value = line.partition(" ")
                want.setdefault(key, []).append(value)
            got = _sshg.ask(Query(host, made, user))
            for key in (
                "hostname",
                "user",
                "port",
                "connecttimeout",
                "identityfile",
                "proxyjump",
                "stricthostkeychecking",
                "serveraliveinterval",
                "serveralivecountmax",
                "userknownhostsfile",
                "hostkeyalias",
            ):
                assert got.get(key) == want.get(key), (host, user, key)


def test_without_o_the_ssh_config_is_the_users(tmp_path):
    args = build_parser().parse_args(["ping", "-H", "a", "-F", str(tmp_path / "cfg")])
    assert options_from_args(args).ssh_config == str(tmp_path / "cfg")
    args = build_parser().parse_args(["ping", "-H", "a", "-o", "BatchMode=yes"])
    assert options_from_args(args).ssh_config == "~/.ssh/config"  # nothing to add: no file made


def test_o_config_file_includes_the_default_when_no_F(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(["ping", "-H", "a", "-o", "User=x"])
    made = options_from_args(args).ssh_config
    assert made is not None and os.path.exists(made)
    assert Path(made).read_text().splitlines()[1:] == ["User x", f'Include "{tmp_path}/.ssh/config"']


# --- --list-hosts, as ansible prints it -----------------------------------------------------------------

INVENTORY = """\
db1 ansible_host=10.0.0.1

[web]
w1
w2
w3
w[10:11]

[prod]
w3
w2
db1

[lb:children]
web

[lb]
lb1
"""

PATTERNS = ["lb", "web:&prod", "web:!prod", "all", "prod", "web[0]", "web[1:]", "w*", "~w1.*", "db1,w1", "lb:&prod:!w2"]


def test_list_hosts_prints_what_ansible_prints(tmp_path, capsys):
    if not os.path.exists(ANSIBLE):
        pytest.skip("ansible-core is not installed: nothing to compare with")
    inventory = tmp_path / "inv.ini"
    inventory.write_text(INVENTORY)
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ah"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ah" / "tmp")}
    procs = {
        pattern: subprocess.Popen(
            [ANSIBLE, "-i", str(inventory), pattern, "--list-hosts"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for pattern in PATTERNS
    }
    for pattern, proc in procs.items():
        expected, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for command in ("run", "ping"):
            assert main([command, "--list-hosts", "-i", str(inventory), pattern]) == EXIT_OK
            assert capsys.readouterr().out == expected, (command, pattern)


def test_list_hosts_of_nothing_is_empty_as_in_ansible(tmp_path, capsys):
    inventory = tmp_path / "inv.ini"
    inventory.write_text(INVENTORY)
    assert main(["run", "--list-hosts", "-i", str(inventory), "nomatch*"]) == EXIT_OK
    assert capsys.readouterr().out == "  hosts (0):\n"


def test_list_hosts_with_exclude(tmp_path, capsys):
    inventory = tmp_path / "inv.ini"
    inventory.write_text(INVENTORY)
    assert main(["run", "--list-hosts", "-i", str(inventory), "lb", "-x", "prod", "-x", "w[10-11]"]) == EXIT_OK
    assert capsys.readouterr().out == "  hosts (2):\n    lb1\n    w1\n"


# --- messages in the command line's words ---------------------------------------------------------------


def test_library_advice_becomes_a_flag():
    paramiko_text = "no host key known for x (...); add it with ssh-keyscan or use host_key_policy='accept-new'"
    assert cli_text(paramiko_text).endswith("add it with ssh-keyscan or use --accept-new")
    openssh_text = "no host key known for x:22 under strict checking (use host_key_policy='accept-new')"
    assert cli_text(openssh_text).endswith("(use --accept-new)")
    assert "host_key_policy" not in cli_text(paramiko_text + openssh_text)


@pytest.mark.parametrize("command", ["put", "get", "sync"])
def test_file_commands_list_hosts_too(command, tmp_path, capsys):
    inventory = tmp_path / "inv.ini"
    inventory.write_text(INVENTORY)
    assert main([command, "--list-hosts", "-i", str(inventory), "web:&prod", "a", "b"]) == EXIT_OK
    assert capsys.readouterr().out == "  hosts (2):\n    w2\n    w3\n"
    assert main([command, "--list-hosts", "-H", "x[1-3]", "-x", "x2", "a", "b"]) == EXIT_OK
    assert capsys.readouterr().out == "  hosts (2):\n    x1\n    x3\n"


def test_run_summary_counts_refused_logins_apart_from_unreachable():
    from types import SimpleNamespace

    from sshfleet._cli.run import classify_host, summary
    from sshfleet.errors import AuthenticationError, ConnectError, HostKeyError

    ok = SimpleNamespace(started=True, exit_code=0, signal=0, timed_out=False, comment="")
    unknown = "no host key known for c (ssh-ed25519 SHA256:x offered; ...); add it with ssh-keyscan or use "
    results = [
        classify_host("a", ok),
        classify_host("b", ConnectError("b", "TCP connect to b:22 failed: refused")),
        classify_host("c", HostKeyError("c", unknown + "host_key_policy='accept-new'")),
        classify_host("d", AuthenticationError("d", "permission denied for user 'x'")),
        classify_host("e", HostKeyError("e", unknown + "host_key_policy='accept-new'")),
    ]
    assert [r.status for r in results] == ["ok", "unreachable", "unreachable", "unreachable", "unreachable"]
    assert results[2].label == f"host key rejected (hostkey: {unknown}--accept-new)"
    assert results[2].error is not None and results[2].error["message"] == unknown + "--accept-new"
    assert results[3].label == "auth failed (auth: permission denied for user 'x')"
    lines = summary(results, 1.5)
    assert lines[-1] == "5 hosts: 1 ok, 1 unreachable, 1 auth failed, 2 host key rejected in 1.50s"
    assert lines[0] == "a: ok" and "b: unreachable (tcp: TCP connect to b:22 failed: refused)" in lines
