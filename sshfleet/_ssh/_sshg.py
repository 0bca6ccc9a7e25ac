"""What ``ssh -G`` says about a host: asked of the OpenSSH client when it is installed, read the same way in
Python when it is not.

ssh_config has a grammar full of corners (``Include`` in a ``Host`` block, tokens, ``Match`` evaluated in order
against the HostName set so far, first value wins, trailing ``# comments``, ``Host web[12]`` being a literal), and
a user's file is written for ``ssh``: the surest way to agree with ``ssh`` is to ask it. ``ssh -G`` evaluates the
file without connecting; its answers are cached per (file, mtime, host, user, port), and ``prefetch`` asks for
many hosts at once (256 hosts: 2.0 s one after the other, 1.1 s with ``prefetch`` on a busy 2-core machine; the
Python reading takes 0.13 s).

Without the binary, ``emulate`` follows OpenSSH's readconf.c for the keywords sshfleet uses and prints the same
shape of answer, so both ways feed one resolver; the differential suite holds them to ``ssh -G``'s answers. It
ignores keywords sshfleet does not use, where ssh refuses a misspelt one.
paramiko's SSHConfig is not used: it has no ``Include``, keeps trailing comments in values and reads brackets as
character classes.

One deliberate difference: ``~`` and ``%d`` are ``$HOME`` (Python's rule, the rest of sshfleet's) where ssh uses
the password database; the two agree unless ``$HOME`` is changed.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import pwd
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from sshfleet.errors import UsageError

Answer = dict[str, list[str]]

# None: look the binary up on PATH once. Tests set it to "" to force the Python reading.
SSH_BINARY: Optional[str] = None
DEFAULT_IDENTITY_FILES = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
    "~/.ssh/id_dsa",
)
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
_MAX_INCLUDE_DEPTH = 16
_QUERY_TIMEOUT = 30.0

_cache: dict[tuple[object, ...], Answer] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Query:
    """One ``ssh -G`` question: ``-F config`` (None: ``-F none``), ``-l user``, ``-p port``, ``-o HostName=``,
    ``-J jump`` (a ProxyJump that overrides the host's own, as ssh passes it to the hop before the last)."""

    host: str
    config: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    hostname: Optional[str] = None
    jump: Optional[str] = None

    def argv(self, ssh: str) -> list[str]:
        argv = [ssh, "-G", "-F", self.config or "none"]
        if self.user is not None:
            argv += ["-l", self.user]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.hostname is not None:
            argv += ["-o", f"HostName={self.hostname}"]
        if self.jump is not None:
            argv += ["-J", self.jump]
        return [*argv, "--", self.host]


_usable: dict[str, bool] = {}


def ssh_binary() -> Optional[str]:
    """The OpenSSH client to ask, or None to read the file in Python. An ``ssh`` that cannot answer ``-G``
    (OpenSSH before 6.8, another implementation) counts as absent once its first answer shows it (``_run``):
    no probe process up front, which every `sshfleet run` would pay before its first connection."""
    if SSH_BINARY is not None:
        return SSH_BINARY or None
    path = shutil.which("ssh")
    if path is None:
        return None
    return path if _usable.get(path, True) else None


# What an ssh that has no -G says when asked for it (OpenSSH < 6.8: "illegal option -- G" and its usage).
_NO_DASH_G = re.compile(r"illegal option|unknown option|invalid option|usage: ssh", re.IGNORECASE)


def _stamp(path: Optional[str]) -> object:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _cache_key(query: Query, ssh: Optional[str]) -> tuple[object, ...]:
    return (ssh, query, _stamp(query.config), os.environ.get("HOME"))


def ask(query: Query) -> Answer:
    """The answer to ``query``: from ``ssh -G`` when installed, else from ``emulate``; cached.

    Raises UsageError with ssh's own message (it names the file and line) for a config ssh refuses.
    """
    if query.config is not None and not os.path.exists(query.config):
        query = Query(query.host, None, query.user, query.port, query.hostname, query.jump)
    ssh = ssh_binary()
    key = _cache_key(query, ssh)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    answer = _run(query, ssh) if ssh else emulate(query)
    with _cache_lock:
        _cache[key] = answer
    return answer


def prefetch(queries: Iterable[Query], workers: int = 8) -> None:
    """Ask for many hosts at once (``ssh -G`` is a process each, ~4 ms): fills the cache ``ask`` reads.

    Errors are left for ``ask`` to raise again, per host."""
    todo = list(dict.fromkeys(queries))
    if len(todo) < 2 or not ssh_binary():
        return

    def one(query: Query) -> None:
        try:
            ask(query)
        except UsageError:
            pass

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))), thread_name_prefix="sshfleet-ssh-G") as pool:
        list(pool.map(one, todo))


