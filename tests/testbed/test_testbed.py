"""The testbed itself, checked with the real OpenSSH client: every other testbed test relies on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sshfleet import SshOptions, UsageError
from sshfleet.testbed import Testbed
from tests.testbed.conftest import openssh_run

pytestmark = pytest.mark.testbed

UNREACHABLE = ("-o", "ConnectTimeout=2", "-o", "ConnectionAttempts=1")


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return proc.stdout.strip()


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_each_host_answers_with_its_own_name(fresh_testbed):
    bed = fresh_testbed(3)
    assert [h.name for h in bed.hosts] == ["node01", "node02", "node03"]
    assert len({h.address for h in bed.hosts}) == 3
    for host in bed.hosts:
        assert _ok(openssh_run(bed, host, "hostname; id -un")) == f"{host.name}\nroot"


def test_known_hosts_also_names_the_address(testbed):
    host = testbed.hosts[0]
    proc = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(testbed.client_key), "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={testbed.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{host.address}", "hostname"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert _ok(proc) == host.name


def test_fleet_user_logs_in_with_system_python(testbed):
    host = testbed.hosts[1]
    out = _ok(openssh_run(testbed, host, "id -un; echo $HOME; command -v python3", user="fleet"))
    assert out.splitlines() == ["fleet", "/home/fleet", "/usr/bin/python3"]


def test_root_can_run_system_and_pyenv_pythons(testbed):
    pythons = sorted(Path("/root/.pyenv/versions").glob("*/bin/python3"))
    script = "; ".join(f"{p} -c 'print(1)'" for p in [Path("/usr/bin/python3"), *pythons])
    assert _ok(openssh_run(testbed, testbed.hosts[0], script)).split() == ["1"] * (1 + len(pythons))


def test_tmp_and_cache_are_private_per_host(testbed):
    one, two = testbed.hosts[:2]
    marker = f"private-{os.getpid()}"
    _ok(openssh_run(testbed, one, f"echo {one.name} > /tmp/{marker}; mkdir -p ~/.cache && touch ~/.cache/{marker}"))
    try:
        assert _ok(openssh_run(testbed, one, f"cat /tmp/{marker}")) == one.name
        assert openssh_run(testbed, two, f"test -e /tmp/{marker} || test -e ~/.cache/{marker}").returncode == 1
        assert not Path("/tmp", marker).exists()
        assert (one.cache_dirs["root"] / marker).exists()
        assert not (two.cache_dirs["root"] / marker).exists()
        assert _ok(openssh_run(testbed, one, "stat -c %a /tmp")) == "1777"
        # run() enters the same mount namespace as sshd's sessions.
        assert testbed.run(one, ["cat", f"/tmp/{marker}"]).stdout.strip() == one.name
    finally:
        testbed.run(one, ["rm", "-f", f"/tmp/{marker}", f"/root/.cache/{marker}"])


def test_shared_home_shares_cache_but_not_tmp(fresh_testbed):
    bed = fresh_testbed(2, shared_home=True)
    one, two = bed.hosts
    assert one.cache_dirs == two.cache_dirs
    _ok(openssh_run(bed, one, "mkdir -p ~/.cache && echo shared > ~/.cache/m; echo t > /tmp/m", user="fleet"))
    assert _ok(openssh_run(bed, two, "cat ~/.cache/m", user="fleet")) == "shared"
    assert openssh_run(bed, two, "test -e /tmp/m").returncode == 1


def test_hosts_resolve_and_reach_each_other_by_name(testbed):
    one, two = testbed.hosts[:2]
    assert testbed.run(one, ["getent", "hosts", two.name]).stdout.split() == [two.address, two.name]
    probe = f"import socket; print(socket.create_connection(({two.name!r}, 22), 5).recv(4))"
    assert testbed.run(one, ["/usr/bin/python3", "-c", probe]).stdout.strip() == "b'SSH-'"


def test_run_as_user_and_failure(testbed):
    host = testbed.hosts[2]
    assert testbed.run(host, ["id", "-un"], user="fleet").stdout.strip() == "fleet"
    assert testbed.run(host, "hostname").stdout.strip() == host.name
    with pytest.raises(subprocess.CalledProcessError):
        testbed.run(host, ["false"])
    assert testbed.run(host, ["false"], check=False).returncode == 1


def test_client_files(testbed):
    names = [h.name for h in testbed.hosts]
    assert testbed.hosts_file.read_text().split() == names
    inventory = testbed.inventory.read_text()
    assert "[all]" in inventory and "[odd]\nnode01\nnode03" in inventory and "[even]\nnode02\nnode04" in inventory
    config = testbed.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in config and f"HostName {testbed.hosts[0].address}" in config
    assert os.stat(testbed.state_dir).st_mode & 0o777 == 0o700
    assert json.loads((testbed.state_dir / "state.json").read_text())["n"] == len(names)


def test_ansible_uses_the_inventory_as_written(testbed, tmp_path):
    """The inventory sets ansible_host and passes -F ssh_config: real Ansible must connect with the testbed's
    key and known_hosts, host keys checked (an address that matched no Host block used to fail that)."""
    env = {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",  # no ControlPersist master left behind
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),  # empty: nothing from the machine's own config
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
    }
    (tmp_path / "ansible.cfg").write_text("")
    ansible = Path(sys.executable).with_name("ansible")
    proc = subprocess.run(
        [str(ansible), "-i", str(testbed.inventory), "odd", "-m", "ping", "-o", "--limit", "node01,node03"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == 2 and '"ping": "pong"' in proc.stdout, proc.stdout


def test_ssh_options(testbed):
    opts = testbed.ssh_options(user="fleet")
    assert isinstance(opts, SshOptions)
    assert opts.ssh_config == str(testbed.ssh_config) and opts.known_hosts == str(testbed.known_hosts)
    assert opts.identity_files == (str(testbed.client_key),)
    assert (opts.allow_agent, opts.look_for_keys, opts.user) == (False, False, "fleet")


def test_link_down_then_up(fresh_testbed):
    bed = fresh_testbed(2)
    one, two = bed.hosts
    bed.link_down(one)
    try:
        proc = openssh_run(bed, one, "true", extra=UNREACHABLE)
        assert proc.returncode == 255 and "timed out" in proc.stderr
        assert _ok(openssh_run(bed, two, "hostname")) == two.name
    finally:
        bed.link_up(one)
    assert _ok(openssh_run(bed, one, "hostname")) == one.name


def test_kill_and_start_sshd(fresh_testbed):
    bed = fresh_testbed(1)
    (host,) = bed.hosts
    bed.kill_sshd(host)
    assert bed.sshd_pid(host) is None and not bed.answers(host)
    proc = openssh_run(bed, host, "true", extra=UNREACHABLE)
    assert proc.returncode == 255 and "refused" in proc.stderr
    # run() still works without sshd, in an identical fresh set of namespaces.
    assert bed.run(host, "hostname").stdout.strip() == host.name
    bed.start_sshd(host)
    assert bed.answers(host)
    assert _ok(openssh_run(bed, host, "hostname")) == host.name


def test_regenerate_host_key_breaks_strict_ssh(fresh_testbed):
    bed = fresh_testbed(2)
    one, two = bed.hosts
    bed.regenerate_host_key(one)
    proc = openssh_run(bed, one, "true")
    assert proc.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    assert _ok(openssh_run(bed, two, "hostname")) == two.name


def test_limit_rate_installs_and_clears_tbf(fresh_testbed):
    bed = fresh_testbed(1)
    (host,) = bed.hosts

    def qdiscs() -> str:
        outside = subprocess.run(["tc", "qdisc", "show", "dev", host.veth], capture_output=True, text=True)
        return outside.stdout + bed.run(host, ["tc", "qdisc", "show", "dev", "eth0"]).stdout

    bed.limit_rate(host, "1mbit")
    assert qdiscs().count("tbf") == 2 and "rate 1Mbit" in qdiscs()
    assert _ok(openssh_run(bed, host, "head -c 20000 /dev/zero | wc -c")) == "20000"
    bed.clear_rate(host)
    assert "tbf" not in qdiscs()


def test_leftovers_reports_stray_process_and_session_entry(testbed):
    host = testbed.hosts[3]
    assert testbed.leftovers(host) == []
    testbed.run(host, "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
    session = testbed.session_dirs(host)["fleet"] / "leftover-test"
    session.mkdir(parents=True)
    try:
        # The shell returns once it has forked; until the child has exec'd sleep, its cmdline can read empty.
        deadline = time.monotonic() + 10
        left = testbed.leftovers(host)
        while not any("sleep 300" in item for item in left):
            assert time.monotonic() < deadline, left
            time.sleep(0.05)
            left = testbed.leftovers(host)
        assert any(str(session) in item for item in left), left
        assert testbed.leftovers(testbed.hosts[4]) == []
    finally:
        testbed.clean([host])
    assert testbed.wait_clean(timeout=10) == {}


def test_two_testbeds_coexist(fresh_testbed):
    a, b = fresh_testbed(1), fresh_testbed(1)
    assert a.subnet != b.subnet and a.bridge != b.bridge
    assert a.hosts[0].name == b.hosts[0].name == "node01"
    for bed in (a, b):
        assert _ok(openssh_run(bed, "node01", "hostname")) == "node01"
    # Each testbed trusts only its own host keys.
    wrong = ("-o", f"UserKnownHostsFile={b.known_hosts}", "-o", f"HostKeyAlias={b.hosts[0].address}")
    assert openssh_run(a, "node01", "true", extra=wrong).returncode == 255


def test_up_twice_is_refused(fresh_testbed):
    bed = fresh_testbed(1)
    with pytest.raises(UsageError, match="already up"):
        Testbed(bed.name, 1).up()
    assert bed.answers(bed.hosts[0])


def test_down_removes_everything_and_is_idempotent(fresh_testbed):
    bed = fresh_testbed(3)
    pids = [bed.sshd_pid(h) for h in bed.hosts]
    assert None not in pids
    bed.run(bed.hosts[0], "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
    namespaces = {h.netns for h in bed.hosts}
    assert namespaces <= _netns_names()
    Testbed(bed.name).down()  # by name alone, as `sshfleet testbed down` does
    assert not namespaces & _netns_names()
    assert not any(_running(pid) for pid in pids)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {bed.name}-" not in links
    assert not bed.state_dir.exists()
    bed.down()


def _running(pid: int) -> bool:
    """Alive and not a zombie (init reaps killed daemons in its own time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_cli_up_status_down(tmp_path):
    name = f"c{os.getpid() % 10**8}"
    cli = [sys.executable, "-m", "sshfleet", "testbed"]

    def sshfleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, "--name", name], capture_output=True, text=True, timeout=120)

    try:
        up = sshfleet("up", "2")
        assert up.returncode == 0, up.stderr
        assert "node02" in up.stdout and f"/tmp/sshfleet-testbed-{name}/ssh_config" in up.stdout
        status = sshfleet("status")
        assert status.returncode == 0 and status.stdout.count("answers") == 2
        Testbed.load(name).kill_sshd("node02")
        status = sshfleet("status")
        assert status.returncode == 1 and "sshd not running" in status.stdout
    finally:
        down = sshfleet("down")
    assert down.returncode == 0, down.stderr
    assert sshfleet("down").returncode == 0
    assert sshfleet("status").returncode == 1


