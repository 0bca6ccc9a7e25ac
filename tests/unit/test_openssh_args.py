"""The OpenSSH transport's pure parts: the argv of the master and its clients, error translation, and the pipe
channel on a local process. No network: ``ssh -G`` only prints the configuration it would use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from sshfleet._options import HostSpec, SshOptions, Timeouts
from sshfleet._ssh import resolve
from sshfleet._ssh._config import ResolvedHost
from sshfleet._ssh._openssh import sweep_stale
from sshfleet._ssh._openssh_args import (
    exec_argv,
    forward_spec,
    master_argv,
    mux_argv,
    proxy_command,
    ssh_message,
    translate_failure,
)
from sshfleet._ssh._pipe_channel import PipeChannel
from sshfleet.errors import AuthenticationError, ConnectError, ConnectTimeout, HostKeyError

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")


def host(**changes) -> ResolvedHost:
    base = dict(
        name="web",
        hostname="10.0.0.5",
        port=2222,
        user="deploy",
        identity_files=("/keys/id_ed25519", "/keys/with space"),
        identities_only=True,
        allow_agent=False,
        look_for_keys=False,
        proxy_jump=(),
        connect_timeout=2.5,
        auth_timeout=20.0,
        keepalive=15.0,
        keepalive_count_max=4,
        known_hosts_files=("/kh/global", "/kh/user"),
        known_hosts_write="/kh/user",
        host_key_policy="strict",
    )
    base.update(changes)
    return ResolvedHost(**base)  # type: ignore[arg-type]


def options_of(argv: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "-o":
            key, _, val = value.partition("=")
            found.setdefault(key, []).append(val)
    return found


def ssh_g(argv: list[str]) -> dict[str, list[str]]:
    """What the real client makes of ``argv`` (``-G`` prints the final configuration and exits)."""
    assert argv[0] == "ssh"
    done = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        result.setdefault(key, []).append(value)
    return result


# --- the master ------------------------------------------------------------------------------------------


def test_master_argv_carries_every_resolved_setting():
    argv = master_argv(host(), "/run/x/ctl")
    assert argv[:8] == ["ssh", "-F", "none", "-M", "-S", "/run/x/ctl", "-N", "-T"]
    assert argv[-2:] == ["--", "10.0.0.5"]
    o = options_of(argv)
    assert o["HostName"] == ["10.0.0.5"] and o["Port"] == ["2222"] and o["User"] == ["deploy"]
    assert o["IdentityFile"] == ["/keys/id_ed25519", '"/keys/with space"']
    assert o["IdentitiesOnly"] == ["yes"] and o["IdentityAgent"] == ["none"]
    assert o["StrictHostKeyChecking"] == ["yes"]
    assert o["UserKnownHostsFile"] == ["/kh/user /kh/global"]  # the file accept-new writes comes first
    assert o["ControlPersist"] == ["no"] and o["BatchMode"] == ["yes"] and o["ExitOnForwardFailure"] == ["yes"]
    assert o["ServerAliveInterval"] == ["15"] and o["ServerAliveCountMax"] == ["4"]
    assert o["ConnectTimeout"] == ["3"]  # whole seconds, rounded up
    assert o["ProxyCommand"] == ["none"] and o["ProxyJump"] == ["none"]
    assert o["PreferredAuthentications"] == ["publickey"]
    assert "HostKeyAlias" not in o


def test_master_argv_variants():
    o = options_of(master_argv(host(host_key_policy="accept-new", allow_agent=True, identities_only=False), "c"))
    assert o["StrictHostKeyChecking"] == ["accept-new"]
    assert "IdentityAgent" not in o and o["IdentitiesOnly"] == ["no"]
    o = options_of(master_argv(host(identity_files=(), keepalive=0.0, host_key_alias="gw"), "c"))
    assert o["IdentityFile"] == ["none"]  # OpenSSH must not fall back to ~/.ssh/id_* on its own
    assert o["ServerAliveInterval"] == ["0"] and o["HostKeyAlias"] == ["gw"]
    o = options_of(master_argv(host(known_hosts_files=(), known_hosts_write=None), "c"))
    assert o["UserKnownHostsFile"] == ["/dev/null"]


def test_jump_goes_through_the_previous_master():
    argv = master_argv(host(), "/d/ctl", jump_ctl="/j%d/ctl", jump_host="10.0.0.1")
    (command,) = options_of(argv)["ProxyCommand"]
    assert command.startswith("ssh -F none -S /j%%d/ctl ")  # '%' is a token character in ProxyCommand
    assert command.endswith(" -W %h:%p -- 10.0.0.1")
    assert "ControlMaster=no" in command and "ProxyCommand=false" in command
    assert proxy_command("/a b/ctl", "h").split()[4] == "'/a"  # quoted for the shell that runs it


@needs_ssh
def test_real_client_accepts_the_master_argv(tmp_path):
    config = ssh_g(master_argv(host(host_key_policy="accept-new", host_key_alias="gw"), str(tmp_path / "ctl")))
    assert config["hostname"] == ["10.0.0.5"] and config["port"] == ["2222"] and config["user"] == ["deploy"]
    assert config["identityfile"] == ["/keys/id_ed25519", "/keys/with space"]
    assert config["stricthostkeychecking"] == ["accept-new"]
    assert config["userknownhostsfile"] == ["/kh/user /kh/global"]
    assert config["hostkeyalias"] == ["gw"]
    assert config["controlmaster"] == ["true"] and config["controlpersist"] == ["no"]
    assert config["ciphers"][0].startswith("aes128-gcm@openssh.com,aes256-gcm@openssh.com,")
    assert config["kexalgorithms"][0].startswith("curve25519-sha256,")
    assert "sntrup761x25519-sha512@openssh.com" in config["kexalgorithms"][0]  # still offered, just not first
    jump = ssh_g(master_argv(host(), str(tmp_path / "ctl"), jump_ctl="/j/ctl", jump_host="10.0.0.1"))
    assert "-W %h:%p" in jump["proxycommand"][0]


@needs_ssh
def test_resolved_ssh_config_reaches_the_master(tmp_path):
    """ssh_config is read by resolve() only; the master gets the outcome, ProxyJump included."""
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host app\n    HostName 192.0.2.7\n    User ops\n    Port 2200\n    IdentityFile /k/app\n"
        "    ProxyJump bastion\n    LocalForward 8080 127.0.0.1:80\n"
        "Host bastion\n    HostName 192.0.2.1\n    User jump\n    IdentityFile /k/jump\n"
    )
    options = SshOptions(ssh_config=str(config), known_hosts=str(tmp_path / "kh"), allow_agent=False)
    resolved = resolve(HostSpec("app"), options)
    (hop,) = resolved.proxy_jump
    hop_config = ssh_g(master_argv(hop, "/h/ctl"))
    assert (hop_config["hostname"], hop_config["user"]) == (["192.0.2.1"], ["jump"])
    app = ssh_g(master_argv(resolved, "/a/ctl", jump_ctl="/h/ctl", jump_host=hop.hostname))
    assert (app["hostname"], app["user"], app["port"]) == (["192.0.2.7"], ["ops"], ["2200"])
    assert app["identityfile"] == ["/k/app"]
    assert "localforward" not in app  # nothing beyond what resolve() understood
    assert "-S /h/ctl" in app["proxycommand"][0] and app["proxycommand"][0].endswith("-- 192.0.2.1")


# --- clients ---------------------------------------------------------------------------------------------


def test_exec_argv():
    plain = exec_argv("/c", "10.0.0.5", "echo hi", pty=False, width=80, height=24)
    assert plain[: len(mux_argv("/c"))] == mux_argv("/c")
    assert plain[-4:] == ["-T", "--", "10.0.0.5", "echo hi"]
    tty = exec_argv("/c", "10.0.0.5", "top", pty=True, width=132, height=50)
    assert "-tt" in tty and "EscapeChar=none" in tty
    assert tty[-1] == "stty cols 132 rows 50 2>/dev/null; top"


def test_forward_spec_brackets_ipv6():
    assert forward_spec("/d/f.sock", "127.0.0.1", 4000) == "/d/f.sock:127.0.0.1:4000"
    assert forward_spec("/d/f.sock", "::1", 4000) == "/d/f.sock:[::1]:4000"


# --- errors ----------------------------------------------------------------------------------------------

CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The fingerprint for the ED25519 key sent by the remote host is
SHA256:abc.
Please contact your system administrator.
Add correct host key in /kh/user to get rid of this message.
Offending ED25519 key in /kh/user:3
Host key verification failed.
"""


