"""``sshfleet run``'s fast path (``sshfleet._adhoc``: one ssh per host, a standard-library helper there, no
agent) against real sshd: that it is the path taken, and that it keeps run's guarantees where the agent kept them
through its supervisor — nothing left after the controller is SIGKILLed, after the link is lost, or after a
command escapes its process group. The output, exit status, stdin, timeout and Ctrl-C behaviour shared with the
agent's path is tested in test_run_cli.py, which now runs through this path.
"""

from __future__ import annotations

import json
import signal
import subprocess

from sshfleet._cli import EXIT_OK, EXIT_UNREACHABLE, main
from tests.testbed.test_exec import remote_processes, wait_until
from tests.testbed.test_run_cli import DEADLINE, bed_args, read_until, run, spawn

LOADER_MARK = "sshfleet-run"  # in the loader, so in every fast-path ssh's and helper's command line


def _local_ssh_processes(bed) -> list[str]:
    """Our ssh client processes on this machine that talk to ``bed``'s hosts."""
    addresses = {h.address for h in bed.hosts}
    found = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in found.splitlines()
        if LOADER_MARK in line
        and line.split()[1].rsplit("/", 1)[-1] == "ssh"
        and any(f" {a} " in line for a in addresses)
    ]


def test_a_plain_command_starts_no_agent_and_paramiko_still_does(fresh_testbed, capsys):
    """The fast path ships nothing: no cache directory appears on the host. ``--transport paramiko`` asks
    for the agent's path, which caches grpcio and the agent there."""
    bed = fresh_testbed(1)
    cache = bed.hosts[0].cache_dirs["fleet"] / "sshfleet"
    code, out, err = run(capsys, *bed_args(bed, "-l", "fleet"), "--", "printf", "%s\n", "a b", "")
    assert code == EXIT_OK, err
    assert out == "node01: a b\nnode01: \n"
    assert not cache.exists(), sorted(p.name for p in cache.iterdir())
    code, out, err = run(capsys, *bed_args(bed, "-l", "fleet", "--transport", "paramiko"), "--", "true")
    assert code == EXIT_OK, err
    assert cache.is_dir()


def test_no_python_on_the_host_is_a_clear_error(testbed, capsys):
    code, _, err = run(capsys, *bed_args(testbed, "node01", "--python", "/nonexistent/python3"), "--", "true")
    assert code == EXIT_UNREACHABLE
    assert "sshfleet: node01: " in err and "no usable Python" in err and "--python" in err


def test_unreadable_end_is_not_mistaken_for_the_end_record(testbed, capsys):
    """A command's stderr holding NUL bytes and the marker's first bytes still arrives whole."""
    script = "printf 'a\\000sshfleet-e\\nb\\n' >&2; printf '\\000' >&2"
    code, out, err = run(capsys, *bed_args(testbed, "node01"), "--json", "-c", script)
    assert code == EXIT_OK, err
    assert json.loads(out)["node01"]["stderr"] == "a\x00sshfleet-e\nb\n\x00"


def test_controller_killed_leaves_nothing_on_the_hosts(testbed):
    """SIGKILL of `sshfleet run` mid-command: each ssh's stdin ends, each helper kills its command, the ssh
    processes end. The leftover hook checks the hosts; this checks the ssh processes here."""
    proc = spawn(bed_args(testbed, "--", "sh", "-c", "echo started; exec sleep 300"))
    try:
        data = b""
        assert proc.stdout is not None
        while data.count(b": started\n") < len(testbed.hosts):
            data += read_until(proc.stdout.fileno(), rb".")
        assert len(_local_ssh_processes(testbed)) == len(testbed.hosts)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=DEADLINE)
    for host in testbed.hosts:
        assert wait_until(lambda h=host: not remote_processes(testbed, h, "sleep 300")), testbed.leftovers(host)
    assert wait_until(lambda: not _local_ssh_processes(testbed)), _local_ssh_processes(testbed)


def test_what_escapes_the_process_group_is_killed_when_the_run_ends(testbed, capsys):
    """setsid, a double fork and nohup all escape a process group; the helper, a child subreaper, finds them."""
    script = "setsid sleep 301 & (sleep 302 &); nohup sleep 303 >/dev/null 2>&1 & echo done"
    code, out, err = run(capsys, *bed_args(testbed, "node01:node02"), "-c", script)
    assert code == EXIT_OK, err
    assert sorted(out.splitlines()) == ["node01: done", "node02: done"]
    for host in testbed.hosts[:2]:
        for needle in ("sleep 301", "sleep 302", "sleep 303"):
            assert wait_until(lambda h=host, n=needle: not remote_processes(testbed, h, n)), testbed.leftovers(host)