def _run(query: Query, ssh: str) -> Answer:
    try:
        proc = subprocess.run(
            query.argv(ssh),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_QUERY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run {ssh} -G for {query.host!r}: {exc}") from exc
    unsupported = proc.returncode != 0 and _NO_DASH_G.search(proc.stderr)
    if unsupported or (proc.returncode == 0 and "hostname " not in proc.stdout):
        _usable[ssh] = False  # not an ssh that answers -G: the Python reading, from now on
        return emulate(query)
    if proc.returncode != 0:
        noise = ("terminating,", "Pseudo-terminal will not be allocated")
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not any(n in line for n in noise)]
        why = "; ".join(lines[:3]) or f"exit status {proc.returncode}"
        raise UsageError(f"ssh_config: {why}")  # ssh's own words name the file and the line
    answer: Answer = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key:
            answer.setdefault(key, []).append(value)
    home_pw, home_env = _pw_home(), os.path.expanduser("~")
    if home_pw != home_env:
        for key in ("userknownhostsfile",):
            answer[key] = [_rehome(v, home_pw, home_env) for v in answer.get(key, [])]
    return answer


def _pw_home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def _rehome(value: str, old: str, new: str) -> str:
    return " ".join(new + part[len(old) :] if part.startswith(old + "/") else part for part in value.split(" "))


# --- the Python reading, after OpenSSH 9's readconf.c ----------------------------------------------------------


def split_args(text: str) -> list[str]:
    """OpenSSH's argv_split: whitespace-separated, '' and "" quotes, backslash escapes, and ``#`` at the
    start of an argument ends the line. Raises ValueError for an unclosed quote."""
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        arg: list[str] = []
        quote = ""
        while i < n:
            ch = text[i]
            if ch == "\\" and i + 1 < n and (text[i + 1] in "'\"\\" or (not quote and text[i + 1] == " ")):
                arg.append(text[i + 1])
                i += 2
                continue
            if not quote and ch in " \t":
                break
            if not quote and ch in "'\"":
                quote = ch
            elif quote and ch == quote:
                quote = ""
            else:
                arg.append(ch)
            i += 1
        if quote:
            raise ValueError("invalid quotes")
        args.append("".join(arg))
    return args