def test_leftover_check_fails_the_test_that_leaves_a_process(tmp_path):
    """The suite's teardown proof must be able to fail: run a test that leaves a process behind."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    testbed: real sshd\n")
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_dirty.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.testbed
            def test_dirty(fresh_testbed):
                bed = fresh_testbed(1)
                open(NAME_FILE, "w").write(bed.name)
                bed.run("node01", "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
            """
        ).replace("NAME_FILE", repr(str(tmp_path / "name")))
    )
    env = {**os.environ, "PYTHONPATH": str(root), "SSHFLEET_TEST_LEFTOVER_TIMEOUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_dirty.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout and "node01" in proc.stdout and "sleep 300" in proc.stdout
    name = (tmp_path / "name").read_text()
    assert not any(ns.startswith(f"{name}-") for ns in _netns_names())


def _start_inner_run(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """A pytest run holding the session testbed; returns it once the testbed is up, with the testbed's name."""
    root = Path(__file__).resolve().parents[2]
    name_file = tmp_path / "name"
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    testbed: real sshd\n")
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_hold.py").write_text(
        textwrap.dedent(
            """
            import time

            def test_hold(testbed):
                open(NAME_FILE, "w").write(testbed.name)
                time.sleep(120)
            """
        ).replace("NAME_FILE", repr(str(name_file)))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hold.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (name_file.exists() and name_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"inner pytest did not bring its testbed up: {proc.communicate()[0]}")
        time.sleep(0.05)
    return proc, name_file.read_text()


def test_sigterm_during_a_run_takes_its_testbed_down(tmp_path):
    proc, name = _start_inner_run(tmp_path)
    assert any(ns.startswith(f"{name}-") for ns in _netns_names())
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert not any(ns.startswith(f"{name}-") for ns in _netns_names()), output
    assert not Path(f"/tmp/sshfleet-testbed-{name}").exists(), output


def test_testbed_of_a_killed_run_is_reaped_by_the_next(tmp_path):
    from tests.conftest import _reap_orphans

    proc, name = _start_inner_run(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert any(ns.startswith(f"{name}-") for ns in _netns_names())  # SIGKILL leaves it behind...
    _reap_orphans()  # ...until the next run's session fixture starts
    assert not any(ns.startswith(f"{name}-") for ns in _netns_names())
    assert not Path(f"/tmp/sshfleet-testbed-{name}").exists()