def test_lost_link_ends_the_run_and_the_remote_command(fresh_testbed, capsys):
    """The link to node02 goes down mid-command: ssh's keepalive ends its session here (connection lost, exit
    3, node01's result kept), and on node02 the helper, without heartbeats, kills the command by itself."""
    bed = fresh_testbed(2)
    argv = [
        *bed_args(bed),
        "-o",
        "ServerAliveInterval=1",
        "--json",
        "--",
        "sh",
        "-c",
        "echo started; sleep 4; echo end",
    ]
    proc = spawn(argv)
    try:
        assert proc.stdout is not None
        assert wait_until(lambda: bool(remote_processes(bed, "node02", "sleep 4")), timeout=DEADLINE)
        bed.link_down("node02")
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == EXIT_UNREACHABLE, err
    results = json.loads(out)
    assert results["node01"]["status"] == "ok" and results["node01"]["stdout"] == "started\nend\n"
    assert results["node02"]["status"] == "unreachable"
    assert results["node02"]["error"]["kind"] == "channel_failed", results["node02"]
    # On node02 (still cut off) the helper misses its heartbeats and kills what it started.
    assert wait_until(lambda: not remote_processes(bed, "node02", LOADER_MARK), timeout=30), bed.leftovers("node02")
    bed.link_up("node02")
    # sshd's own session process ends once the link is back and its packets meet our closed socket.
    if not wait_until(lambda: not bed.leftovers("node02"), timeout=30):
        bed.clean(["node02"])


def test_main_returns_before_the_commands_background_ends(testbed, capsys):
    """`cmd &` does not keep the run open (ssh's classic hang): the helper gives it one second, then kills it
    (the leftover hook checks that `sleep 300` is gone)."""
    code = main(["run", *bed_args(testbed, "node01"), "-c", "sleep 300 & echo bg"])
    assert code == EXIT_OK
    assert capsys.readouterr().out == "node01: bg\n"


def test_the_oldest_host_python_runs_the_helper(testbed, capsys):
    """The helper is standard library only, for host Pythons back to MIN_PYTHON: exit codes, signals and a
    command that is not found read the same under it."""
    from sshfleet.remote.bootstrap import MIN_PYTHON

    python = f"/root/.pyenv/versions/{MIN_PYTHON[0]}.{MIN_PYTHON[1]}.15/bin/python3"
    where = bed_args(testbed, "node01", "--python", python, "--json")
    _, out, err = run(capsys, *where, "-c", "echo $$; kill -TERM $$")
    result = json.loads(out)["node01"]
    assert result["status"] == "failed" and result["signal"] == signal.SIGTERM, (result, err)
    _, out, _ = run(capsys, *where, "--", "sh", "-c", "exit 7")
    assert json.loads(out)["node01"]["exit_code"] == 7
    _, out, _ = run(capsys, *where, "--", "no-such-command")
    assert json.loads(out)["node01"]["status"] == "not_started"


def test_become_takes_the_agents_path_and_runs_as_root(testbed, capsys, tmp_path):
    """--become (or the inventory's ansible_become) is served through the agent's sudo start: the command runs
    as root for the hosts that become, as the login user through the fast path otherwise."""
    inventory = tmp_path / "inv.ini"
    lines = [f"{h.name} ansible_host={h.address} ansible_user=fleet" for h in testbed.hosts[:2]]
    lines[1] += " ansible_become=true"
    inventory.write_text("\n".join(lines) + "\n")
    where = ["-i", str(inventory), "-F", str(testbed.ssh_config), "--json"]
    with testbed.sudo_rule("ALL=(ALL) NOPASSWD: ALL"):
        code, out, err = run(capsys, *where, "all", "--", "id", "-un")
        assert code == EXIT_OK, err
        assert {h: r["stdout"] for h, r in json.loads(out).items()} == {"node01": "fleet\n", "node02": "root\n"}
        code, out, err = run(capsys, *where, "all", "--become", "--", "id", "-un")
        assert code == EXIT_OK, err
        assert {h: r["stdout"] for h, r in json.loads(out).items()} == {"node01": "root\n", "node02": "root\n"}
    code, out, err = run(capsys, *where, "node01", "--", "id", "-un")
    assert code == EXIT_OK and json.loads(out)["node01"]["stdout"] == "fleet\n", err


def test_run_and_ping_import_neither_paramiko_nor_grpc(testbed):
    """The start-up cost a user feels on every command: the fast paths load no SSH library and no gRPC."""
    import sys

    for command in (["run", *bed_args(testbed, "node01"), "--", "true"], ["ping", *bed_args(testbed, "node01")]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "sshfleet", *command],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line}
        assert "sshfleet._ssh._oneshot" in imported  # the fast path was the one taken
        heavy = sorted(m for m in imported if m.split(".")[0] in ("paramiko", "grpc", "google", "cryptography"))
        assert not heavy, f"{command[0]} imported {heavy[:5]}"


def test_a_host_behind_a_jump_host_is_run_through_the_agent(testbed, capsys, tmp_path):
    """The fast path's one-off ssh has no jump chain: such a run goes through the agent, with the same output."""
    from tests.testbed.helpers import jump_config

    config = jump_config(testbed, tmp_path).ssh_config
    assert config is not None
    code, out, err = run(capsys, "-F", config, "-H", "via-node01,node03", "--", "hostname")
    assert code == EXIT_OK, err
    assert sorted(line.split() for line in out.splitlines()) == [["node03:", "node03"], ["via-node01:", "node02"]]