def match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` only; ``[`` is a literal character."""
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def match_list(name: str, patterns: str, lower: bool = False) -> bool:
    """A comma list with ``!`` negations: a negated match fails the whole list."""
    if lower:
        name, patterns = name.lower(), patterns.lower()
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if match_pattern(name, pattern[1:] if negated else pattern):
            if negated:
                return False
            matched = True
    return matched


_TOKEN_RE = re.compile(r"%(.)|\$\{([^}]*)\}")


def expand_tokens(text: str, tokens: dict[str, str], path: str = "", allow_env: bool = True) -> str:
    """``%x`` tokens (``%%`` is a percent sign) and ``${ENV}`` as OpenSSH expands them; unknown ones raise."""

    def sub(m: re.Match[str]) -> str:
        if m.group(2) is not None:
            if not allow_env:
                return m.group(0)
            if m.group(2) not in os.environ:
                raise UsageError(f"ssh_config {path}: environment variable ${{{m.group(2)}}} is not set in {text!r}")
            return os.environ[m.group(2)]
        key = m.group(1)
        if key == "%":
            return "%"
        if key not in tokens:
            raise UsageError(f"ssh_config {path}: unknown token %{key} in {text!r}")
        return tokens[key]

    if text.endswith("%") and not text.endswith("%%"):
        raise UsageError(f"ssh_config {path}: lone % at the end of {text!r}")
    return _TOKEN_RE.sub(sub, text)


def client_tokens(*, host_arg: str, hostname: str, port: int, user: str, key_alias: Optional[str]) -> dict[str, str]:
    """The tokens ``ssh`` expands in IdentityFile, CertificateFile, UserKnownHostsFile (OpenSSH 9.2)."""
    import hashlib
    import socket

    this_host = socket.gethostname()
    local_user = getpass.getuser()
    return {
        "C": hashlib.sha1(f"{this_host}{hostname}{port}{user}".encode()).hexdigest(),
        "L": this_host.split(".", 1)[0],
        "i": str(os.getuid()),
        "k": key_alias or host_arg,
        "l": this_host,
        "n": host_arg,
        "p": str(port),
        "d": os.path.expanduser("~"),
        "h": hostname,
        "r": user,
        "u": local_user,
    }


def expand_path(value: str, tokens: dict[str, str], path: str = "") -> str:
    """``~`` first, then tokens: the order ``ssh`` uses for key and known_hosts files."""
    return expand_tokens(os.path.expanduser(value), tokens, path)


_SINGLE = (
    "hostname",
    "user",
    "port",
    "hostkeyalias",
    "identitiesonly",
    "connecttimeout",
    "serveraliveinterval",
    "serveralivecountmax",
    "stricthostkeychecking",
)
_LISTS = ("userknownhostsfile", "globalknownhostsfile")
_ACCUMULATE = ("identityfile", "certificatefile")
_JUMP_RE = re.compile(r"^(?:(?P<user>.+)@)?(?P<host>\[[^\[\]/]+\]|[^:@/\[\]]+)(?::(?P<port>\d*))?$")
_LINE_RE = re.compile(r"^\s*([^\s=]+)(?:\s*=\s*|\s+|$)(.*)$")
# How ssh -G prints StrictHostKeyChecking's values.
_STRICT_WORDS = {"yes": "true", "no": "false", "off": "false"}
_MATCH_WITH_ARG = ("host", "originalhost", "user", "localuser", "exec")


class _Reader:
    """One evaluation pass over a config file and its Includes, state as in readconf.c."""

    def __init__(self, query: Query, host: str, final: bool, options: dict[str, object]) -> None:
        self.query = query
        self.host = host  # what Host lines match: the argument, or the final HostName on the final pass
        self.final = final
        self.options = options
        self.want_final = False

    def error(self, path: str, line: int, message: str) -> UsageError:
        return UsageError(f"ssh_config {path} line {line}: {message}")

    def read(self, path: str, depth: int, never_match: bool, check_perm: bool) -> None:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
            st = os.stat(path)
        except OSError as exc:
            raise UsageError(f"cannot read ssh_config {path}: {exc.strerror or exc}") from exc
        if check_perm and ((st.st_uid not in (0, os.getuid())) or st.st_mode & 0o022):
            raise UsageError(f"ssh_config {path}: bad owner or permissions")
        active = not never_match  # an included file starts in the state of the block that includes it
        for lineno, raw in enumerate(text.splitlines(), start=1):
            active = self.line(path, lineno, raw.rstrip(" \t\r\f"), active, depth, never_match)

    def line(self, path: str, lineno: int, raw: str, active: bool, depth: int, never_match: bool) -> bool:
        m = _LINE_RE.match(raw)
        if m is None or m.group(1).startswith("#"):
            return active
        keyword, rest = m.group(1).lower(), m.group(2)
        if not rest.strip():
            raise self.error(path, lineno, f'no argument after keyword "{keyword}"')
        if keyword in ("proxyjump", "proxycommand"):
            # ssh 9 reads these raw: ProxyCommand is the rest of the line, ProxyJump its first word, quotes kept.
            args = [rest.strip()] if keyword == "proxycommand" else [rest.split()[0].split("#", 1)[0]]
            self.set(path, lineno, keyword, args, active)
            return active
        try:
            args = split_args(rest)
        except ValueError as exc:
            raise self.error(path, lineno, str(exc)) from exc
        if not args:
            raise self.error(path, lineno, f'no argument after keyword "{keyword}"')
        if keyword == "host":
            if never_match:
                return False
            matched = False
            for pattern in args:
                negated = pattern.startswith("!")
                if match_pattern(self.host, pattern[1:] if negated else pattern):
                    if negated:
                        return False
                    matched = True
            return matched
        if keyword == "match":
            return self.match(path, lineno, args) and not never_match
        if keyword == "include":
            for pattern in args:
                self.include(path, lineno, pattern, active, depth, never_match)
            return active
        self.set(path, lineno, keyword, args, active)
        return active

    def include(self, path: str, lineno: int, pattern: str, active: bool, depth: int, never_match: bool) -> None:
        if depth >= _MAX_INCLUDE_DEPTH:
            raise self.error(path, lineno, "Include nested too deeply")
        expanded = os.path.expanduser(pattern)
        if not os.path.isabs(expanded):
            expanded = os.path.join(os.path.expanduser("~/.ssh"), expanded)
        import glob

        for found in sorted(glob.glob(expanded)):
            if os.path.isdir(found):
                continue
            self.read(found, depth + 1, never_match or not active, check_perm=True)

    def match(self, path: str, lineno: int, args: list[str]) -> bool:
        result = True
        i = 0
        while i < len(args):
            word = args[i]
            negated = word.startswith("!")
            attrib = (word[1:] if negated else word).lower()
            i += 1
            if attrib == "all":
                if len(args) != 1 and not (len(args) == 2 and args[0].lower() in ("canonical", "final")):
                    raise self.error(path, lineno, "'all' cannot be combined with other Match attributes")
                hit = True
            elif attrib in ("canonical", "final"):
                if attrib == "final":
                    self.want_final = True
                hit = self.final
            elif attrib in _MATCH_WITH_ARG:
                if i >= len(args) or not args[i]:
                    raise self.error(path, lineno, f"missing Match criteria for {attrib}")
                value = args[i]
                i += 1
                if attrib == "exec" and not result:
                    continue  # ssh runs no command once the line has failed
                hit = self.criterion(attrib, value, path)
            else:
                raise self.error(path, lineno, f"Unsupported Match attribute {attrib}")
            if hit == negated:
                result = False
        return result

    def criterion(self, attrib: str, value: str, path: str) -> bool:
        query, options = self.query, self.options
        hostname_set = options.get("hostname")
        target = str(hostname_set).replace("%h", query.host) if hostname_set else query.host
        user = str(options.get("user") or getpass.getuser())
        if attrib == "host":
            return match_list(target, value, lower=True)
        if attrib == "originalhost":
            return match_list(query.host, value, lower=True)  # match_hostname, as for Match host
        if attrib == "user":
            return match_list(user, value)
        if attrib == "localuser":
            return match_list(getpass.getuser(), value)
        port = int(str(options.get("port") or 22))
        tokens = client_tokens(host_arg=query.host, hostname=target, port=port, user=user, key_alias=None)
        command = expand_tokens(value, tokens, path, allow_env=False)
        return subprocess.run(["/bin/sh", "-c", command], stdout=subprocess.DEVNULL, check=False).returncode == 0

    def set(self, path: str, lineno: int, keyword: str, args: list[str], active: bool) -> None:
        if keyword == "port" and not (args[0].isdigit() and 0 < int(args[0]) < 65536):
            raise self.error(path, lineno, f"Bad port '{args[0]}'.")
        if keyword == "proxyjump" and args[0].lower() != "none":
            hops = [_jump_hop(hop) for hop in args[0].split(",")]
            if None in hops:
                raise self.error(path, lineno, f'Invalid ProxyJump "{args[0]}"')
            args = [",".join(hop for hop in hops if hop)]
        if not active:
            return
        options = self.options
        if keyword in _SINGLE:
            options.setdefault(keyword, args[0])
        elif keyword in _LISTS:
            options.setdefault(keyword, list(args))
        elif keyword in _ACCUMULATE:
            found = options.setdefault(keyword, [])
            assert isinstance(found, list)
            if args[0] not in found:
                found.append(args[0])
        elif keyword in ("proxyjump", "proxycommand") and "proxyjump" not in options and "proxycommand" not in options:
            # The first of the two to be set wins; the other is then ignored, as ssh does.
            options[keyword] = " ".join(args) if keyword == "proxycommand" else args[0]


def _jump_hop(text: str) -> Optional[str]:
    """One ProxyJump hop as ssh prints it back (``ssh://`` and an empty port dropped), or None if invalid."""
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].removesuffix("/")
    m = _JUMP_RE.match(text)
    if m is None:
        return None
    port = m.group("port")
    if port and not 0 < int(port) < 65536:
        return None
    user = f"{m.group('user')}@" if m.group("user") else ""
    return f"{user}{m.group('host')}{':' + port if port else ''}"


def _read_all(query: Query, host: str, final: bool, preset: dict[str, object]) -> _Reader:
    reader = _Reader(query, host, final, dict(preset))
    if query.config is not None:
        reader.read(query.config, 0, False, check_perm=False)
    return reader


def emulate(query: Query) -> Answer:
    """``ssh -G``'s answer for the keywords sshfleet reads, computed in Python (readconf.c's rules)."""
    preset: dict[str, object] = {}
    if query.user is not None:
        preset["user"] = query.user
    if query.port is not None:
        preset["port"] = str(query.port)
    if query.hostname is not None:
        preset["hostname"] = query.hostname
    if query.jump is not None:
        preset["proxyjump"] = query.jump
    reader = _read_all(query, query.host, False, preset)
    options = reader.options
    host = _final_host(query, options)
    if reader.want_final:
        # The final pass starts with HostName set to the name found (already expanded, so first-wins keeps it).
        options["hostname"] = host
        options = _read_all(query, host, True, options).options
    return _answer(query, host, options)


def _final_host(query: Query, options: dict[str, object]) -> str:
    hostname = options.get("hostname")
    if hostname is None:
        return query.host.lower()
    return expand_tokens(str(hostname), {"h": query.host}, str(query.config), allow_env=False).lower()


def _answer(query: Query, host: str, options: dict[str, object]) -> Answer:
    user = str(options.get("user") or getpass.getuser())
    port = int(str(options.get("port") or 22))
    alias = options.get("hostkeyalias")
    tokens = client_tokens(
        host_arg=query.host, hostname=host, port=port, user=user, key_alias=str(alias) if alias else None
    )
    config = str(query.config)

    def strings(key: str, default: Sequence[str]) -> list[str]:
        value = options.get(key)
        return [str(v) for v in value] if isinstance(value, list) and value else list(default)

    strict = str(options.get("stricthostkeychecking", "ask")).lower()
    known = [expand_path(p, tokens, config) for p in strings("userknownhostsfile", DEFAULT_USER_KNOWN_HOSTS)]
    answer: Answer = {
        "user": [user],
        "hostname": [host],
        "port": [str(port)],
        "identitiesonly": [str(options.get("identitiesonly", "no")).lower()],
        "stricthostkeychecking": [_STRICT_WORDS.get(strict, strict)],
        "serveralivecountmax": [str(options.get("serveralivecountmax", "3"))],
        "serveraliveinterval": [str(options.get("serveraliveinterval", "0"))],
        "connecttimeout": [str(options.get("connecttimeout", "none"))],
        "identityfile": strings("identityfile", DEFAULT_IDENTITY_FILES),
        "globalknownhostsfile": [" ".join(strings("globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS))],
        "userknownhostsfile": [" ".join(known)],
    }
    for key in ("certificatefile",):
        if options.get(key):
            answer[key] = strings(key, ())
    if alias:
        answer["hostkeyalias"] = [str(alias)]
    jump = options.get("proxyjump")
    if jump and str(jump).lower() != "none":
        answer["proxyjump"] = [str(jump)]
    command = options.get("proxycommand")
    if command and str(command).lower() != "none":
        answer["proxycommand"] = [str(command)]
    return answer
