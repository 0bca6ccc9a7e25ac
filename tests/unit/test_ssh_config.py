"""The SSH seam's pure parts: settings merge, known_hosts matching, accept-new bookkeeping. No network."""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from sshfleet._fleet import Fleet
from sshfleet._options import HostSpec, SshOptions, Timeouts
from sshfleet._ssh import _known_hosts as kh
from sshfleet._ssh import _sshg, connect, resolve
from sshfleet.errors import ConnectError, UsageError


@pytest.fixture(autouse=True, params=["ssh -G", "python"])
def reader(request, monkeypatch):
    """Every test runs twice: ssh_config read by ``ssh -G``, then by the Python reading used without it."""
    if request.param == "python":
        monkeypatch.setattr(_sshg, "SSH_BINARY", "")
    elif shutil.which("ssh") is None:
        if os.environ.get("CI"):
            pytest.fail("the OpenSSH client is required in CI")
        pytest.skip("the OpenSSH client is not installed")
    return request.param


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home directory, so the developer's own ~/.ssh never leaks into a test."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return str(path)


def opts(config: str | None = None, **changes) -> SshOptions:
    return SshOptions(ssh_config=config, **changes)


# --- merge order -----------------------------------------------------------------------------------------


def test_defaults_without_ssh_config(home):
    host = resolve(HostSpec("web1"), opts())
    assert (host.name, host.hostname, host.port, host.user) == ("web1", "web1", 22, getpass.getuser())
    assert host.identity_files == ()
    assert host.proxy_jump == ()
    assert host.host_key_policy == "strict"
    assert host.known_hosts_files[0] == str(home / ".ssh/known_hosts")
    assert host.known_hosts_write == str(home / ".ssh/known_hosts")
    assert (host.connect_timeout, host.auth_timeout, host.keepalive) == (10.0, 20.0, 5.0)


def test_missing_ssh_config_file_is_not_an_error(home, tmp_path):
    host = resolve(HostSpec("web1"), opts(str(tmp_path / "nope")))
    assert host.hostname == "web1"


def test_ssh_config_values_are_used(home, tmp_path):
    config = write_config(
        tmp_path,
        "Host web*\n  HostName 10.1.2.3\n  User deploy\n  Port 2222\n  IdentityFile ~/.ssh/web_key\n"
        "Host *\n  IdentityFile ~/.ssh/any_key\n",
    )
    host = resolve(HostSpec("web1"), opts(config))
    assert (host.hostname, host.port, host.user) == ("10.1.2.3", 2222, "deploy")
    assert host.identity_files == (str(home / ".ssh/web_key"), str(home / ".ssh/any_key"))


def test_inventory_beats_ssh_config_and_options_beat_inventory(home, tmp_path):
    config = write_config(tmp_path, "Host web1\n  HostName 10.1.2.3\n  User deploy\n  Port 2222\n")
    spec = HostSpec("web1", hostname="192.0.2.7", port=2200, user="inv")
    host = resolve(spec, opts(config))
    assert (host.hostname, host.port, host.user) == ("192.0.2.7", 2200, "inv")
    host = resolve(spec, opts(config, user="cli", port=22))
    assert (host.hostname, host.port, host.user) == ("192.0.2.7", 22, "cli")


def test_identity_files_accumulate_explicit_first(home, tmp_path):
    config = write_config(tmp_path, "Host *\n  IdentityFile ~/.ssh/from_config\n")
    spec = HostSpec("web1", identity_file="~/.ssh/from_inventory")
    host = resolve(spec, opts(config, identity_files=("~/.ssh/from_options", "~/.ssh/from_config")))
    names = [os.path.basename(p) for p in host.identity_files]
    assert names == ["from_options", "from_config", "from_inventory"]


def test_default_identities_only_when_none_named(home, tmp_path):
    (home / ".ssh/id_ed25519").write_text("x")
    (home / ".ssh/id_rsa").write_text("x")
    host = resolve(HostSpec("web1"), opts())
    assert host.identity_files == (str(home / ".ssh/id_ed25519"), str(home / ".ssh/id_rsa"))
    assert resolve(HostSpec("web1"), opts(look_for_keys=False)).identity_files == ()
    named = resolve(HostSpec("web1", identity_file="/k"), opts())
    assert named.identity_files == ("/k",)


def test_identities_only(home, tmp_path):
    config = write_config(tmp_path, "Host a\n  IdentitiesOnly yes\n")
    assert resolve(HostSpec("a"), opts(config)).identities_only is True
    assert resolve(HostSpec("b"), opts(config)).identities_only is False


