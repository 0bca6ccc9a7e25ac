"""The command line's dialect against real sshd: -H repeated with ranges (ping too), -x, -l, -f, -o as ssh_config
options, -v after the subcommand, a command without --, and first contact with hosts whose keys are not known
yet (the error says --accept-new, run counts "host key rejected", and the command it suggests records them).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from sshfleet._cli import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main

SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))
DEADLINE = 120


def sshfleet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SSHFLEET, *argv], capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ping_json(capsys, *argv: str) -> tuple[int, dict[str, dict[str, object]]]:
    code, out, err = cli(capsys, "ping", "--json", *argv)
    assert out, err
    return code, json.loads(out)


# --- hosts ----------------------------------------------------------------------------------------------


def test_ping_takes_repeated_hosts_with_ranges_and_commas(testbed, capsys):
    code, results = ping_json(capsys, "-F", str(testbed.ssh_config), "-H", "node01,node[03-04]", "-w", "node06")
    assert code == EXIT_OK, results
    assert list(results) == ["node01", "node03", "node04", "node06"]
    assert all(r["status"] == "ok" for r in results.values())


def test_exclude_hosts_groups_and_ranges_from_an_inventory(testbed, capsys):
    code, out, err = cli(
        capsys,
        "run",
        "-i",
        str(testbed.inventory),
        "-F",
        str(testbed.ssh_config),
        "-x",
        "odd",
        "-x",
        "node0[2-4]",
        "--",
        "hostname",
    )
    assert code == EXIT_OK, err
    assert sorted(line.split(":")[0] for line in out.splitlines()) == ["node06", "node08"]
    assert err.splitlines()[-1].startswith("sshfleet: 2 hosts: 2 ok in ")


def test_exclude_from_hosts_given_with_H(testbed, capsys):
    code, results = ping_json(capsys, "-F", str(testbed.ssh_config), "-H", "node[01-04]", "--exclude", "node02,node04")
    assert code == EXIT_OK
    assert list(results) == ["node01", "node03"]


def test_exclude_that_names_nothing_is_a_usage_error(testbed, capsys):
    code, out, err = cli(capsys, "ping", "-i", str(testbed.inventory), "-x", "node99")
    assert code == EXIT_USAGE and not out
    assert err.startswith("sshfleet ping: -x node99: ") and len(err.splitlines()) == 1


def test_list_hosts_connects_to_nothing(testbed, capsys):
    """Hosts that do not exist are listed all the same: nothing was resolved on the network."""
    code, out, err = cli(capsys, "run", "--list-hosts", "-H", "nosuch[1-3].invalid", "-x", "nosuch2.invalid")
    assert (code, err) == (EXIT_OK, "")
    assert out == "  hosts (2):\n    nosuch1.invalid\n    nosuch3.invalid\n"
    code, out, err = cli(capsys, "ping", "--list-hosts", "-i", str(testbed.inventory), "even")
    assert code == EXIT_OK
    assert out == "  hosts (4):\n" + "".join(f"    node0{n}\n" for n in (2, 4, 6, 8))


# --- connection flags -----------------------------------------------------------------------------------


def test_l_is_the_login_user_like_u(testbed, capsys):
    for flag in ("-l", "-u"):
        code, results = ping_json(capsys, "-F", str(testbed.ssh_config), "-H", "node02", flag, "nosuchuser")
        assert code == EXIT_UNREACHABLE
        assert results["node02"]["status"] == "auth_failed"
        assert "'nosuchuser'" in str(results["node02"]["message"])


def test_forks_short_flag(testbed, capsys):
    code, _, err = cli(
        capsys, "run", "-i", str(testbed.inventory), "-F", str(testbed.ssh_config), "-f", "2", "--", "true"
    )
    assert code == EXIT_OK, err
    assert err.splitlines()[-1].startswith("sshfleet: 8 hosts: 8 ok")


def test_o_options_win_over_ssh_config(testbed, capsys):
    """The testbed's ssh_config says User root, Port 22 and its known_hosts for each node: -o overrides each."""
    bed = ["-F", str(testbed.ssh_config), "-H", "node01,node02"]
    code, results = ping_json(capsys, *bed, "-o", "User=nosuchuser")
    assert code == EXIT_UNREACHABLE
    assert {r["status"] for r in results.values()} == {"auth_failed"}
    assert all("'nosuchuser'" in str(r["message"]) for r in results.values())

    code, results = ping_json(capsys, *bed, "-o", "Port 2", "--timeout", "5")
    assert code == EXIT_UNREACHABLE
    assert all(r["status"] == "unreachable" and r["phase"] == "tcp" for r in results.values()), results

    code, results = ping_json(capsys, *bed, "-o", "UserKnownHostsFile=/dev/null")
    assert code == EXIT_UNREACHABLE
    assert {r["status"] for r in results.values()} == {"hostkey_rejected"}

    code, results = ping_json(capsys, *bed, "-o", "ConnectTimeout=5", "-o", "BatchMode=yes")
    assert code == EXIT_OK, results


