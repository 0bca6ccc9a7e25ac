"""``sshfleet ping`` against real sshd: all ok, a cut link, auth and host key failures, JSON, accept-new."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from sshfleet._cli import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main

SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))


def ping(capsys, *argv: str) -> tuple[int, str]:
    code = main(["ping", *argv])
    return code, capsys.readouterr().out


def bed_args(bed, *extra: str) -> list[str]:
    return ["-i", str(bed.inventory), "-F", str(bed.ssh_config), *extra]


def test_all_hosts_ok(testbed, capsys):
    code, out = ping(capsys, *bed_args(testbed))
    assert code == EXIT_OK
    lines = out.splitlines()
    for host in testbed.hosts:
        line = next(line for line in lines if line.startswith(host.name + " "))
        assert line.split()[1] == "ok" and f"root@{host.address}:22" in line
    assert lines[-1].startswith("8 hosts: 8 ok in ")


def test_json_and_pattern(testbed, capsys):
    code, out = ping(capsys, *bed_args(testbed, "odd", "--json"))
    assert code == EXIT_OK
    results = json.loads(out)
    assert list(results) == ["node01", "node03", "node05", "node07"]
    for result in results.values():
        assert set(result) == {"status", "message", "phase", "seconds"}
        assert result["status"] == "ok" and result["phase"] is None and result["seconds"] > 0


def test_inventory_alone_with_known_hosts(testbed, capsys):
    """Without -F the inventory's ansible_host / ansible_user / key file are enough."""
    known = str(testbed.known_hosts)
    code, out = ping(capsys, "-i", str(testbed.inventory), "-F", "/nonexistent", "--known-hosts", known)
    assert code == EXIT_OK, out


def test_subprocess_entry_point(testbed):
    proc = subprocess.run(
        [SSHFLEET, "ping", *bed_args(testbed, "--forks", "3")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("8 hosts: 8 ok")
    assert "\x1b[" not in proc.stdout  # no colour codes when stdout is not a terminal


def test_unknown_host_keys_then_accept_new(testbed, capsys, tmp_path):
    known = tmp_path / "known_hosts"
    args = ["-i", str(testbed.inventory), "-F", "/nonexistent", "--known-hosts", str(known), "--json"]
    code, out = ping(capsys, *args)
    assert code == EXIT_UNREACHABLE
    for result in json.loads(out).values():
        assert result["status"] == "hostkey_rejected" and result["phase"] == "hostkey"
        assert "no host key known" in result["message"]
    code, out = ping(capsys, *args, "--accept-new")
    assert code == EXIT_OK, out
    assert len(known.read_text().splitlines()) == 8
    code, out = ping(capsys, *args)
    assert code == EXIT_OK, out


def test_unknown_user_is_auth_failed(testbed, capsys):
    code, out = ping(capsys, *bed_args(testbed, "node02", "-u", "nosuchuser"))
    assert code == EXIT_UNREACHABLE
    assert out.splitlines()[0].split()[:3] == ["node02", "auth", "failed"]
    assert "auth: permission denied for user 'nosuchuser'" in out
    assert out.splitlines()[-1].startswith("1 host: 1 auth failed")


def test_empty_selection_is_a_usage_error(testbed, capsys):
    assert main(["ping", *bed_args(testbed, "nothing*")]) == EXIT_USAGE
    assert "no hosts matching 'nothing*'" in capsys.readouterr().err


def test_cut_link_is_unreachable_within_the_timeout(fresh_testbed, capsys):
    bed = fresh_testbed(3)
    bed.link_down("node02")
    try:
        started = time.monotonic()
        code, out = ping(capsys, *bed_args(bed, "--timeout", "2", "--json"))
        elapsed = time.monotonic() - started
    finally:
        bed.link_up("node02")
    assert code == EXIT_UNREACHABLE
    results = json.loads(out)
    assert results["node01"]["status"] == results["node03"]["status"] == "ok"
    cut = results["node02"]
    assert (cut["status"], cut["phase"]) == ("unreachable", "tcp")
    assert "timed out" in cut["message"]
    assert elapsed < 2 + 30  # bound plus a generous margin: the point is that it ends


def test_terminal_output_uses_rich(testbed):
    """On a terminal the table is drawn by rich (colour codes); the content is the same."""
    primary, secondary = os.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [SSHFLEET, "ping", *bed_args(testbed, "node01")],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(secondary)
    out = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                try:
                    data = os.read(primary, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out.extend(data)
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()
        os.close(primary)
    text = out.decode(errors="replace")
    assert code == EXIT_OK, text
    assert "\x1b[" in text and "node01" in text and "1 host: 1 ok" in text
