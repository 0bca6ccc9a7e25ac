# Runs on the host, sent over stdin by the controller (see sshfleet/_bootstrap.py). Standard library only, and
# written for old Pythons (no f-string "=" or walrus) so that even a too-old host gets a clear error.
#
# Protocol, one SSH exec channel, line-oriented on stdout:
#   controller -> host : this file (length-prefixed), then one JSON line (the config)
#   host -> controller : "SSHFLEET NEED <json>" when bundles are missing from the cache, then, for each missing
#                        bundle, controller -> host: one JSON line {"name","hash","size"} and `size` raw bytes;
#   host -> controller : "SSHFLEET READY <json>" once the servicer listens, or "SSHFLEET ERROR <json>".
# After READY the channel stays open: it carries heartbeats both ways, and its EOF stops the servicer.
import json
import os
import platform
import stat
import sys

# Only a cold start (bundles to install) or a failure needs hashlib, shutil, tarfile, tempfile and traceback:
# they are imported where used, so that a warm start does not pay for them on every host.

# The oldest host Python, stated here and only here: comments and docs that name it must agree, and
# tests/unit/test_remote_standalone.py runs sshfleet/remote/ standalone under it.
MIN_PYTHON = (3, 6)
COMPLETE_MARK = ".sshfleet-complete"


def emit(kind, payload):
    sys.stdout.write("SSHFLEET %s %s\n" % (kind, json.dumps(payload)))
    sys.stdout.flush()


def fail(kind, message, **extra):
    payload = {"kind": kind, "message": message}
    payload.update(extra)
    emit("ERROR", payload)
    sys.exit(1)


def musl_version():
    """The musl version ("1.2") of an Alpine-like host, whose platform.libc_ver() is empty; "" if not musl."""
    import glob
    import re
    import subprocess

    for loader in sorted(glob.glob("/lib/ld-musl-*.so.1")):
        try:
            # Run with no arguments, musl's dynamic loader prints its version on stderr. (No capture_output:
            # Python 3.6 has none.)
            proc = subprocess.run([loader], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=5)  # noqa: UP022
            out = proc.stderr
        except (OSError, subprocess.SubprocessError):
            continue
        match = re.search(r"Version (\d+\.\d+)", out.decode("ascii", "replace"))
        return match.group(1) if match else "1.1"
    return ""


def host_facts():
    libc, libc_version = platform.libc_ver()
    if not libc:
        musl = musl_version()
        if musl:
            libc, libc_version = "musl", musl
    tag = "cp%d%d-%s" % (sys.version_info[0], sys.version_info[1], platform.machine())
    return {
        "python": platform.python_version(),
        # Hosts of one tag share a deps bundle: musl hosts need other wheels than glibc ones.
        "tag": tag + "-musl" if libc == "musl" else tag,
        "abi": "cp%d%d%s" % (sys.version_info[0], sys.version_info[1], getattr(sys, "abiflags", "")),
        "machine": platform.machine(),
        "system": platform.system(),
        "libc": libc,
        "libc_version": libc_version,
        "executable": sys.executable,
    }


def private_dir(path):
    """Create `path` as a 0700 directory owned by us, or check that an existing one is exactly that."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        fail("payload_failed", "%s is not a directory" % path)
    if st.st_uid != os.geteuid():
        fail(
            "payload_failed",
            "%s is owned by uid %d, not by us (uid %d): refusing it" % (path, st.st_uid, os.geteuid()),
        )
    if st.st_mode & 0o077:
        fail("payload_failed", "%s has mode %o; sshfleet needs 0700: refusing it" % (path, st.st_mode & 0o777))
    return path


def is_complete(bundle_dir):
    return os.path.isfile(os.path.join(bundle_dir, COMPLETE_MARK))


def read_exact(stream, size):
    chunks = []
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            fail("payload_failed", "the controller closed the stream in the middle of a bundle")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def safe_members(tar, dest):
    dest = os.path.realpath(dest)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(dest, member.name))
        if not (target == dest or target.startswith(dest + os.sep)):
            fail("payload_failed", "bundle member %r escapes the bundle directory" % member.name)
        if not (member.isfile() or member.isdir()):
            fail("payload_failed", "bundle member %r is not a plain file or directory" % member.name)
        yield member


def install_bundle(cache, meta, stream):
    """Receive one bundle, check its hash, unpack it next to its final place and rename it in atomically.

    Hosts may share $HOME: when another host installed the same hash first, its copy is kept and ours dropped.
    """
    import hashlib
    import io
    import shutil
    import tarfile
    import tempfile

    data = read_exact(stream, int(meta["size"]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["hash"]:
        fail(
            "payload_failed",
            "bundle %s arrived with hash %s, expected %s" % (meta["name"], digest, meta["hash"]),
        )
    final = os.path.join(cache, meta["hash"])
    if is_complete(final):
        return
    tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % meta["hash"][:12], dir=cache)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = list(safe_members(tar, tmp))
            if sys.version_info >= (3, 12):
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        with open(os.path.join(tmp, COMPLETE_MARK), "w") as f:
            f.write(meta["hash"] + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another installer won the race (ENOTEMPTY/EEXIST); theirs is as good as ours if complete.
            if not is_complete(final):
                # A half-made directory with our hash's name can only be debris of a crash: replace it.
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# A session directory's owner: "<hostname> <boot id> <pid of its supervisor>", so that a later start can tell a
# live session from the debris of one whose supervisor died (OOM killer, reboot), even when hosts share $HOME.
OWNER_FILE = "owner"
# The pids (one a line) whose sessions the supervisor leaves running: commands started with detach.
DETACHED_FILE = "detached"
MARKER = b"sshfleet-servicer"
PR_SET_CHILD_SUBREAPER = 36
KILL_GRACE = 2.0


def host_identity():
    """(hostname, boot id): a pid means something only on the host and boot that wrote it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "-"
    return platform.node() or "-", boot