def test_o_user_loses_to_the_inventory_and_to_l(testbed, capsys):
    """-o sits where ssh_config does: the inventory's ansible_user=root and -l still win over it."""
    inventory = ["-i", str(testbed.inventory), "-F", str(testbed.ssh_config), "node01"]
    code, results = ping_json(capsys, *inventory, "-o", "User=nosuchuser")
    assert code == EXIT_OK, results
    code, results = ping_json(
        capsys, "-F", str(testbed.ssh_config), "-H", "node01", "-o", "User=nosuchuser", "-l", "root"
    )
    assert code == EXIT_OK, results


def test_o_with_an_option_sshfleet_does_not_use_is_refused(testbed, capsys):
    code, out, err = cli(capsys, "run", "-H", "node01", "-o", "Compression=yes", "--", "true")
    assert code == EXIT_USAGE and not out
    assert err.startswith("sshfleet run: -o Compression: not an ssh_config option sshfleet uses; it uses ")
    assert len(err.splitlines()) == 1


def test_verbose_after_the_subcommand(testbed):
    quiet = sshfleet("ping", "-F", str(testbed.ssh_config), "-H", "node01")
    loud = sshfleet("ping", "-vv", "-F", str(testbed.ssh_config), "-H", "node01")
    assert quiet.returncode == loud.returncode == EXIT_OK, loud.stderr
    assert "DEBUG" not in quiet.stderr
    assert "DEBUG" in loud.stderr


# --- a command without -- -------------------------------------------------------------------------------


def test_command_without_double_dash_shows_the_fix_which_works(testbed):
    proc = sshfleet("run", "-F", str(testbed.ssh_config), "-H", "node01", "uname", "-s")
    assert proc.returncode == EXIT_USAGE and not proc.stdout
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    what, _, fix = proc.stderr.strip().partition(": sshfleet run ")
    assert what == "sshfleet run: the command goes after --, so that its words are not read as ours"
    argv = shlex.split(fix)
    assert argv == ["-F", str(testbed.ssh_config), "-H", "node01", "--", "uname", "-s"]
    fixed = sshfleet("run", *argv)
    assert fixed.returncode == EXIT_OK, fixed.stderr
    assert fixed.stdout == "node01: Linux\n"


# --- first contact: unknown host keys -------------------------------------------------------------------


def test_first_contact_says_accept_new_and_that_command_records_the_keys(testbed, tmp_path):
    known = tmp_path / "known_hosts"
    hosts = ["-i", str(testbed.inventory), "-F", "/nonexistent", "--known-hosts", str(known), "odd"]

    proc = sshfleet("run", *hosts, "--", "true")
    assert proc.returncode == EXIT_UNREACHABLE
    lines = proc.stderr.splitlines()
    assert "host_key_policy" not in proc.stderr
    for number, line in zip((1, 3, 5, 7), lines[:4]):  # one line each: the fingerprints differ
        assert line.startswith(f"sshfleet: node0{number}: host key rejected (hostkey: no host key known for ")
        assert line.endswith("; add it with ssh-keyscan or use --accept-new)")
    assert lines[4].startswith("sshfleet: 4 hosts: 4 host key rejected in ")
    prefix = "sshfleet: no host key known yet for node[01,03,05,07]: if they are new hosts, record their keys with: "
    assert lines[5].startswith(prefix) and len(lines) == 6
    suggested = shlex.split(lines[5][len(prefix) :])
    assert suggested[:3] == ["sshfleet", "ping", "--accept-new"]

    recorded = sshfleet(*suggested[1:])
    assert recorded.returncode == EXIT_OK, recorded.stdout + recorded.stderr
    assert len(known.read_text().splitlines()) == 4

    again = sshfleet("run", *hosts, "--", "true")
    assert again.returncode == EXIT_OK, again.stderr