@pytest.mark.parametrize(
    ("stderr", "timed_out", "cls", "phase", "words"),
    [
        ("ssh: connect to host 10.0.0.5 port 2222: Connection refused\r\n", False, ConnectError, "tcp",
         "Connection refused"),
        ("ssh: connect to host 10.0.0.5 port 2222: Connection timed out\r\n", False, ConnectTimeout, "tcp",
         "timed out"),
        ("ssh: connect to host 10.0.0.5 port 2222: No route to host\r\n", False, ConnectError, "tcp", "No route"),
        ("ssh: Could not resolve hostname nope: Name or service not known\r\n", False, ConnectError, "tcp",
         "resolve"),
        ("Connection timed out during banner exchange\r\n", False, ConnectTimeout, "banner", "banner"),
        ("deploy@10.0.0.5: Permission denied (publickey).\r\n", False, AuthenticationError, "auth",
         "Permission denied"),
        ("No ED25519 host key is known for [10.0.0.5]:2222 and you have requested strict checking.\r\n"
         "Host key verification failed.\r\n", False, HostKeyError, "hostkey", "No ED25519 host key is known"),
        (CHANGED, False, HostKeyError, "hostkey", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        ("kex_exchange_identification: Connection closed by remote host\r\n", False, ConnectError, "banner",
         "Connection closed"),
        ("Unable to negotiate with 10.0.0.5 port 2222: no matching host key type found.\r\n", False,
         ConnectError, "kex", "Unable to negotiate"),
        ("", True, ConnectTimeout, "auth", "longer than 22.5s"),
    ],
)  # fmt: skip
def test_translate_failure(stderr, timed_out, cls, phase, words):
    error = translate_failure(host(), stderr, timed_out=timed_out, waited=22.5)
    assert type(error) is cls and error.phase == phase and error.host == "web"
    assert words in error.message


def test_translate_failure_through_a_jump_host():
    said = "channel 0: open failed: connect failed: Connection refused\r\nStdio forwarding request failed: x\r\n"
    error = translate_failure(host(), said, timed_out=False, waited=5, jump="bastion")
    assert error.phase == "proxy" and "jump host bastion cannot reach 10.0.0.5:2222" in error.message
    silent = translate_failure(host(), "", timed_out=True, waited=5, jump="bastion")
    assert isinstance(silent, ConnectTimeout) and silent.phase == "proxy"


def test_ssh_message_is_one_readable_line():
    text = ssh_message(CHANGED)
    assert "\n" not in text and "@@" not in text and "Please contact" not in text
    assert text.startswith("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! / IT IS POSSIBLE")
    assert (
        ssh_message("ssh: connect to host h port 1: Connection refused")
        == "connect to host h port 1: Connection refused"
    )
    assert len(ssh_message("x" * 5000)) == 1200


# --- the pipe channel, on a local process ----------------------------------------------------------------


def local(script: str) -> PipeChannel:
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    return PipeChannel("local", proc, close_timeout=5.0)


ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line.upper()); sys.stdout.flush()\nsys.exit(7)"


