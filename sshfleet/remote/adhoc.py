# The host side of `sshfleet run` for a plain command (sent by sshfleet/_cli/_adhoc.py). Standard library only,
# written for old Pythons, and started as `python3 -I -S -c LOADER`: no site, no grpc, no servicer, so a one-off
# command pays a few milliseconds of Python here, not an agent's start. It owns the command's process group and,
# as a child subreaper, everything the command starts (&, nohup, setsid, a double fork): all of it is killed when
# the command ends, when the controller says so, or when the controller is gone (stdin EOF, or no heartbeat).
#
# Protocol, one SSH exec channel:
#   controller -> host, stdin: this file (the loader reads as many bytes as its argv says), then frames of
#     1 byte kind + 4 bytes big-endian length + payload:
#       C  the command: NUL-separated "argv"|"shell", stdin "0"|"1", timeout seconds ("0": none), heartbeat
#          seconds ("0": none), then its words
#       D  bytes for the command's stdin     E  the command's stdin ends     S  a signal number for its group
#       H  heartbeat: the controller is alive
#     EOF on stdin before the end record means the controller is gone: everything is killed.
#   host -> controller: the command's stdout and stderr as they come (inherited, not copied here), and on stderr
#     START before the command runs and, once it and everything it started are gone, the end record
#     "\0sshfleet-end <exit code> <signal> <timed out 0|1> <started 0|1> <comment>\n", the last bytes sent.
import errno
import fcntl
import os
import select
import signal
import struct
import time

START = b"\0sshfleet-start\n"
END = b"\0sshfleet-end "
KILL_GRACE = 2.0  # after SIGTERM, how long a process gets before SIGKILL
EXIT_DRAIN = 1.0  # once the command has exited, how long what it left in the background may still run
PR_SET_CHILD_SUBREAPER = 36


def write_all(fd, data):
    while data:
        try:
            data = data[os.write(fd, data) :]
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            if exc.errno == errno.EAGAIN:
                select.select([], [fd], [], 1.0)
                continue
            return


def become_subreaper():
    """Orphans of the command are reparented to us instead of init, so that none escapes the kill."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:
        return False


def descendants():
    """Every live process below us, from /proc (as a subreaper, that is everything the command started)."""
    children = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(os.getpid(), ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def reap():
    """Collect exited children; False when we have no child left at all (then, as a subreaper, nothing below
    us is alive either, and the /proc scan of ``descendants`` can be skipped)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def kill_all(grace):
    """SIGTERM everything below us, SIGKILL what is left after ``grace``, until nothing is left."""
    victims = descendants()
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    while victims and time.time() < deadline:
        time.sleep(0.02)
        reap()
        victims = descendants()
    for _ in range(50):  # a process forking as fast as we kill gets SIGKILLed over a few rounds
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
        reap()
        victims = descendants()


class Control:
    """The frames from the controller, read from fd 0 without blocking the loop."""

    def __init__(self):
        self.buffer = b""
        self.eof = False
        self.seen = time.time()

    def read(self):
        """The complete frames now readable: [(kind, payload)]; sets ``eof`` when the controller is gone."""
        try:
            data = os.read(0, 65536)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return []
            data = b""
        if not data:
            self.eof = True
            return []
        self.seen = time.time()
        self.buffer += data
        frames = []
        while len(self.buffer) >= 5:
            size = struct.unpack(">I", self.buffer[1:5])[0]
            if len(self.buffer) < 5 + size:
                break
            frames.append((self.buffer[:1], self.buffer[5 : 5 + size]))
            self.buffer = self.buffer[5 + size :]
        return frames

    def first(self):
        """Block for the command frame."""
        while True:
            frames = self.read()
            if frames:
                return frames[0], frames[1:]
            if self.eof:
                os._exit(1)
            select.select([0], [], [])


