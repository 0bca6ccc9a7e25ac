"""put / get / sync against real sshd hosts, over both transports.

Contents are compared by sha256 computed on the hosts themselves (``sha256sum`` through ``testbed.run``, not
through sshfleet); "nothing sent" is proven by the remote files' inode numbers, which an atomic rewrite changes.
Each host's /tmp is private to it, so every test works under /tmp and removes what it made.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshfleet import Fleet, HostError, Timeouts, UsageError
from sshfleet._files import PART_SUFFIX
from sshfleet.errors import ChannelError

pytestmark = pytest.mark.testbed
TRANSPORTS = ["paramiko", "openssh"]
MB = 1 << 20


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MB):
            digest.update(chunk)
    return digest.hexdigest()


def remote_sha(bed, host: str, path: str) -> str:
    return bed.run(host, ["sha256sum", path]).stdout.split()[0]


def remote_run(bed, hosts: list[str], command: str) -> None:
    for host in hosts:
        bed.run(host, command)


def parts_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(PART_SUFFIX)]


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size // MB):
            f.write(os.urandom(MB))
        f.write(os.urandom(size % MB))
    return path


@pytest.fixture
def hosts(testbed) -> Iterator[list[str]]:
    """The 8 hosts' names; /tmp/ft is removed from each afterwards."""
    names = [h.name for h in testbed.hosts]
    yield names
    remote_run(testbed, names, "rm -rf /tmp/ft")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_file_and_tree_from_8_hosts_lands_as_dir_host(testbed, hosts, tmp_path, transport):
    # Every host gets different content, so a copy filed under the wrong host would not match.
    remote_run(
        testbed,
        hosts,
        "mkdir -p /tmp/ft/tree/sub && head -c 300000 /dev/urandom > /tmp/ft/tree/a.bin && chmod 640 "
        "/tmp/ft/tree/a.bin && hostname > /tmp/ft/tree/sub/name.txt && ln -s a.bin /tmp/ft/tree/link && "
        "chmod 750 /tmp/ft/tree/sub",
    )
    with Fleet(hosts, ssh_options=testbed.ssh_options(), transport=transport) as fleet:
        single = fleet.get("/tmp/ft/tree/a.bin", tmp_path / "one")
        tree = fleet.get("/tmp/ft/tree", tmp_path / "tree")
    assert single.success(), single.status()
    assert tree.success(), tree.status()
    for host in hosts:
        copy = tmp_path / "one" / host / "a.bin"
        assert single[host].paths == [str(copy)]
        assert single[host].bytes == 300000 and single[host].files == 1
        assert sha(copy) == remote_sha(testbed, host, "/tmp/ft/tree/a.bin")
        assert stat.S_IMODE(copy.stat().st_mode) == 0o640
        root = tmp_path / "tree" / host / "tree"
        assert sha(root / "a.bin") == remote_sha(testbed, host, "/tmp/ft/tree/a.bin")
        assert (root / "sub" / "name.txt").read_text() == f"{host}\n"
        assert stat.S_IMODE((root / "sub").stat().st_mode) == 0o750
        assert os.readlink(root / "link") == "a.bin"
        assert tree[host].files == 2
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == sorted(hosts)
    assert parts_under(tmp_path) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_put_100mb_to_8_hosts_verified_on_each(testbed, hosts, tmp_path, transport):
    source = random_file(tmp_path / "big.bin", 100 * MB)
    os.chmod(source, 0o604)
    remote_run(testbed, hosts, "mkdir -p /tmp/ft")
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def progress(host: str, done: int, total: int) -> None:
        with lock:
            seen[host] = done
        assert total == 100 * MB

    with Fleet(hosts, ssh_options=testbed.ssh_options(), transport=transport) as fleet:
        responses = fleet.put(source, "/tmp/ft/", on_progress=progress)
    assert responses.success(), responses.status()
    want = sha(source)
    for host in hosts:
        assert responses[host].paths == ["/tmp/ft/big.bin"]
        assert responses[host].bytes == 100 * MB
        assert remote_sha(testbed, host, "/tmp/ft/big.bin") == want
        assert testbed.run(host, ["stat", "-c", "%a", "/tmp/ft/big.bin"]).stdout.strip() == "604"
        assert testbed.run(host, "ls -A /tmp/ft").stdout.split() == ["big.bin"]  # no temporary file left
    assert seen == {host: 100 * MB for host in hosts}