def test_connect_timeout_and_keepalive_from_ssh_config_unless_explicit(home, tmp_path):
    config = write_config(tmp_path, "Host *\n  ConnectTimeout 3\n  ServerAliveInterval 7\n  ServerAliveCountMax 5\n")
    host = resolve(HostSpec("a"), opts(config))
    assert (host.connect_timeout, host.keepalive, host.keepalive_count_max) == (3.0, 7.0, 5)
    explicit = opts(config, timeouts=Timeouts(connect=4.5), keepalive=30.0)
    host = resolve(HostSpec("a"), explicit)
    assert (host.connect_timeout, host.keepalive) == (4.5, 30.0)


def test_an_explicit_value_equal_to_the_default_still_wins_over_ssh_config(home, tmp_path):
    config = write_config(tmp_path, "Host *\n  ConnectTimeout 3\n  ServerAliveInterval 60\n")
    defaults = SshOptions()
    assert (defaults.timeouts.connect, defaults.keepalive) == (10.0, 5.0)
    explicit = opts(config, timeouts=Timeouts(connect=10.0), keepalive=5)
    host = resolve(HostSpec("a"), explicit)
    assert (host.connect_timeout, host.keepalive) == (10.0, 5.0)
    # Overriding one timeout leaves the others "not given", so ssh_config still applies to them.
    partly = opts(config, timeouts=Timeouts(call=5))
    host = resolve(HostSpec("a"), partly)
    assert (host.connect_timeout, host.keepalive) == (3.0, 60.0)
    assert Timeouts(call=5).over(Timeouts(connect=4.0, call=9)) == Timeouts(connect=4.0, call=5)


def test_known_hosts_files(home, tmp_path):
    config = write_config(
        tmp_path,
        "Host a\n  UserKnownHostsFile /dev/null ~/kh2\n  GlobalKnownHostsFile /etc/g\n"
        "Host b\n  UserKnownHostsFile ~/kh3\n",
    )
    host = resolve(HostSpec("a"), opts(config))
    assert host.known_hosts_files == ("/dev/null", str(home / "kh2"), "/etc/g")
    assert host.known_hosts_write == str(home / "kh2")
    host = resolve(HostSpec("a"), opts(config, known_hosts="~/explicit"))
    assert host.known_hosts_files == (str(home / "explicit"),)
    assert resolve(HostSpec("b"), opts(config)).known_hosts_write == str(home / "kh3")


@pytest.mark.parametrize(
    ("value", "explicit", "expected"),
    [
        ("yes", "strict", "strict"),
        ("ask", "strict", "strict"),
        ("accept-new", "strict", "accept-new"),
        ("no", "strict", "strict"),
        ("off", "strict", "strict"),
        ("yes", "accept-new", "accept-new"),
        ("no", "accept-new", "accept-new"),
    ],
)
def test_strict_host_key_checking(home, tmp_path, value, explicit, expected):
    config = write_config(tmp_path, f"Host *\n  StrictHostKeyChecking {value}\n")
    assert resolve(HostSpec("a"), opts(config, host_key_policy=explicit)).host_key_policy == expected


def test_strict_host_key_checking_no_warns(home, tmp_path, caplog):
    config = write_config(tmp_path, "Host *\n  StrictHostKeyChecking no\n")
    with caplog.at_level(logging.WARNING, logger="sshfleet.ssh"):
        resolve(HostSpec("a"), opts(config))
    assert "StrictHostKeyChecking no is not honoured" in caplog.text


def test_proxy_jump_hops_resolved_through_ssh_config(home, tmp_path):
    config = write_config(
        tmp_path,
        "Host target\n  ProxyJump ops@bastion:2200,inner\n  User tuser\n"
        "Host bastion\n  HostName 10.0.0.1\n  IdentityFile ~/.ssh/bastion_key\n"
        "Host inner\n  HostName 10.0.0.2\n  User iuser\n  ProxyJump elsewhere\n",
    )
    host = resolve(HostSpec("target"), opts(config, user="cli", identity_files=("~/.ssh/fleet",)))
    assert host.user == "cli"
    first, second = host.proxy_jump
    assert (first.name, first.hostname, first.port, first.user) == ("bastion", "10.0.0.1", 2200, "ops")
    assert [os.path.basename(p) for p in first.identity_files] == ["fleet", "bastion_key"]
    assert (second.hostname, second.port, second.user) == ("10.0.0.2", 22, "iuser")
    assert second.proxy_jump == ()  # a hop's own ProxyJump is ignored


