"""The SSH seam against real sshd: connect, exec, forward, host keys, auth, ssh_config, ProxyJump, deadlines.

Timing assertions only check that a bounded wait ends (bound + a generous margin), never how fast it is.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from sshfleet._fleet import Connected, Fleet
from sshfleet._options import HostSpec, SshOptions, Timeouts
from sshfleet._ssh import Connection, connect
from sshfleet.errors import (
    AuthenticationError,
    ChannelError,
    ConnectError,
    ConnectTimeout,
    HostKeyError,
)
from tests.testbed.helpers import direct, jump_config, new_key

MARGIN = 15.0  # slack on every "ends within its bound" check: CI machines are slow, never flaky


def read_all(channel, timeout: float = 30.0) -> bytes:
    channel.settimeout(timeout)
    chunks = []
    while True:
        data = channel.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def run(conn: Connection, command: str) -> tuple[int, str]:
    channel = conn.exec(command, timeout=30)
    try:
        out = read_all(channel).decode()
        return channel.recv_exit_status(), out
    finally:
        channel.close()


# --- connect, exec, forward, close -----------------------------------------------------------------------


def test_fleet_connect_in_spec_order(testbed):
    bad_spec = HostSpec("bad", hostname=testbed.host("node01").address, port=2)
    specs = [HostSpec(h.name) for h in reversed(testbed.hosts)] + [bad_spec]
    with Fleet(specs, ssh_options=testbed.ssh_options().replace(forks=3)) as fleet:
        results = fleet.connect()
        assert list(results) == [s.name for s in specs]
        assert all(isinstance(results[h.name], Connected) for h in testbed.hosts)
        assert all(fleet.state(h.name) == "connected" for h in testbed.hosts)
        bad = results["bad"]
        assert isinstance(bad, ConnectError) and bad.phase == "tcp"
        assert "Connection refused" in bad.message
        assert fleet.state("bad") == "disconnected"
    assert fleet.state("node01") == "closed"


# --- authentication --------------------------------------------------------------------------------------


def test_no_key_at_all_is_auth_failed(testbed):
    spec, options = direct(testbed, identity_files=())
    with pytest.raises(AuthenticationError, match="no key to offer"):
        connect(spec, options)


def test_encrypted_key_without_agent_is_skipped_with_reason(testbed, tmp_path):
    path = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)], check=True, timeout=30)
    spec, options = direct(testbed, identity_files=(str(path),))
    with pytest.raises(AuthenticationError, match="encrypted"):
        connect(spec, options)


# --- host keys -------------------------------------------------------------------------------------------


def test_unknown_host_key_is_rejected(testbed, tmp_path):
    known = tmp_path / "known_hosts"
    spec, options = direct(testbed, known_hosts=str(known))
    with pytest.raises(HostKeyError) as info:
        connect(spec, options)
    message = info.value.message
    assert "no host key known for" in message and "SHA256:" in message
    assert "ssh-keyscan" in message and "accept-new" in message
    assert not known.exists()


def test_accept_new_records_the_key_then_strict_accepts_it(testbed, tmp_path):
    known = tmp_path / "sub" / "known_hosts"
    spec, options = direct(testbed, known_hosts=str(known), host_key_policy="accept-new")
    with connect(spec, options) as conn:
        assert run(conn, "true")[0] == 0
    lines = known.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(testbed.host("node01").address + " ssh-ed25519 ")
    assert known.stat().st_mode & 0o777 == 0o600
    with connect(spec, options.replace(host_key_policy="strict")) as conn:
        assert conn.is_active()
    assert len(known.read_text().splitlines()) == 1  # nothing appended for a known host


def test_accept_new_that_cannot_write_is_rejected(testbed, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    spec, options = direct(testbed, known_hosts=str(blocker / "known_hosts"), host_key_policy="accept-new")
    with pytest.raises(HostKeyError, match="cannot record the new host key"):
        connect(spec, options)


def test_accept_new_many_hosts_at_once_writes_each_once(testbed, tmp_path):
    known = tmp_path / "known_hosts"
    options = testbed.ssh_options().replace(known_hosts=str(known), host_key_policy="accept-new")
    specs = [HostSpec(h.name) for h in testbed.hosts]
    with Fleet(specs, ssh_options=options) as fleet:
        results = fleet.connect()
    for r in results.values():
        assert isinstance(r, Connected), r
    lines = known.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(h.address for h in testbed.hosts)


def test_hashed_and_non_default_port_entries(testbed, tmp_path):
    """A known_hosts written by OpenSSH itself (hashed names) is understood."""
    host = testbed.host("node01")
    scanned = subprocess.run(
        ["ssh-keyscan", "-H", "-t", "ed25519", host.address], capture_output=True, text=True, timeout=30
    ).stdout
    assert scanned.startswith("|1|")
    known = tmp_path / "known_hosts"
    known.write_text(scanned)
    spec, options = direct(testbed, known_hosts=str(known))
    with connect(spec, options) as conn:
        assert conn.is_active()


# --- ssh_config ------------------------------------------------------------------------------------------


def test_ssh_config_alias_user_port_identity_are_honoured(testbed, tmp_path):
    node = testbed.host("node03")
    wrong = new_key(tmp_path)
    config = tmp_path / "ssh_config"
    common = f"    HostName {node.address}\n    UserKnownHostsFile {testbed.known_hosts}\n"
    config.write_text(
        f"Host web\n{common}    User fleet\n    Port 22\n    IdentityFile {testbed.client_key}\n"
        f"Host web-badport\n{common}    Port 2\n    IdentityFile {testbed.client_key}\n"
        f"Host web-wrongkey\n{common}    IdentityFile {wrong}\n    IdentitiesOnly yes\n"
    )
    options = SshOptions(ssh_config=str(config), allow_agent=False, look_for_keys=False)
    with connect(HostSpec("web"), options) as conn:
        assert (conn.host, conn.address, conn.user) == ("web", node.address, "fleet")
        assert run(conn, "id -un; hostname") == (0, "fleet\nnode03\n")
    with pytest.raises(ConnectError) as info:
        connect(HostSpec("web-badport"), options)
    assert info.value.phase == "tcp" and f"{node.address}:2" in info.value.message
    with pytest.raises(AuthenticationError, match=wrong):
        connect(HostSpec("web-wrongkey"), options)


def test_strict_host_key_checking_no_in_ssh_config_stays_strict(testbed, tmp_path):
    config = tmp_path / "ssh_config"
    node = testbed.host("node02")
    config.write_text(
        f"Host node02\n    HostName {node.address}\n    User root\n    IdentityFile {testbed.client_key}\n"
        f"    StrictHostKeyChecking no\n    UserKnownHostsFile {tmp_path / 'empty_known_hosts'}\n"
    )
    options = SshOptions(ssh_config=str(config), allow_agent=False, look_for_keys=False)
    with pytest.raises(HostKeyError, match="no host key known"):
        connect(HostSpec("node02"), options)


# --- ProxyJump -------------------------------------------------------------------------------------------


def test_proxy_jump_shared_by_connect_all(testbed, tmp_path):
    extra = (
        f"Host via-node01-c\n    HostName {testbed.host('node03').address}\n    ProxyJump node01\n"
        f"    User root\n    IdentityFile {testbed.client_key}\n"
        f"    UserKnownHostsFile {testbed.known_hosts}\n"
    )
    options = jump_config(testbed, tmp_path, extra)
    log = testbed.host("node01").log_file
    before = log.read_text().count("Accepted publickey")
    with Fleet([HostSpec("via-node01"), HostSpec("via-node01-c")], ssh_options=options) as fleet:
        results = fleet.connect()
        assert all(isinstance(r, Connected) for r in results.values()), results
        assert run(fleet.connection("via-node01"), "hostname") == (0, "node02\n")
        assert run(fleet.connection("via-node01-c"), "hostname") == (0, "node03\n")
        # one login on the jump host served both destinations
        assert log.read_text().count("Accepted publickey") - before == 1


# --- deadlines -------------------------------------------------------------------------------------------


@contextmanager
def silent_server(greeting: bytes = b""):
    """A TCP listener on loopback that accepts, optionally says ``greeting``, then never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(greeting)
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize(
    ("greeting", "phase"),
    [(b"", "banner"), (b"SSH-2.0-OpenSSH_9.2\r\n", "kex")],
)
def test_silent_server_times_out_in_its_phase(greeting, phase):
    with silent_server(greeting) as port:
        spec = HostSpec("silent", hostname="127.0.0.1", port=port)
        options = SshOptions(ssh_config=None, known_hosts="/dev/null", timeouts=Timeouts(auth=1.5))
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as info:
            connect(spec, options)
        assert time.monotonic() - started < 1.5 + MARGIN
        assert info.value.phase == phase


