# Servicer of exec.ExecAgent (proto/exec.proto): started from the `sshfleet generate` template and implemented
# by hand; `sshfleet generate` keeps it unless --force. It runs on the hosts, so it may use only the standard
# library, grpc and protobuf, on Python >= 3.6.
"""Run commands on the hosts: argv exactly as given (a shell only when asked), stdin from /dev/null unless
given, each command in its own process group, optionally on a pseudo-terminal.

What the usual ad-hoc runners get wrong and this does on purpose:

* argv goes to execvp untouched: an argument with spaces or quotes stays one argument;
* without stdin the command's stdin is /dev/null, so a command that reads it ends instead of hanging;
* each command leads its own process group (pty commands their own session), so a signal reaches the
  children too, and everything a command left running is killed when its RPC is abandoned or the agent
  closes (Shutdown; what escaped its group with setsid or a double fork, the runtime's supervisor kills);
* a command run with ``detach`` is the one exception, on purpose: it starts in a session of its own, the
  supervisor is told to spare that session, and Run answers at once;
* with a pty the command gets a real terminal (controlling tty, window size, TERM), so curses programs work.
"""

import errno
import fcntl
import logging
import os
import pty
import selectors
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import grpc

try:  # package import on the controller, top-level import on the host
    from . import exec_pb2 as pb
    from . import exec_pb2_grpc as pb_grpc
except ImportError:
    import exec_pb2 as pb
    import exec_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16
# Run() collects output in memory and answers in one message: cap it well below gRPC's message limit.
RUN_OUTPUT_CAP = 64 << 20
# After SIGTERM (timeout, abandoned call, shutdown), how long a process group gets before SIGKILL.
KILL_GRACE = 2.0
# Once the command itself has exited, how long we keep reading output that a background child may still
# hold open: `cmd &` would otherwise keep the call open as long as that child lives (ssh's classic hang).
EXIT_DRAIN = 1.0

# Process groups (and for pty commands, sessions) this servicer started, for Shutdown(): pid -> is_session.
_groups = {}
_groups_lock = threading.Lock()


def AddServicer(server):
    pb_grpc.add_ExecAgentServicer_to_server(ExecAgentServicer(), server)