def test_put_tree_keeps_layout_modes_and_links_and_mode_overrides(testbed, hosts, tmp_path):
    src = tmp_path / "conf"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "d" / "b.txt").write_text("beta\n")
    os.chmod(src / "d", 0o710)
    (src / "l").symlink_to("a.txt")
    two = hosts[:2]
    remote_run(testbed, two, "mkdir -p /tmp/ft")
    with Fleet(two, ssh_options=testbed.ssh_options()) as fleet:
        tree = fleet.put(src, "/tmp/ft/copy")
        forced = fleet.put(src / "a.txt", "/tmp/ft/secret.txt", mode=0o600)
    assert tree.success() and forced.success(), tree.status() + forced.status()
    for host in two:
        listing = testbed.run(host, "cd /tmp/ft/copy && find . | sort").stdout.split()
        assert listing == [".", "./a.txt", "./d", "./d/b.txt", "./l"]
        assert testbed.run(host, "cat /tmp/ft/copy/d/b.txt").stdout == "beta\n"
        assert testbed.run(host, "stat -c %a /tmp/ft/copy/d").stdout.strip() == "710"
        assert testbed.run(host, "readlink /tmp/ft/copy/l").stdout.strip() == "a.txt"
        assert testbed.run(host, "stat -c %a /tmp/ft/secret.txt").stdout.strip() == "600"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sync_sends_only_what_changed_and_deletes_on_request(testbed, hosts, tmp_path, transport):
    src = tmp_path / "site"
    (src / "css").mkdir(parents=True)
    for i in range(5):
        (src / f"page{i}.html").write_text(f"page {i}\n" * 100)
    (src / "css" / "main.css").write_text("body {}\n")
    inodes = "cd /tmp/ft/site && find . -type f -printf '%P %i\\n' | sort"
    with Fleet(hosts, ssh_options=testbed.ssh_options(), transport=transport) as fleet:
        remote_run(testbed, hosts, "mkdir -p /tmp/ft")
        first = fleet.sync(src, "/tmp/ft/site")
        before = {h: testbed.run(h, inodes).stdout for h in hosts}
        second = fleet.sync(src, "/tmp/ft/site")
        after = {h: testbed.run(h, inodes).stdout for h in hosts}
        (src / "page3.html").write_text("changed\n")
        (src / "page4.html").unlink()
        third = fleet.sync(src, "/tmp/ft/site")
        fourth = fleet.sync(src, "/tmp/ft/site", delete=True)
    for r in (first, second, third, fourth):
        assert r.success(), r.status()
    for host in hosts:
        assert (first[host].files, first[host].skipped) == (6, 0)
        assert (second[host].files, second[host].bytes, second[host].skipped) == (0, 0, 6)
        assert after[host] == before[host]  # not one file rewritten
        assert (third[host].files, third[host].bytes, third[host].deleted) == (1, len("changed\n"), 0)
        assert testbed.run(host, "cat /tmp/ft/site/page3.html").stdout == "changed\n"
        assert fourth[host].deleted == 1 and fourth[host].files == 0
        assert testbed.run(host, "ls /tmp/ft/site").stdout.split() == ["css"] + [f"page{i}.html" for i in range(4)]


