"""``sshfleet put / get / sync`` against real sshd: hosts by -i PATTERN or -H, the DIR/HOST layout, --json,
--mode, --delete, exit statuses (failed path, unreachable host, usage), and progress only on a terminal.

In-process through ``main([...])`` with capsys; as a subprocess on a pseudo-terminal for the progress display.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main

pytestmark = pytest.mark.testbed
SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))
DEADLINE = 120


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def clean(testbed):
    yield
    for host in testbed.hosts:
        testbed.run(host, "rm -rf /tmp/ftc")


def test_put_then_get_with_pattern_and_hosts(testbed, clean, tmp_path, capsys):
    local = tmp_path / "app.conf"
    local.write_text("setting = 1\n")
    inv, cfg = str(testbed.inventory), str(testbed.ssh_config)
    for host in ("node01", "node02", "node03"):
        testbed.run(host, "mkdir -p /tmp/ftc")
    code, out, err = cli(capsys, "put", "-i", inv, "-F", cfg, "--mode", "600", "node01:node02", str(local), "/tmp/ftc/")
    assert code == EXIT_OK, err
    assert [line.split()[:2] for line in out.splitlines()] == [["node01", "ok:"], ["node02", "ok:"]]
    assert "1 file, 12 B in" in out
    assert "sshfleet put: 2 hosts: 2 ok, 0 failed" in err
    assert testbed.run("node01", "stat -c %a /tmp/ftc/app.conf").stdout.strip() == "600"
    assert testbed.run("node03", "ls -A /tmp/ftc").stdout == ""  # not selected

    code, out, err = cli(
        capsys, "get", "-H", "node01,node02", "-F", cfg, "--json", "/tmp/ftc/app.conf", str(tmp_path / "got")
    )
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert list(result) == ["node01", "node02"]
    for host in ("node01", "node02"):
        copy = tmp_path / "got" / host / "app.conf"
        assert result[host]["ok"] is True
        assert result[host]["reply"]["paths"] == [str(copy)]
        assert result[host]["reply"]["bytes"] == 12
        assert copy.read_text() == "setting = 1\n"


def test_sync_twice_sends_nothing_the_second_time_and_deletes(testbed, clean, tmp_path, capsys):
    src = tmp_path / "site"
    src.mkdir()
    (src / "a.html").write_text("a\n")
    (src / "b.html").write_text("b\n")
    argv = ["sync", "-H", "node01,node02", "-F", str(testbed.ssh_config), "--json", str(src), "/tmp/ftc/site"]
    for host in ("node01", "node02"):
        testbed.run(host, "mkdir -p /tmp/ftc")
    code, out, _ = cli(capsys, *argv)
    assert code == EXIT_OK
    assert {h: r["reply"]["files"] for h, r in json.loads(out).items()} == {"node01": 2, "node02": 2}
    code, out, _ = cli(capsys, *argv)
    assert {h: (r["reply"]["files"], r["reply"]["skipped"]) for h, r in json.loads(out).items()} == {
        "node01": (0, 2),
        "node02": (0, 2),
    }
    (src / "b.html").unlink()
    code, out, err = cli(
        capsys, "sync", "-H", "node01", "-F", str(testbed.ssh_config), "--delete", str(src), "/tmp/ftc/site"
    )
    assert code == EXIT_OK, err
    assert "0 files, 0 B in" in out and "1 up to date, 1 deleted" in out
    assert testbed.run("node01", "ls /tmp/ftc/site").stdout.split() == ["a.html"]


def test_exit_status_failed_unreachable_and_usage(testbed, clean, tmp_path, capsys):
    cfg = str(testbed.ssh_config)
    code, out, err = cli(capsys, "get", "-H", "node01,node02", "-F", cfg, "/tmp/ftc/missing.log", str(tmp_path))
    assert code == EXIT_FAILED
    assert "node01  CHANNEL FAILED: no such file or directory: /tmp/ftc/missing.log" in err

    testbed.run("node01", "mkdir -p /tmp/ftc && echo x > /tmp/ftc/x")
    testbed.link_down("node02")
    try:
        code, out, err = cli(
            capsys, "get", "-H", "node01,node02", "-F", cfg, "--connect-timeout", "1", "/tmp/ftc/x", str(tmp_path)
        )
    finally:
        testbed.link_up("node02")
    assert code == EXIT_UNREACHABLE
    assert out.startswith("node01  ok: 1 file")
    assert "node02  UNREACHABLE:" in err

    missing = tmp_path / "nope.txt"
    code, out, err = cli(capsys, "put", "-H", "node01", "-F", cfg, str(missing), "/tmp/ftc/")
    assert code == EXIT_USAGE
    assert f"sshfleet put: cannot read {missing}: No such file or directory" in err
    code, out, err = cli(capsys, "put", "-H", "node01", "node01", str(missing), "/tmp/ftc/")
    assert code == EXIT_USAGE and "a PATTERN needs -i INVENTORY" in err
    code, out, err = cli(capsys, "get", "-H", "node01", "/tmp/ftc/x")
    assert code == EXIT_USAGE and "give REMOTE LOCAL_DIR" in err


def test_progress_shows_bytes_and_rate_only_on_a_terminal(testbed, clean, tmp_path, capsys):
    testbed.run("node01", "mkdir -p /tmp/ftc && head -c 104857600 /dev/urandom > /tmp/ftc/big.bin")
    argv = ["get", "-H", "node01", "-F", str(testbed.ssh_config), "/tmp/ftc/big.bin"]
    testbed.limit_rate("node01", rate="200mbit", burst="1mb")  # a few seconds: several refreshes of the display
    try:
        controller, terminal = pty.openpty()
        proc = subprocess.Popen(
            [SSHFLEET, *argv, str(tmp_path / "tty")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
        )
        os.close(terminal)
        shown = b""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed its side
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(DEADLINE) == EXIT_OK
        os.close(controller)
        code, _, err = cli(capsys, *argv, str(tmp_path / "pipe"))
    finally:
        testbed.clear_rate("node01")
    assert b"node01" in shown and b"MB/s" in shown and b"/104.9 MB" in shown
    assert code == EXIT_OK
    assert "MB/s" not in err and "\x1b[" not in err
    assert (tmp_path / "tty" / "node01" / "big.bin").stat().st_size == 100 << 20