def Shutdown():
    """Kill every process group a command left behind (the runtime only kills the servicer's own group)."""
    with _groups_lock:
        groups = dict(_groups)
        _groups.clear()
    if not groups:
        return
    for pid, is_session in groups.items():
        _signal_all(pid, is_session, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE / 2
    while time.monotonic() < deadline and any(_members(p, s) for p, s in groups.items()):
        time.sleep(0.02)
    for pid, is_session in groups.items():
        _signal_all(pid, is_session, signal.SIGKILL)


def _members(pid, is_session):
    """Live processes whose process group (or session, for pty commands) is ``pid``."""
    field = 3 if is_session else 2  # after "pid (comm)": state, ppid, pgrp, session
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[field]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _signal_all(pid, is_session, signum):
    try:
        os.killpg(pid, signum)
    except OSError:
        pass
    if is_session:  # job-control shells put jobs in groups of their own, still inside the session
        for member in _members(pid, True):
            try:
                os.kill(member, signum)
            except OSError:
                pass


class StartError(Exception):
    def __init__(self, exit_code, message):
        super().__init__(message)
        self.exit_code = exit_code


# No Python may run in a child between fork and exec (preexec_fn): grpc's fork handlers crash it now and then
# (SIGSEGV). So a pty command goes through this helper, a fresh interpreter started in a new session, which
# takes the pty on fd 0 as its controlling terminal and execs the command; if that exec fails it writes the
# errno to the pipe on fd ERRFD (closed on a successful exec), like subprocess does.
_PTY_HELPER = (
    "import os,sys,fcntl,termios\n"
    "fd=int(sys.argv[1])\n"
    "try:\n"
    " os.set_inheritable(fd,False)\n"
    " fcntl.ioctl(0,termios.TIOCSCTTY,0)\n"
    " os.execvp(sys.argv[2],sys.argv[2:])\n"
    "except OSError as e:\n"
    " os.write(fd,str(e.errno).encode())\n"
    " os._exit(127)\n"
)


def _set_window(fd, rows, cols):
    if rows and cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Command:
    """One command on this host: its process, pipes (or pty) and an output loop run by the RPC's thread.

    Other threads may call write(), close_stdin(), send_signal(), resize() and abandon() at any time.
    """

    def __init__(self, request, use_pty=False, term="", window=None, stdin_open=None):
        self.request = request
        self.use_pty = use_pty
        self.term = term or "dumb"
        self.window = window
        keep_open = request.stdin_open if stdin_open is None else stdin_open
        self.stdin_pipe = use_pty or keep_open or bool(request.stdin)
        self.keep_stdin_open = keep_open
        self.process = None
        self.pid = 0
        self.master = None
        self.stdin_fd = None
        self.outputs = {}  # fd -> pb.STDOUT / pb.STDERR
        self.lock = threading.Lock()
        self.pending = bytearray(request.stdin)
        self.stdin_eof = not keep_open  # no more input will come after `pending`
        self.wake_r = self.wake_w = -1
        self.sent_veof = False
        self.exited = threading.Event()
        self.timed_out = False
        self.abandoned = False
        self.comment = ""

    # --- start -------------------------------------------------------------------------------------------

    def argv(self):
        request = self.request
        if request.argv and request.shell:
            raise ValueError("give argv or shell, not both")
        if request.shell:
            return ["/bin/sh", "-c", request.shell]
        if not request.argv:
            raise ValueError("no command: give argv or shell")
        return list(request.argv)

    def start(self):
        """Start the process; raises StartError (with a shell-like exit code) when it cannot start, ValueError
        when the request names no command."""
        command = self.argv()
        argv = list(command)
        env = dict(os.environ)
        env.update(self.request.env)
        cwd = self.request.cwd or os.path.expanduser("~")
        if not os.path.isdir(cwd):
            raise StartError(126, "cannot change directory to %s: %s" % (cwd, os.strerror(errno.ENOENT)))
        kwargs = {"cwd": cwd, "env": env, "close_fds": True}
        child_fds = []
        errpipe = None
        try:
            self.wake_r, self.wake_w = os.pipe()
            if self.use_pty:
                self.master, slave = pty.openpty()
                child_fds.append(slave)
                if self.window is not None:
                    _set_window(slave, self.window.rows, self.window.cols)
                env["TERM"] = self.term
                errpipe, err_w = os.pipe()
                child_fds.append(err_w)
                helper = [sys.executable or "python3", "-I", "-S", "-c", _PTY_HELPER, str(err_w)]
                argv = helper + argv
                kwargs.update(stdin=slave, stdout=slave, stderr=slave, start_new_session=True, pass_fds=(err_w,))
            else:
                if self.stdin_pipe:
                    stdin_r, self.stdin_fd = os.pipe()
                    child_fds.append(stdin_r)
                    kwargs["stdin"] = stdin_r
                else:
                    kwargs["stdin"] = subprocess.DEVNULL
                out_r, out_w = os.pipe()
                self.outputs[out_r] = pb.STDOUT
                child_fds.append(out_w)
                err_r, err_w = os.pipe()
                self.outputs[err_r] = pb.STDERR
                child_fds.append(err_w)
                kwargs.update(stdout=out_w, stderr=err_w)
                if sys.version_info >= (3, 11):
                    kwargs["process_group"] = 0
                else:  # setpgid needs preexec_fn before 3.11 (see _PTY_HELPER); setsid makes a group too
                    kwargs["start_new_session"] = True
            try:
                self.process = subprocess.Popen(argv, **kwargs)
            except FileNotFoundError as exc:
                raise StartError(127, "%s: command not found" % command[0]) from exc
            except PermissionError as exc:
                raise StartError(126, "%s: permission denied" % command[0]) from exc
            except OSError as exc:
                raise StartError(126, "%s: %s" % (command[0], exc.strerror or exc)) from exc
            for fd in child_fds:
                os.close(fd)
            child_fds = []
            if errpipe is not None:
                self._check_exec(errpipe, command[0])
        except BaseException:
            self.close_fds()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
            if errpipe is not None:
                os.close(errpipe)
        self.pid = self.process.pid
        with _groups_lock:
            _groups[self.pid] = self.use_pty
        if self.use_pty:
            self.outputs = {self.master: pb.STDOUT}
            self.stdin_fd = self.master
        for fd in [self.wake_r, self.wake_w, *self.outputs] + ([self.stdin_fd] if self.stdin_fd is not None else []):
            _nonblocking(fd)
        threading.Thread(target=self._wait, name="exec-wait-%d" % self.pid, daemon=True).start()
        log.info("started pid %d%s: %r", self.pid, " on a pty" if self.use_pty else "", command)

    def _check_exec(self, errpipe, program):
        """Block until the pty helper has exec'd the command (EOF) or reported why it could not (errno)."""
        data = b""
        while True:
            chunk = os.read(errpipe, 64)
            if not chunk:
                break
            data += chunk
        if data:
            self.process.wait()
            code = int(data)
            if code == errno.ENOENT:
                raise StartError(127, "%s: command not found" % program)
            raise StartError(126, "%s: %s" % (program, os.strerror(code)))

    def _wait(self):
        self.process.wait()
        self.exited.set()
        self._wake()

    # --- calls from other threads ------------------------------------------------------------------------

    def _wake(self):
        # Under the lock so that we never write into a closed fd whose number was reused since.
        with self.lock:
            if self.wake_w >= 0:
                try:
                    os.write(self.wake_w, b"x")
                except OSError:
                    pass  # the pipe is full: a wake-up is pending anyway

    def write(self, data):
        if not self.stdin_pipe:
            log.debug("pid %d: stdin is /dev/null, dropping %d bytes", self.pid, len(data))
            return
        with self.lock:
            if not self.stdin_eof:
                self.pending += data
        self._wake()

    def close_stdin(self):
        with self.lock:
            self.stdin_eof = True
        self._wake()

    def send_signal(self, signum):
        if self.pid and not self.exited.is_set():
            log.info("pid %d: sending signal %d to its process group", self.pid, signum)
            try:
                os.killpg(self.pid, signum)
            except OSError as exc:
                log.debug("killpg(%d, %d): %s", self.pid, signum, exc)

    def resize(self, rows, cols):
        if self.master is not None:
            try:
                _set_window(self.master, rows, cols)  # the kernel sends SIGWINCH to the foreground group
            except OSError as exc:
                log.debug("resize: %s", exc)

    def abandon(self):
        """Nobody waits for the result any more (call cancelled, deadline, client gone): stop the command."""
        if self.pid and not self.exited.is_set() and not self.abandoned:
            self.abandoned = True
            log.info("pid %d: call ended before the command, killing its process group", self.pid)
            self._terminate()

    def _terminate(self):
        pid, is_session = self.pid, self.use_pty
        _signal_all(pid, is_session, signal.SIGTERM)
        if self.use_pty:
            _signal_all(pid, is_session, signal.SIGHUP)  # what a closing terminal sends; shells ignore TERM

        def kill_later():
            if not self.exited.wait(KILL_GRACE):
                _signal_all(pid, is_session, signal.SIGKILL)

        threading.Thread(target=kill_later, name="exec-kill-%d" % pid, daemon=True).start()

    # --- the output loop ---------------------------------------------------------------------------------

    def events(self):
        """Yield (stream, bytes) as the command writes, until it has exited and its output is drained."""
        selector = selectors.DefaultSelector()
        selector.register(self.wake_r, selectors.EVENT_READ)
        for fd in self.outputs:
            selector.register(fd, selectors.EVENT_READ)
        open_outputs = set(self.outputs)
        timeout = self.request.timeout
        deadline = time.monotonic() + timeout if timeout > 0 else None
        drain_until = None
        try:
            while True:
                if self.exited.is_set():
                    if not open_outputs:
                        break
                    if drain_until is None:
                        drain_until = time.monotonic() + EXIT_DRAIN
                    elif time.monotonic() >= drain_until:
                        log.info("pid %d exited; its output is still held open by another process", self.pid)
                        break
                self._update_stdin(selector, open_outputs)
                wait = 1.0
                now = time.monotonic()
                if deadline is not None:
                    if now >= deadline and not self.timed_out:
                        self.timed_out = True
                        self.comment = "timed out after %gs" % timeout
                        log.info("pid %d: %s", self.pid, self.comment)
                        self._terminate()
                    if not self.timed_out:
                        wait = min(wait, deadline - now)
                if drain_until is not None:
                    wait = min(wait, max(drain_until - now, 0))
                for key, mask in selector.select(max(wait, 0.0)):
                    fd = key.fd
                    if fd == self.wake_r:
                        _drain_pipe(fd)
                        continue
                    if mask & selectors.EVENT_WRITE and fd == self.stdin_fd:
                        self._write_stdin()
                    if mask & selectors.EVENT_READ and fd in open_outputs:
                        data = _read(fd)
                        if data:
                            yield self.outputs[fd], data
                        elif data is not None:  # EOF (on a pty, writing to the master is over too)
                            open_outputs.discard(fd)
                            selector.unregister(fd)
        finally:
            selector.close()
            if not self.exited.is_set():
                self.abandon()
            self.close_fds()

    def _update_stdin(self, selector, open_outputs):
        """Watch the stdin fd for writing exactly while bytes are pending; at EOF close the pipe, or type the
        terminal's EOF character (^D) on a pty."""
        fd = self.stdin_fd
        if fd is None:
            return
        with self.lock:
            if self.use_pty and self.stdin_eof and not self.pending and not self.sent_veof:
                self.sent_veof = True
                self.pending += _veof(fd)
            pending = bool(self.pending)
            eof = self.stdin_eof and not pending
        if self.use_pty:
            if fd in open_outputs:
                selector.modify(fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0))
            return
        registered = fd in selector.get_map()
        if eof:
            if registered:
                selector.unregister(fd)
            os.close(fd)
            self.stdin_fd = None
        elif pending and not registered:
            selector.register(fd, selectors.EVENT_WRITE)
        elif not pending and registered:
            selector.unregister(fd)

    def _write_stdin(self):
        with self.lock:
            data = bytes(self.pending[:READ_SIZE])
        if not data:
            return
        try:
            written = os.write(self.stdin_fd, data)
        except BlockingIOError:
            return
        except OSError as exc:  # EPIPE: the command closed its stdin; EIO: the pty is gone
            log.debug("pid %d: stdin write failed (%s); dropping pending input", self.pid, exc)
            with self.lock:
                self.pending.clear()
                self.stdin_eof = True
            return
        with self.lock:
            del self.pending[:written]

    def close_fds(self):
        with self.lock:
            fds = set(self.outputs) | {self.wake_r, self.wake_w}
            if self.stdin_fd is not None:
                fds.add(self.stdin_fd)
            if self.master is not None:
                fds.add(self.master)
            self.outputs, self.stdin_fd, self.master = {}, None, None
            self.wake_w = self.wake_r = -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def reply(self, stdout=b"", stderr=b""):
        """The RunReply once the loop is over (waits for the process itself a little, if need be)."""
        self.exited.wait(KILL_GRACE * 2)
        code = self.process.poll()
        if code is None:
            self.comment = self.comment or "the command did not exit"
            return pb.RunReply(success=False, comment=self.comment, exit_code=-1, started=True, pid=self.pid)
        if not _members(self.pid, self.use_pty):
            with _groups_lock:
                _groups.pop(self.pid, None)
        signum = -code if code < 0 else 0
        exit_code = 128 + signum if signum else code
        comment = self.comment
        if signum and not comment:
            comment = "killed by %s" % _signal_name(signum)
        return pb.RunReply(
            success=exit_code == 0 and not self.timed_out,
            comment=comment,
            exit_code=exit_code,
            signal=signum,
            timed_out=self.timed_out,
            stdout=stdout,
            stderr=stderr,
            started=True,
            pid=self.pid,
        )