def test_missing_local_file_is_a_usage_error_naming_it(testbed, tmp_path):
    missing = tmp_path / "nope.txt"
    with Fleet(["node01"], ssh_options=testbed.ssh_options()) as fleet:
        with pytest.raises(UsageError, match=str(missing)):
            fleet.put(missing, "/tmp/")
        with pytest.raises(UsageError, match=f"cannot read {tmp_path / 'nope'}: No such file"):
            fleet.sync(tmp_path / "nope", "/tmp/ft")
        (tmp_path / "file").write_text("x")
        with pytest.raises(UsageError, match=f"{tmp_path / 'file'} is not a directory"):
            fleet.sync(tmp_path / "file", "/tmp/ft")
        assert fleet.state("node01") == "disconnected"  # nothing went on the network


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_remote_paths_that_are_not_what_was_expected_fail_that_host_only(testbed, hosts, tmp_path, transport):
    three = hosts[:3]
    remote_run(testbed, three, "mkdir -p /tmp/ft")
    testbed.run(three[0], "mkdir -p /tmp/ft/f.txt/inside && echo keep > /tmp/ft/f.txt/inside/x")
    local = tmp_path / "f.txt"
    local.write_text("new\n")
    with Fleet(three, ssh_options=testbed.ssh_options(), transport=transport) as fleet:
        responses = fleet.put(local, "/tmp/ft/f.txt/inside/x/")
        missing = fleet.get("/tmp/ft/absent.log", tmp_path / "got")
    error = responses[three[0]]
    assert isinstance(error, ChannelError) and "/tmp/ft/f.txt/inside/x/" in error.message
    assert "not a directory" in error.message
    assert testbed.run(three[0], "cat /tmp/ft/f.txt/inside/x").stdout == "keep\n"
    for host in three[1:]:
        assert "no such directory: /tmp/ft/f.txt/inside/x/" in responses[host].message
    for host in three:
        assert isinstance(missing[host], ChannelError)
        assert missing[host].message == "no such file or directory: /tmp/ft/absent.log"