def test_channel_timeouts_like_a_socket():
    channel = local(ECHO)
    try:
        channel.settimeout(0.0)
        with pytest.raises(socket.timeout):
            channel.recv(10)
        assert not channel.recv_ready()
        channel.settimeout(0.05)
        with pytest.raises(socket.timeout):
            channel.recv(10)
        channel.settimeout(None)
        channel.sendall(b"hello\n")
        assert channel.recv(100) == b"HELLO\n"
        channel.sendall(b"again\n")
        channel.settimeout(30)
        deadline = time.monotonic() + 30
        while not channel.recv_ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channel.recv(3) == b"AGA" and channel.recv(100) == b"IN\n"  # what recv_ready read comes first
        channel.shutdown_write()
        assert channel.eof_sent
        with pytest.raises(OSError):
            channel.send(b"late")
        assert channel.recv(100) == b"" and channel.eof_received
        assert channel.recv_exit_status() == 7 and channel.exit_status_ready()
        assert channel.closed  # exited and fully read
    finally:
        channel.close()


def test_channel_stderr_and_big_writes():
    channel = local("import sys\ndata = sys.stdin.buffer.read()\nsys.stderr.write('n=%d' % len(data))")
    try:
        channel.settimeout(30)
        channel.sendall(b"x" * 3_000_000)  # far more than a pipe holds: sendall waits for room
        channel.shutdown_write()
        assert channel.recv(10) == b""
        assert channel.recv_exit_status() == 0
        assert channel.recv_stderr_ready()
        assert channel.recv_stderr(100) == b"n=3000000"
        assert not channel.recv_stderr_ready()  # at EOF: no endless "ready"
        assert channel.stderr_fileno() != channel.fileno()
    finally:
        channel.close()


def test_close_stops_a_running_client_and_is_idempotent():
    channel = local("import time\ntime.sleep(600)")
    channel.close()
    assert channel.closed and channel.exit_status_ready()
    assert channel.recv_exit_status() == -1  # killed, no status of its own
    assert channel.recv(10) == b""
    channel.close()


@needs_ssh
def test_a_dead_master_makes_clients_fail_fast(tmp_path):
    """With no master behind the control path, a client must not dial out on its own (ProxyCommand=false)."""
    argv = exec_argv(str(tmp_path / "ctl"), "127.0.0.1", "true", pty=False, width=80, height=24)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 255
    assert "connect to host" not in done.stderr and "Connection closed" in done.stderr


def test_timeouts_object_is_honoured_in_argv():
    options = SshOptions(ssh_config=None, known_hosts="/kh", timeouts=Timeouts(connect=7), keepalive=4)
    o = options_of(master_argv(resolve(HostSpec("h", hostname="192.0.2.9"), options), "c"))
    assert o["ConnectTimeout"] == ["7"] and o["ServerAliveInterval"] == ["4"]
    assert o["UserKnownHostsFile"] == ["/kh"]


def test_sweep_removes_only_directories_of_dead_controllers(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"sshfleet-ssh-{gone.pid}-abc"
    stale.mkdir()
    (stale / "master.log").write_text("")
    alive = tmp_path / f"sshfleet-ssh-{os.getppid()}-def"  # the process that runs pytest's parent
    alive.mkdir()
    busy = tmp_path / f"sshfleet-ssh-{gone.pid}-ghi"  # a control socket: a master still serves it
    busy.mkdir()
    (busy / "ctl").write_text("")
    other = tmp_path / "sshfleet-ssh-notapid-x"
    other.mkdir()
    assert sweep_stale(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and alive.exists() and busy.exists() and other.exists()