def start(words, shell, with_stdin):
    """Fork and exec the command in a process group of its own; (pid, stdin fd or None, error text or None)."""
    argv = ["/bin/sh", "-c", words[0]] if shell else words
    stdin_r = stdin_w = None
    if with_stdin:
        stdin_r, stdin_w = os.pipe()
    errpipe_r, errpipe_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(errpipe_r)
            os.setpgid(0, 0)
            if stdin_r is not None:
                os.dup2(stdin_r, 0)
            else:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
            for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.closerange(3, errpipe_w)
            os.closerange(errpipe_w + 1, 65536)
            fcntl.fcntl(errpipe_w, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(errpipe_w, str(exc.errno or errno.ENOENT).encode())
        except BaseException:
            os.write(errpipe_w, str(errno.EINVAL).encode())
        os._exit(127)
    os.close(errpipe_w)
    if stdin_r is not None:
        os.close(stdin_r)
    said = b""
    while True:
        chunk = os.read(errpipe_r, 64)
        if not chunk:
            break
        said += chunk
    os.close(errpipe_r)
    if not said:
        return pid, stdin_w, None
    os.waitpid(pid, 0)
    if stdin_w is not None:
        os.close(stdin_w)
    code = int(said)
    if code == errno.ENOENT:
        return 0, None, (127, "%s: command not found" % argv[0])
    return 0, None, (126, "%s: %s" % (argv[0], os.strerror(code)))


def finish(code, signum, timed_out, started, comment):
    comment = comment.replace("\n", " ")
    record = "%d %d %d %d %s\n" % (code, signum, int(timed_out), int(started), comment)
    write_all(2, END + record.encode("utf-8", "replace"))
    os._exit(code if code >= 0 else 128 + signum)


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the controller decides; sshd's hangup shows as stdin EOF
    become_subreaper()
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes the loop the moment the command exits
    for fd in (wake_r, wake_w):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    control = Control()
    (kind, payload), pending = control.first()
    fields = payload.decode("utf-8", "surrogateescape").split("\0")
    mode, with_stdin, timeout, heartbeat = fields[0], fields[1] == "1", float(fields[2]), float(fields[3])
    words = fields[4:]
    write_all(2, START)
    pid, stdin_fd, error = start(words, mode == "shell", with_stdin)
    if error is not None:
        finish(error[0], 0, False, False, error[1])
    began = time.time()
    deadline = began + timeout if timeout > 0 else None
    status = None
    timed_out = False
    comment = ""
    gone_at = None  # when the command exited: what it left running gets EXIT_DRAIN more
    stdin_queue = b""
    stdin_ended = False
    frames = pending
    while True:
        for kind, payload in frames:
            if kind == b"D" and stdin_fd is not None:
                stdin_queue += payload
            elif kind == b"E":
                stdin_ended = True
            elif kind == b"S":
                try:
                    os.killpg(pid, int(payload))
                except OSError:
                    pass
        frames = []
        if stdin_fd is not None and stdin_queue:
            try:
                written = os.write(stdin_fd, stdin_queue[:65536])
                stdin_queue = stdin_queue[written:]
            except OSError:  # the command closed its stdin: the rest is dropped, as a pipe would
                stdin_queue = b""
                os.close(stdin_fd)
                stdin_fd = None
        if stdin_fd is not None and stdin_ended and not stdin_queue:
            os.close(stdin_fd)
            stdin_fd = None
        if status is None:
            try:
                done, status_word = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by kill_all after a timeout: it was killed, by SIGKILL at last
                done, status_word = pid, signal.SIGKILL
            if done == pid:
                status = status_word
                gone_at = time.time()
        # Other children (orphans given to us) are reaped only once the command's own status is in hand: a
        # waitpid(-1) before that could take the command's status too.
        children = reap() if status is not None else True
        now = time.time()
        if control.eof or (heartbeat > 0 and now - control.seen > 3 * heartbeat + 5):
            kill_all(KILL_GRACE)  # the controller is gone: nobody reads the result
            os._exit(1)
        if status is not None:
            if not children or not descendants():
                break
            if now - gone_at > EXIT_DRAIN:
                kill_all(KILL_GRACE)
                break
        if deadline is not None and now > deadline and not timed_out:
            timed_out = True
            comment = "timed out after %gs" % timeout
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
            deadline = now + KILL_GRACE
        elif timed_out and deadline is not None and now > deadline:
            kill_all(0)
            deadline = None
        wait = 0.02 if status is not None else 1.0
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - now))
        writers = [stdin_fd] if stdin_fd is not None and stdin_queue else []
        readable, _, _ = select.select([0, wake_r], writers, [], wait)
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except OSError:
                pass
        if 0 in readable:
            frames = control.read()
    if stdin_fd is not None:
        os.close(stdin_fd)
    if os.WIFSIGNALED(status):
        finish(-1, os.WTERMSIG(status), timed_out, True, comment)
    finish(os.WEXITSTATUS(status), 0, timed_out, True, comment)


if __name__ == "__main__":  # the loader runs this file as __main__; a test may import it
    main()