def is_servicer(pid):
    """Whether ``pid`` is alive and one of ours (its command line carries the marker), not a reused pid."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return MARKER in f.read()
    except OSError:
        pass
    if os.path.isdir("/proc"):
        return False
    try:  # no /proc: all we can tell is whether the pid is alive
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sweep_stale_sessions(sessions, identity):
    """Remove the session directories of servicers that are no longer alive on this host.

    A supervisor removes its session directory when its servicer ends; only a killed supervisor (OOM killer,
    reboot) leaves one behind, and the next start on the host removes it. A directory of another host (a shared
    $HOME) is left to that host; one without an owner file is someone's start in progress, left alone.
    """
    import shutil

    try:
        names = os.listdir(sessions)
    except OSError:
        return
    for name in names:
        path = os.path.join(sessions, name)
        try:
            with open(os.path.join(path, OWNER_FILE)) as f:
                hostname, boot, pid = f.read().split()
            pid = int(pid)
        except (OSError, ValueError):
            continue
        if hostname != identity[0]:
            continue
        if boot == identity[1] and is_servicer(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _proc_table():
    """{pid: (ppid, session id)} of every live process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def _detached(session_dir):
    try:
        with open(os.path.join(session_dir, DETACHED_FILE)) as f:
            return set(int(line) for line in f if line.strip().isdigit())
    except OSError:
        return set()


def _descendants(root, spared):
    """Every live descendant of ``root``, except the subtrees of processes in a spared (detached) session."""
    table = _proc_table()
    children = {}
    for pid, (ppid, _sid) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid in spared or table[pid][1] in spared:
            continue
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(session_dir, grace=KILL_GRACE):
    """SIGTERM everything below us (as a subreaper, that is everything the servicer started, however it was
    started: setsid, a double fork, nohup), then SIGKILL what is still there after ``grace``, until none is left.
    Detached sessions (DETACHED_FILE) are spared."""
    import signal
    import time

    spared = _detached(session_dir)
    me = os.getpid()
    victims = _descendants(me, spared)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    while victims and time.time() < deadline:
        time.sleep(0.05)
        _reap()
        victims = _descendants(me, spared)
    for _ in range(50):  # a process forking as fast as we kill gets SIGKILLed over a few rounds
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
        _reap()
        victims = _descendants(me, spared)