def _nonblocking(fd):
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def _drain_pipe(fd):
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


def _read(fd):
    """Bytes read, b"" at EOF (a pty master says EIO when the last slave closes), None if nothing yet."""
    try:
        return os.read(fd, READ_SIZE)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


def _veof(fd):
    try:
        return termios.tcgetattr(fd)[6][termios.VEOF] or b"\x04"
    except (termios.error, OSError, IndexError):
        return b"\x04"


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


def _not_started(exc):
    return pb.RunReply(success=False, comment=str(exc), exit_code=exc.exit_code, started=False)


class ExecAgentServicer(pb_grpc.ExecAgentServicer):
    """Implements exec.ExecAgent on the host; one instance serves every call."""

    def Run(self, request, context):
        """Run one command to completion and return its exit status and collected stdout/stderr."""
        if request.detach:
            return _run_detached(request, context)
        command = Command(request)
        try:
            command.start()
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StartError as exc:
            return _not_started(exc)
        context.add_callback(command.abandon)
        collected = {pb.STDOUT: bytearray(), pb.STDERR: bytearray()}
        truncated = set()
        for stream, data in command.events():
            buf = collected[stream]
            room = RUN_OUTPUT_CAP - len(buf)
            if len(data) > room:
                truncated.add(stream)
                data = data[: max(room, 0)]
            buf += data
        reply = command.reply(bytes(collected[pb.STDOUT]), bytes(collected[pb.STDERR]))
        if truncated:
            names = " and ".join("stdout" if s == pb.STDOUT else "stderr" for s in sorted(truncated))
            note = "%s truncated to %d MiB" % (names, RUN_OUTPUT_CAP >> 20)
            reply.comment = "%s; %s" % (reply.comment, note) if reply.comment else note
        return reply

    def Session(self, request_iterator, context):
        """Run one command interactively: the first input starts it, later inputs carry stdin, EOF, signals and
        window sizes; the outputs stream its stdout/stderr as they come, then its exit status.
        """
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("input") != "start":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first input of a Session must be `start`")
        start = first.start
        window = start.window if start.HasField("window") else None
        command = Command(start.command, use_pty=start.pty, term=start.term, window=window)
        try:
            command.start()
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StartError as exc:
            yield pb.SessionOutput(exit=_not_started(exc))
            return
        context.add_callback(command.abandon)
        threading.Thread(
            target=_feed, args=(request_iterator, command), name="exec-input-%d" % command.pid, daemon=True
        ).start()
        for stream, data in command.events():
            yield pb.SessionOutput(output=pb.Output(stream=stream, data=data))
        yield pb.SessionOutput(exit=command.reply())