def test_cut_link_connect_and_requests_end_within_their_bounds(fresh_testbed):
    bed = fresh_testbed(2)
    options = bed.ssh_options().replace(timeouts=Timeouts(connect=2, auth=2, close=2))
    conn = connect(HostSpec("node02"), options)
    bed.link_down("node01")
    bed.link_down("node02")
    try:
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as info:
            connect(HostSpec("node01"), options)
        assert info.value.phase == "tcp"
        assert time.monotonic() - started < 2 + MARGIN
        # An established connection whose link is gone: requests and close end within their bounds too.
        started = time.monotonic()
        with pytest.raises(ChannelError):
            conn.exec("true", timeout=2)
        with pytest.raises(ChannelError):
            conn.open_forward("127.0.0.1", 22, timeout=2)
        conn.close()
        assert time.monotonic() - started < 6 + 3 * MARGIN
    finally:
        conn.close()
        bed.link_up("node01")
        bed.link_up("node02")


def test_keepalive_notices_a_dead_link(fresh_testbed):
    """An idle connection whose peer vanished goes inactive after keepalive * ServerAliveCountMax."""
    bed = fresh_testbed(1)
    conn = connect(HostSpec("node01"), bed.ssh_options().replace(keepalive=1.0))
    try:
        assert conn.is_active()
        bed.link_down("node01")
        deadline = time.monotonic() + 3 + MARGIN
        while conn.is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not conn.is_active()
    finally:
        conn.close()
        bed.link_up("node01")