def test_ping_names_the_flag_and_the_next_step(testbed, capsys, tmp_path):
    known = tmp_path / "known_hosts"
    code, out, err = cli(capsys, "ping", "-F", str(testbed.ssh_config), "-H", "node02", "--known-hosts", str(known))
    assert code == EXIT_UNREACHABLE
    assert "node02" in out and "host key rejected" in out and "--accept-new" in out
    assert "host_key_policy" not in out + err
    assert f"sshfleet ping --accept-new -H node02 -F {testbed.ssh_config} --known-hosts {known}" in err


def test_a_changed_key_gets_no_accept_new_hint(testbed, capsys, tmp_path):
    """--accept-new does not replace a changed key: no hint to pass it then."""
    known = tmp_path / "known_hosts"
    other = testbed.hosts[1]
    lines = testbed.known_hosts.read_text().splitlines()
    key = next(line for line in lines if line.startswith(other.name + ","))
    known.write_text(f"{testbed.hosts[0].address} {key.split(' ', 1)[1]}\n")
    code, _, err = cli(
        capsys, "run", "-F", str(testbed.ssh_config), "-H", "node01", "--known-hosts", str(known), "--", "true"
    )
    assert code == EXIT_UNREACHABLE
    assert "HOST KEY CHANGED" in err and "1 host key rejected" in err
    assert "--accept-new" not in err


def test_openssh_transport_says_accept_new_too(testbed, capsys, tmp_path):
    known = tmp_path / "known_hosts"
    code, _, err = cli(
        capsys, "run", "--transport", "openssh", "-F", str(testbed.ssh_config), "-H", "node03",
        "--known-hosts", str(known), "--", "true",
    )  # fmt: skip
    assert code == EXIT_UNREACHABLE
    assert "host_key_policy" not in err
    assert "node03: host key rejected (hostkey: no host key known for " in err and "or use --accept-new)" in err
    assert "1 host: 1 host key rejected in " in err


# --- the same flags in call, shell and put --------------------------------------------------------------


def test_call_takes_the_shared_host_flags(testbed, capsys):
    code, out, err = cli(
        capsys, "call", "-F", str(testbed.ssh_config), "-H", "node01,node02", "-w", "node[03-04]", "-x", "node02",
        "-f", "2", "-o", "ConnectTimeout=5", "sysinfo", "Uname", "--json",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert {host: reply["reply"]["nodename"] for host, reply in json.loads(out).items()} == {
        "node01": "node01",
        "node03": "node03",
        "node04": "node04",
    }


def test_shell_takes_the_shared_host_flags(testbed):
    proc = subprocess.run(
        [SSHFLEET, "shell", "-i", str(testbed.inventory), "-F", str(testbed.ssh_config), "odd", "-x", "node0[1-3]",
         "-l", "root", "-v"],
        input="hosts\n!hostname\nexit\n", capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "node05: node05" in proc.stdout and "node07: node07" in proc.stdout
    assert "node01" not in proc.stdout and "node03" not in proc.stdout


def test_put_takes_the_shared_host_flags(testbed, capsys, tmp_path, openssh):
    local = tmp_path / "dialect.txt"
    local.write_text("same flags\n")
    code, out, err = cli(
        capsys, "put", "-F", str(testbed.ssh_config), "-H", "node07", "-H", "node08", "-x", "node08",
        str(local), "/tmp/dialect.txt",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert out.startswith("node07  ok: 1 file") and "node08" not in out
    try:
        assert openssh(testbed, "node07", "cat /tmp/dialect.txt").stdout == "same flags\n"
        assert openssh(testbed, "node08", "test -e /tmp/dialect.txt || echo absent").stdout == "absent\n"
    finally:
        openssh(testbed, "node07", "rm -f /tmp/dialect.txt")