def test_proxy_jump_none_and_bad_values(home, tmp_path):
    config = write_config(tmp_path, "Host a\n  ProxyJump none\nHost b\n  ProxyJump ok,bad:0\n")
    with pytest.raises(UsageError, match="line 4: Invalid ProxyJump"):
        resolve(HostSpec("a"), opts(config))  # ssh checks every line, the inactive ones too
    config = write_config(tmp_path, "Host a\n  ProxyJump none\nHost b\n  ProxyJump ok,bad host\n")
    assert resolve(HostSpec("a"), opts(config)).proxy_jump == ()
    # ssh reads the first word only: "host" is ignored.
    assert [hop.name for hop in resolve(HostSpec("b"), opts(config)).proxy_jump] == ["ok", "bad"]
    with pytest.raises(UsageError, match="line 4: Invalid ProxyJump"):
        resolve(HostSpec("b"), opts(write_config(tmp_path, "Host b\n\n\n  ProxyJump ok,,bad\n")))


def test_unusable_ssh_config_values(home, tmp_path):
    config = write_config(tmp_path, "Host a\n  Port abc\n")
    with pytest.raises(UsageError, match="line 2: Bad port 'abc'"):
        resolve(HostSpec("a"), opts(config))
    config = write_config(tmp_path, "Host b\n  ProxyCommand nc %h %p\n")
    with pytest.raises(UsageError, match="ProxyCommand is not supported"):
        resolve(HostSpec("b"), opts(config))


def test_host_key_names(home, tmp_path):
    config = write_config(tmp_path, "Host a\n  HostName 10.0.0.1\nHost b\n  HostKeyAlias shared\n  Port 2222\n")
    assert resolve(HostSpec("a"), opts(config)).host_key_names == ("10.0.0.1", "a")
    assert resolve(HostSpec("a", port=2222), opts(config)).host_key_names == ("[10.0.0.1]:2222", "[a]:2222")
    assert resolve(HostSpec("c"), opts(config)).host_key_names == ("c",)
    assert resolve(HostSpec("b"), opts(config)).host_key_names == ("[shared]:2222",)


def test_connect_reports_unusable_config_as_host_error(home, tmp_path):
    config = write_config(tmp_path, "Host bad\n  ProxyCommand nc %h %p\n")
    with pytest.raises(ConnectError) as info:
        connect(HostSpec("bad"), opts(config))
    assert (info.value.host, info.value.phase) == ("bad", "config")


def test_fleet_connect_never_raises_for_host_failures(home, tmp_path):
    config = write_config(tmp_path, "Host bad*\n  ProxyCommand nc %h %p\n")
    specs = [HostSpec(f"bad{i}") for i in range(5)]
    with Fleet(specs, ssh_options=opts(config, forks=2)) as fleet:
        results = fleet.connect()
        assert [fleet.state(s.name) for s in specs] == ["failed"] * 5
    assert list(results) == [s.name for s in specs]
    assert all(isinstance(r, ConnectError) and r.phase == "config" for r in results.values())


# --- known_hosts -----------------------------------------------------------------------------------------

BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
OTHER = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(1, 33))
B64 = base64.b64encode(BLOB).decode()


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        ("a,b", "b", True),
        ("a,b", "c", False),
        ("[10.0.0.1]:2222", "[10.0.0.1]:2222", True),
        ("10.0.0.1", "[10.0.0.1]:2222", False),
        ("*.lab", "web.lab", True),
        ("*.lab,!db.lab", "db.lab", False),
        ("WEB.lab", "web.LAB", True),
        (hashed("web1"), "web1", True),
        (hashed("web1"), "web2", False),
        (hashed("[web1]:2222"), "[web1]:2222", True),
        ("|1|garbage", "web1", False),
    ],
)
def test_host_matches(patterns, name, expected):
    assert kh.host_matches(patterns, name) is expected