def supervise(session_dir):
    """Split in two: the child returns and becomes the servicer; this process stays as its supervisor.

    The supervisor is the exec'd process sshd waits for, and a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
    whatever the servicer starts stays below it even after a setsid or a double fork. When the servicer ends,
    however it ended (stdin EOF, STOP, os._exit, SIGKILL, the OOM killer), the supervisor kills every process
    below it except detached ones, removes the session directory and exits with the servicer's status. Linux
    only (elsewhere the servicer kills its own process group, as before). Returns, in the child only, a file
    descriptor to pass to ``wait_supervisor`` before the servicer may start anything; None when there is no
    supervisor. (The supervisor loads ctypes while the servicer imports grpc: neither waits for the other.)
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return None
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_w)
        return ready_r
    os.close(ready_r)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:
        pass  # without it, daemons escape as before; the process group is still killed
    os.write(ready_w, b"x")
    os.close(ready_w)
    _supervise(child, session_dir)


def wait_supervisor(ready_fd):
    """Block until the supervisor is a subreaper, so that nothing the servicer starts can slip past it."""
    if ready_fd is not None:
        os.read(ready_fd, 1)
        os.close(ready_fd)


def _supervise(child, session_dir):
    import shutil
    import signal

    def forward(signum, frame):
        try:
            os.kill(child, signal.SIGTERM)
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        os.close(0)  # the servicer reads the controller's lines; our copy of stdin would only keep it open
    except OSError:
        pass
    status = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)  # also reaps orphans that died while the servicer lived
        except ChildProcessError:
            break
        if pid == child:
            break
    try:
        kill_descendants(session_dir)
    finally:
        shutil.rmtree(session_dir, ignore_errors=True)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


class LazyModules:
    """Modules that `import grpc` / protobuf load but a sync servicer never uses, loaded lazily: on first
    attribute access, if a servicer does. grpc.aio pulls asyncio, ssl and typing_extensions; cygrpc imports
    asyncio itself; protobuf's descriptor_pool imports its pure-Python message implementation (and with it
    text_format), which the upb backend never calls. Together ~60 of the ~120 ms of CPU a servicer used
    to spend before READY, per host (bench/profile/coldstart.py)."""

    names = {"grpc.aio", "asyncio", "google.protobuf.internal.python_message", "google.protobuf.text_format"}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in cls.names:
            return None
        import importlib.util

        cls.names.discard(name)
        if not cls.names:
            sys.meta_path.remove(cls)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def main():
    # Python 2's stdin is bytes already: it gets this far, so that it too is told why it cannot serve.
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    config = json.loads(stdin.readline().decode("utf-8"))
    if sys.version_info < MIN_PYTHON:
        fail(
            "no_python",
            "Python %s at %s is too old: sshfleet needs Python >= %d.%d on the host "
            "(name another interpreter with the inventory var ansible_python_interpreter)"
            % (platform.python_version(), sys.executable, MIN_PYTHON[0], MIN_PYTHON[1]),
            facts={"python": platform.python_version(), "executable": sys.executable},
            reason="too_old",
        )
    facts = host_facts()
    home_cache = os.path.expanduser(config.get("cache", "~/.cache/sshfleet"))
    parent = os.path.dirname(home_cache)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o700)
    cache = private_dir(home_cache)

    deps_hash = config["deps"].get(facts["tag"])
    wanted = {"agent": config["agent"]}
    if deps_hash:
        wanted["deps"] = deps_hash
    missing = [name for name, h in sorted(wanted.items()) if not is_complete(os.path.join(cache, h))]
    if "deps" not in wanted:
        missing.append("deps")
    if missing:
        emit("NEED", {"missing": missing, "facts": facts})
        for _ in missing:
            meta = json.loads(stdin.readline().decode("utf-8"))
            if "error" in meta:
                fail(meta.get("kind", "no_python"), meta["error"], facts=facts)
            install_bundle(cache, meta, stdin)
            wanted[meta["name"]] = meta["hash"]

    sessions = private_dir(os.path.join(cache, "sessions"))
    identity = host_identity()
    sweep_stale_sessions(sessions, identity)
    session_dir = private_dir(os.path.join(sessions, config["session"]))
    with open(os.path.join(session_dir, OWNER_FILE), "w") as f:
        f.write("%s %s %d\n" % (identity[0], identity[1], os.getpid()))
    supervisor = os.getpid()
    ready_fd = supervise(session_dir)
    config["supervised"] = ready_fd is not None
    if ready_fd is not None:
        config["supervisor_pid"] = supervisor
    sys.path[:0] = [os.path.join(cache, wanted["agent"]), os.path.join(cache, wanted["deps"])]
    sys.meta_path.insert(0, LazyModules)
    # A servicer forks only to exec (the Exec agent's commands, servicers' subprocesses): grpc's fork handlers,
    # meant for children that go on using grpc, are not needed, and some releases (around grpcio 1.78-1.80,
    # what Python 3.9 hosts get) abort such a child before its exec. Off, as grpc advises for fork+exec.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import sshfleet_runtime
    except Exception:
        import shutil
        import traceback

        shutil.rmtree(session_dir, ignore_errors=True)
        fail(
            "bootstrap_failed",
            "cannot import the sshfleet runtime on the host",
            traceback=traceback.format_exc(),
        )
    wait_supervisor(ready_fd)
    sshfleet_runtime.serve(config, facts, session_dir, stdin, emit)


# Guarded so that the controller can import MIN_PYTHON from here; the loader runs us as __main__.
if __name__ == "__main__":
    main()