def _leave_running(pid):
    """Tell the runtime's supervisor to spare ``pid``'s session when the servicer ends (False without one)."""
    try:
        import sshfleet_runtime
    except ImportError:  # imported on the controller (tests, the template check): nothing supervises it
        return False
    return sshfleet_runtime.leave_running(pid)


def _run_detached(request, context):
    """Start the command in a session of its own, outside what the servicer's end kills, and answer at once."""
    try:
        argv = Command(request).argv()
    except ValueError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    env = dict(os.environ)
    env.update(request.env)
    cwd = request.cwd or os.path.expanduser("~")
    if not os.path.isdir(cwd):
        return _not_started(StartError(126, "cannot change directory to %s: %s" % (cwd, os.strerror(errno.ENOENT))))
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        return _not_started(StartError(127, "%s: command not found" % argv[0]))
    except OSError as exc:
        return _not_started(StartError(126, "%s: %s" % (argv[0], exc.strerror or exc)))
    spared = _leave_running(process.pid)
    # Reaped here while the servicer lives, so that it never lingers as a zombie of ours.
    threading.Thread(target=process.wait, name="exec-detached-%d" % process.pid, daemon=True).start()
    log.info("started pid %d detached%s: %r", process.pid, "" if spared else " (no supervisor here)", argv)
    return pb.RunReply(success=True, comment="detached", exit_code=0, started=True, pid=process.pid)


def _feed(request_iterator, command):
    """Apply the session's later inputs as they arrive; the end of the input stream closes stdin."""
    try:
        for request in request_iterator:
            kind = request.WhichOneof("input")
            if kind == "stdin":
                command.write(request.stdin)
            elif kind == "eof":
                command.close_stdin()
            elif kind == "signal":
                if request.signal != pb.NO_SIGNAL:
                    command.send_signal(int(request.signal))
            elif kind == "window":
                command.resize(request.window.rows, request.window.cols)
            elif kind == "start":
                log.warning("pid %d: ignoring a second start input", command.pid)
    except Exception as exc:  # the call ended (cancelled, client gone): nothing more will come
        log.debug("pid %d: input stream ended: %r", command.pid, exc)
    command.close_stdin()