def test_put_over_a_remote_directory_is_refused_naming_it(testbed, hosts, tmp_path):
    remote_run(testbed, hosts[:2], "mkdir -p /tmp/ft")
    testbed.run(hosts[0], "mkdir -p /tmp/ft/dest/f.txt")
    local = tmp_path / "f.txt"
    local.write_text("x\n")
    with Fleet(hosts[:2], ssh_options=testbed.ssh_options()) as fleet:
        testbed.run(hosts[1], "mkdir -p /tmp/ft/dest")
        responses = fleet.put(local, "/tmp/ft/dest/")
    error = responses[hosts[0]]
    assert isinstance(error, ChannelError)
    assert error.message == "/tmp/ft/dest/f.txt is a directory on the host; a file was expected there"
    assert responses.ok(hosts[1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_permission_errors_name_the_path(testbed, tmp_path, transport):
    local = tmp_path / "f.txt"
    local.write_text("x\n")
    with Fleet(["node01", "node02"], ssh_options=testbed.ssh_options("fleet"), transport=transport) as fleet:
        put = fleet.put(local, "/etc/sshfleet-denied.txt")
        got = fleet.get("/root/.profile", tmp_path / "got")
    for host in ("node01", "node02"):
        assert isinstance(put[host], ChannelError)
        assert "/etc/.sshfleet-denied.txt." in put[host].message and "permission denied" in put[host].message
        assert isinstance(got[host], ChannelError)
        assert "/root/.profile" in got[host].message and "permission denied" in got[host].message
    assert not os.path.exists("/etc/sshfleet-denied.txt")
    assert parts_under(tmp_path) == []


def test_no_space_left_fails_that_host_and_leaves_nothing(testbed, hosts, tmp_path):
    """A 1 MiB tmpfs mounted in node01's mount namespace: writing 3 MiB there fails with the path named."""
    two = hosts[:2]
    remote_run(testbed, two, "mkdir -p /tmp/ft/full")
    testbed.run(two[0], "mount -t tmpfs -o size=1m sshfleet-full /tmp/ft/full")
    try:
        source = random_file(tmp_path / "big.bin", 3 * MB)
        with Fleet(two, ssh_options=testbed.ssh_options()) as fleet:
            responses = fleet.put(source, "/tmp/ft/full/")
        error = responses[two[0]]
        assert isinstance(error, ChannelError), responses.status()
        assert "/tmp/ft/full/.big.bin." in error.message and "no space left" in error.message
        assert testbed.run(two[0], "ls -A /tmp/ft/full").stdout == ""  # neither the file nor its temporary
        assert remote_sha(testbed, two[1], "/tmp/ft/full/big.bin") == sha(source)
    finally:
        testbed.run(two[0], "umount /tmp/ft/full", check=False)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_link_cut_mid_get_fails_that_host_by_its_deadline_others_complete(testbed, hosts, tmp_path, transport):
    four = hosts[:4]
    cut = four[0]
    remote_run(testbed, four, "mkdir -p /tmp/ft && head -c 20971520 /dev/urandom > /tmp/ft/big.bin")
    testbed.limit_rate(cut, rate="8mbit")
    started = threading.Event()

    def progress(host: str, done: int, total: int) -> None:
        if host == cut and done >= MB and not started.is_set():
            started.set()
            testbed.link_down(cut)

    try:
        with Fleet(four, ssh_options=testbed.ssh_options(), transport=transport, timeouts=Timeouts(call=3)) as fleet:
            responses = fleet.get("/tmp/ft/big.bin", tmp_path, on_progress=progress)
            testbed.link_up(cut)
    finally:
        testbed.link_up(cut)
        testbed.clear_rate(cut)
    assert started.is_set()
    error = responses[cut]
    assert isinstance(error, ChannelError), responses.status()
    assert "/tmp/ft/big.bin" in error.message and "no reply from the host for 3s" in error.message
    assert not (tmp_path / cut / "big.bin").exists()
    assert parts_under(tmp_path) == []
    for host in four[1:]:
        assert sha(tmp_path / host / "big.bin") == remote_sha(testbed, host, "/tmp/ft/big.bin")


def test_link_cut_mid_put_keeps_the_old_file_under_its_name(testbed, hosts, tmp_path):
    two = hosts[:2]
    cut = two[0]
    remote_run(testbed, two, "mkdir -p /tmp/ft && echo old > /tmp/ft/big.bin")
    source = random_file(tmp_path / "big.bin", 20 * MB)
    testbed.limit_rate(cut, rate="8mbit")
    started = threading.Event()

    def progress(host: str, done: int, total: int) -> None:
        if host == cut and done >= 4 * MB and not started.is_set():
            started.set()
            testbed.link_down(cut)

    try:
        with Fleet(two, ssh_options=testbed.ssh_options(), timeouts=Timeouts(call=3)) as fleet:
            responses = fleet.put(source, "/tmp/ft/big.bin", timeout=30, on_progress=progress)
            testbed.link_up(cut)
    finally:
        testbed.link_up(cut)
        testbed.clear_rate(cut)
    assert started.is_set()
    assert isinstance(responses[cut], HostError), responses.status()
    assert testbed.run(cut, "cat /tmp/ft/big.bin").stdout == "old\n"
    assert remote_sha(testbed, two[1], "/tmp/ft/big.bin") == sha(source)


def test_get_glob_and_fetch_from_session_directories(testbed, hosts, tmp_path):
    from sshfleet._files import fetch

    two = hosts[:2]
    remote_run(testbed, two, "mkdir -p /tmp/ft/s && hostname > /tmp/ft/s/a.pcap && echo x > /tmp/ft/s/b.log")
    with Fleet(two, ssh_options=testbed.ssh_options()) as fleet:
        globbed = fleet.get("/tmp/ft/s/*.pcap", tmp_path / "g")
        fetched = fetch(fleet, {two[0]: "/tmp/ft/s", two[1]: HostError(two[1], "servicer not started")},
                        "*.log", tmp_path / "f")  # fmt: skip
        none = fleet.get("/tmp/ft/s/*.none", tmp_path / "n")
    assert globbed.success(), globbed.status()
    for host in two:
        assert (tmp_path / "g" / host / "a.pcap").read_text() == f"{host}\n"
        assert not (tmp_path / "g" / host / "b.log").exists()
        assert none[host].message == "no match for /tmp/ft/s/*.none"
    assert (tmp_path / "f" / two[0] / "b.log").read_text() == "x\n"
    assert fetched[two[1]].message == "servicer not started"


def test_fetch_collects_what_a_servicer_wrote_into_its_session_directory(testbed, tmp_path):
    """What ``Agent.fetch(remote, local_dir)`` would do: the servicer's own log, read from its session directory
    before the agent closes (the directory goes with the servicer)."""
    from agents.sysinfo import SysinfoAgent
    from sshfleet._files import fetch

    with Fleet(["node01", "node02"], ssh_options=testbed.ssh_options()) as fleet:
        agent = SysinfoAgent(fleet)
        sessions = {h: s.process.session_dir if s.process else s.error for h, s in agent._hosts.items()}
        responses = fetch(fleet, sessions, "servicer.*", tmp_path)
        agent.close()
    assert responses.success(), responses.status()
    for host in ("node01", "node02"):
        assert responses[host].paths == [str(tmp_path / host / "servicer.log")]
        assert (tmp_path / host / "servicer.log").stat().st_size > 0