def test_lookup_and_check(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(
        f"# comment\n\nnot a key line\nweb1,10.0.0.1 ssh-ed25519 {B64}\n"
        f"@revoked web2 ssh-ed25519 {B64}\n@cert-authority *.lab ssh-ed25519 {B64}\n"
        f"{hashed('web3')} ssh-ed25519 {base64.b64encode(OTHER).decode()} comment here\n"
    )
    files = [str(tmp_path / "missing"), str(path)]
    found = kh.lookup(files, ["10.0.0.1", "alias"])
    assert [(k.line, k.marker) for k in found] == [(4, "")]
    assert kh.check(found, BLOB).status == "ok"
    changed = kh.check(kh.lookup(files, ["web3"]), BLOB)
    assert changed.status == "changed"
    assert changed.known[0].fingerprint == kh.fingerprint(OTHER)
    assert kh.check(kh.lookup(files, ["web2"]), BLOB).status == "revoked"
    assert kh.check(kh.lookup(files, ["x.lab"]), BLOB).status == "unknown"  # a CA line is not a host key
    assert kh.check(kh.lookup(files, ["nobody"]), BLOB).status == "unknown"


def test_fingerprint_matches_ssh_keygen(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    blob = base64.b64decode((tmp_path / "k.pub").read_text().split()[1])
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(key) + ".pub"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert out.split()[1] == kh.fingerprint(blob)


def test_preferred_algorithms_put_known_types_first():
    known = [
        kh.KnownKey("ssh-rsa", b"", "f", 1),
        kh.KnownKey("ecdsa-sha2-nistp256", b"", "f", 2),
        kh.KnownKey("ssh-ed25519", b"", "f", 3, marker="@revoked"),
    ]
    supported = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
    assert kh.preferred_algorithms(known, supported) == (
        "rsa-sha2-512",
        "rsa-sha2-256",
        "ecdsa-sha2-nistp256",
        "ssh-ed25519",
    )
    assert kh.preferred_algorithms([], supported) == supported


def test_append_if_absent_creates_private_file_once_under_concurrency(tmp_path):
    path = str(tmp_path / "new" / "known_hosts")
    verdicts = []

    def add():
        verdicts.append(kh.append_if_absent(path, ["[h]:2222", "alias"], "[h]:2222", "ssh-ed25519", BLOB))

    threads = [threading.Thread(target=add) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [v.status for v in verdicts] == ["ok"] * 16
    assert Path(path).read_text() == f"[h]:2222 ssh-ed25519 {B64}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    # A different key arriving later for the same host is a change, never appended.
    other = kh.append_if_absent(path, ["[h]:2222"], "[h]:2222", "ssh-ed25519", OTHER)
    assert other.status == "changed"
    assert Path(path).read_text().count("\n") == 1


def test_append_if_absent_keeps_existing_lines(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text("other ssh-ed25519 AAAA")  # no trailing newline
    kh.append_if_absent(str(path), ["h"], "h", "ssh-ed25519", BLOB)
    assert path.read_text() == f"other ssh-ed25519 AAAA\nh ssh-ed25519 {B64}\n"


# --- ssh_config read as ssh reads it (issue 13) --------------------------------------------------------------


def test_include_absolute_glob_relative_and_inside_a_host_block(home, tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-a.conf").write_text("Host a\n  User from_glob\n")
    (tmp_path / "conf.d" / "20-b.conf").write_text("Host b\n  Port 2202\n")
    (home / ".ssh" / "rel.conf").write_text("Port 2203\n")
    config = write_config(
        tmp_path,
        f"Include {tmp_path}/conf.d/*.conf\nHost c\n  Include rel.conf\n  User cuser\nHost d\n  User duser\n",
    )
    assert resolve(HostSpec("a"), opts(config)).user == "from_glob"
    assert resolve(HostSpec("b"), opts(config)).port == 2202
    if reader_is_python():
        # ssh reads "relative to ~/.ssh" from the password database's home, not $HOME: only Python follows HOME.
        assert resolve(HostSpec("c"), opts(config)).port == 2203
    assert resolve(HostSpec("d"), opts(config)).port == 22  # the include applied only inside Host c
    assert resolve(HostSpec("d"), opts(config)).user == "duser"


def reader_is_python() -> bool:
    return _sshg.ssh_binary() is None


def test_tokens_in_identity_file_known_hosts_and_hostname(home, tmp_path):
    config = write_config(
        tmp_path,
        "Host tok\n  HostName %h.example\n  Port 2022\n"
        "  IdentityFile ~/.ssh/id_%r_%h_%p_%n_%%\n  UserKnownHostsFile %d/kh_%r_%h_%p\n",
    )
    host = resolve(HostSpec("tok", user="inv"), opts(config))
    assert host.hostname == "tok.example"
    assert host.identity_files == (str(home / ".ssh/id_inv_tok.example_2022_tok_%"),)
    assert host.known_hosts_files[0] == str(home / "kh_inv_tok.example_2022")
    # %r is the user actually used: the caller's -u beats the inventory's.
    host = resolve(HostSpec("tok", user="inv"), opts(config, user="cli"))
    assert host.identity_files == (str(home / ".ssh/id_cli_tok.example_2022_tok_%"),)


def test_unknown_token_in_hostname_is_an_error(home, tmp_path):
    config = write_config(tmp_path, "Host x\n  HostName %p.example\n")
    with pytest.raises(UsageError, match="%p"):
        resolve(HostSpec("x"), opts(config))


def test_trailing_comments_are_not_values(home, tmp_path):
    config = write_config(tmp_path, 'Host a\n  User tcuser # a comment\n  HostName "a b" #c\n  Port=2200 # c\n')
    host = resolve(HostSpec("a"), opts(config))
    assert (host.user, host.hostname, host.port) == ("tcuser", "a b", 2200)


def test_match_host_sees_only_a_hostname_set_before_it(home, tmp_path):
    config = write_config(
        tmp_path,
        "Match host real.example\n  User early\nHost alias\n  HostName real.example\n"
        "Match host real.example\n  Port 2200\n",
    )
    host = resolve(HostSpec("alias"), opts(config))
    assert (host.hostname, host.user, host.port) == ("real.example", getpass.getuser(), 2200)


def test_host_brackets_are_literal_and_names_are_lowercased(home, tmp_path):
    config = write_config(tmp_path, "Host web[12]\n  User bracket\nHost casehost\n  User lower\n")
    assert resolve(HostSpec("web1"), opts(config)).user == getpass.getuser()
    assert resolve(HostSpec("web[12]"), opts(config)).user == "bracket"
    upper = resolve(HostSpec("CaseHost"), opts(config))
    # Host lines compare the name as written; the name connected to (and looked up in known_hosts) is lowercased.
    assert (upper.user, upper.hostname) == (getpass.getuser(), "casehost")
    assert upper.host_key_names == ("casehost",)


def test_known_hosts2_is_in_the_default_list(home):
    host = resolve(HostSpec("a"), opts())
    assert host.known_hosts_files[:2] == (str(home / ".ssh/known_hosts"), str(home / ".ssh/known_hosts2"))
    assert host.known_hosts_write == str(home / ".ssh/known_hosts")


def test_a_jump_hosts_own_proxy_jump_is_followed_hop_by_hop(home, tmp_path):
    config = write_config(
        tmp_path,
        "Host target\n  ProxyJump j1\nHost j1\n  ProxyJump j2\n  User u1\n"
        "Host j2\n  ProxyJump j3\nHost j3\n  Port 2203\n",
    )
    chain = resolve(HostSpec("target"), opts(config)).proxy_jump
    assert [(hop.name, hop.port) for hop in chain] == [("j3", 2203), ("j2", 22), ("j1", 22)]
    assert chain[2].user == "u1"
    assert all(hop.proxy_jump == () for hop in chain)


def test_a_proxy_jump_loop_is_an_error(home, tmp_path):
    config = write_config(tmp_path, "Host a\n  ProxyJump b\nHost b\n  ProxyJump c\nHost c\n  ProxyJump a\n")
    with pytest.raises(UsageError, match="ProxyJump loop: a -> b -> c -> a"):
        resolve(HostSpec("a"), opts(config))


def test_prefetch_fills_the_cache_for_many_hosts(home, tmp_path, monkeypatch):
    from sshfleet._ssh import _config

    config = write_config(tmp_path, "Host web*\n  User deploy\n")
    specs = [HostSpec(f"web{i}") for i in range(20)]
    _config.prefetch(specs, opts(config))
    calls: list[object] = []
    monkeypatch.setattr(_sshg, "_run", lambda *a: calls.append(a))
    monkeypatch.setattr(_sshg, "emulate", lambda *a: calls.append(a))
    if not reader_is_python():
        assert [resolve(spec, opts(config)).user for spec in specs] == ["deploy"] * 20
        assert calls == []


def test_an_ssh_without_dash_G_counts_as_absent(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'ssh: illegal option -- G' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(_sshg, "SSH_BINARY", None)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(_sshg, "_usable", {})
    assert resolve(HostSpec("a"), opts()).hostname == "a"  # read in Python instead
    assert _sshg.ssh_binary() is None  # and known as absent from its first answer on


def test_proxy_jump_tokens_are_the_destinations_as_ssh_expands_them(home, tmp_path):
    # ssh runs ProxyJump as the ProxyCommand "ssh -l %r -W [%h]:%p HOP" and expands its tokens when it connects.
    config = write_config(tmp_path, "Host t\n  HostName real.example\n  ProxyJump %r@j-%h-%p-%n%%x\n")
    (hop,) = resolve(HostSpec("t", user="bob"), opts(config)).proxy_jump
    assert (hop.name, hop.user) == ("j-real.example-22-t%x", "bob")
    (hop,) = resolve(HostSpec("t", user="bob"), opts(config, user="cli", port=2022)).proxy_jump
    assert (hop.name, hop.user) == ("j-real.example-2022-t%x", "cli")
    with pytest.raises(UsageError, match="unknown token %q"):
        resolve(HostSpec("t"), opts(write_config(tmp_path, "Host t\n  ProxyJump j-%q\n")))
