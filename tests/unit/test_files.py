"""The pure parts of put/get/sync: local trees, names from hosts, outcomes, deadlines, SFTP error wording and
the CLI's words. Transfers themselves are tested on the testbed (tests/testbed/test_files*.py)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import threading

import pytest

from sshfleet._cli.files import exit_code, split_words
from sshfleet._files import Entry, Transfer, _Job, _run_host, _safe_name, host_dir_name, local_tree
from sshfleet._ssh._sftp import _reason
from sshfleet.errors import ChannelError, ConnectError, HostError, UsageError


def test_local_tree_lists_parents_first_with_modes_links_and_no_specials(tmp_path):
    root = tmp_path / "t"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text("12345")
    (root / "b" / "c.txt").write_text("x")
    os.chmod(root / "b", 0o750)
    (root / "link").symlink_to("a.txt")
    os.mkfifo(root / "fifo")
    tree = local_tree(str(root))
    assert [(e.rel, e.kind) for e in tree] == [
        ("", "dir"),
        ("a.txt", "file"),
        ("b", "dir"),
        ("b/c.txt", "file"),
        ("link", "link"),
    ]
    assert tree[1].size == 5
    assert tree[2].mode == 0o750
    assert tree[4].target == "a.txt"


def test_local_tree_of_a_file_and_of_nothing(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    os.utime(path, (1_700_000_000.7, 1_700_000_000.7))
    assert local_tree(str(path)) == [Entry("", "file", 3, local_tree(str(path))[0].mode, 1_700_000_000)]
    with pytest.raises(UsageError, match=f"cannot read {tmp_path / 'missing'}: No such file"):
        local_tree(str(tmp_path / "missing"))


@pytest.mark.parametrize(("host", "name"), [("node01", "node01"), ("a/b", "a_b"), ("..", "_"), ("", "_")])
def test_host_dir_name_stays_one_path_component(host, name):
    assert host_dir_name(host) == name


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "x\0y"])
def test_names_a_host_lists_cannot_climb_out(name):
    with pytest.raises(ChannelError, match="unusable name"):
        _safe_name(name, "h1", "/tmp")
    assert _safe_name("ok.txt", "h1", "/tmp") == "ok.txt"


def test_transfer_reads_as_attributes_and_dumps_as_json():
    outcome = Transfer(files=2, bytes=10, seconds=0.5, paths=["/a", "/b"], skipped=1, deleted=0)
    assert (outcome.files, outcome.bytes, outcome.seconds, outcome.paths, outcome.skipped) == (
        2,
        10,
        0.5,
        ["/a", "/b"],
        1,
    )
    assert json.loads(json.dumps(outcome))["paths"] == ["/a", "/b"]
    assert Transfer(files=0, bytes=0, seconds=0, paths=[]).deleted == 0


def test_a_stuck_host_is_reported_at_its_deadline_and_its_partial_file_removed(tmp_path):
    part = tmp_path / ".f.part"
    release = threading.Event()
    job = _Job("h1", 0, None)

    def stuck() -> Transfer:
        part.write_bytes(b"half")
        job.add_part(str(part))
        release.wait(10)  # a worker blocked on a dead link
        job.check()
        return Transfer(files=1, bytes=4, seconds=0, paths=[])

    job.current = "/data/big.bin"
    try:
        outcome = _run_host("h1", 0.2, job, stuck)
    finally:
        release.set()
    assert isinstance(outcome, ChannelError)
    assert outcome.message.startswith("the transfer did not finish within 0.2s (at /data/big.bin)")
    assert not part.exists()


def test_a_bug_costs_one_host_not_the_call():
    def broken() -> Transfer:
        raise KeyError("oops")

    outcome = _run_host("h1", None, _Job("h1", 0, None), broken)
    assert isinstance(outcome, ChannelError) and "KeyError" in outcome.message


@pytest.mark.parametrize(
    ("exc", "writing", "words"),
    [
        (OSError(errno.ENOENT, "No such file"), False, "no such file or directory"),
        (OSError(errno.EACCES, "Permission denied"), False, "permission denied"),
        (OSError("Failure"), True, "the server refused: Failure (no space left on the device or a quota"),
        (OSError("Failure"), False, "the server refused: Failure"),
        (socket.timeout(), False, "no reply from the host for 7s"),
        (EOFError(), False, "connection lost"),
    ],
)
def test_sftp_failures_read_as_their_reason(exc, writing, words):
    reason = _reason(exc, 7, writing)
    assert reason.startswith(words)
    if not writing:
        assert "no space" not in reason


def _args(*words: str, inventory: str | None = None, command: str = "put") -> argparse.Namespace:
    return argparse.Namespace(words=list(words), inventory=inventory, files_command=command)


def test_cli_words_pattern_only_with_an_inventory():
    assert split_words(_args("a", "b")) == (None, "a", "b")
    assert split_words(_args("web", "a", "b", inventory="inv")) == ("web", "a", "b")
    with pytest.raises(UsageError, match="a PATTERN needs -i INVENTORY"):
        split_words(_args("web", "a", "b"))
    with pytest.raises(UsageError, match="give REMOTE LOCAL_DIR"):
        split_words(_args("a", command="get"))


def test_cli_exit_code_unreachable_wins_over_failed():
    ok = Transfer(files=1, bytes=1, seconds=0, paths=[])
    assert exit_code({"a": ok}) == 0
    assert exit_code({"a": ok, "b": HostError("b", "x")}) == 1
    assert exit_code({"a": ConnectError("a", "down"), "b": HostError("b", "x")}) == 3
