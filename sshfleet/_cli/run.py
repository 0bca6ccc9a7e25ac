"""``sshfleet run -i INVENTORY [PATTERN] -- CMD [ARGS...]``: one command on every host, output as it comes.

Built on the exec agent (agents/exec_agent.py): the command's argv reaches execvp on each host untouched (no
re-splitting on spaces), its stdin is /dev/null unless ``--stdin`` (so nothing waits for input that never
comes), ``-t`` gives it a real pseudo-terminal, and Ctrl-C interrupts the remote commands through their
process groups instead of leaving them running.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any, Optional

from sshfleet._cli import EXIT_OK, EXIT_USAGE
from sshfleet._cli._common import (
    add_become_options,
    add_connection_options,
    add_host_options,
    become_from_args,
    check_ssh_options,
    cli_text,
    first_contact_hint,
    is_unknown,
    options_from_args,
    positive_float,
    print_host_list,
)
from sshfleet._cli._common import select_hosts as select_hosts  # call, shell and files take it from here too
from sshfleet._cli._common import split_hosts as split_hosts
from sshfleet._cli._output import (
    ERROR_WORDS,
    STATUS_WORDS,
    STATUSES,
    STDERR,
    STDOUT,
    HostResult,
    LiveLines,
    Progress,
    classify,
    exit_status,
    render_gather,
    summary_lines,
    to_json,
)
from sshfleet._options import HostSpec, resolve_become
from sshfleet.errors import SshFleetError, UsageError

# The exec agent lives in the top-level `agents` package (generated code, outside the strictly typed
# sshfleet/): it is imported by name, and its objects are typed Any here.
EXEC_AGENT_MODULE = "agents.exec_agent"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: our stdout was closed (`| head`), the run was abandoned

DESCRIPTION = """\
Run one command on every host of the inventory that matches PATTERN (or on the hosts given with -H), in
parallel, and show its output as it comes, each line prefixed with its host: stdout lines on stdout, stderr
lines on stderr. The command after -- is passed to execvp exactly as written, one argument per word you
typed (quote as you would locally); -c runs a shell command line with /bin/sh -c instead. The remote stdin
is /dev/null unless --stdin, so a command that reads its input ends instead of hanging. Everything the
command starts in the background (&, nohup, setsid, a double fork) is killed when the run ends; --detach
leaves the command running instead and prints each host's pid.
"""

EPILOG = """\
exit status:
  0    the command exited 0 on every host
  1    it failed on some host (non-zero exit, killed by a signal, or --timeout)
  3    some host was unreachable, or the command could not start there (not found, bad cwd); 3 wins over 1
  130  interrupted with Ctrl-C
  141  our stdout was closed (e.g. | head): the run was abandoned
  2    usage error

Ctrl-C once sends SIGINT to the remote commands' process groups and shows which hosts have finished; a
second Ctrl-C abandons the run at once (the remote commands are killed when the agent closes).

examples:
  sshfleet run -i lab.ini web -- systemctl is-active nginx
  sshfleet run -H node[01-04] -b -- uname -r
  sshfleet run -i lab.ini -c 'df -h / | tail -1'
  echo hi | sshfleet run -H node01,node02 --stdin -- cat
  sshfleet run -H node01 -t -- top
  sshfleet run -i lab.ini all -x 'db*' -l admin -f 16 -o ConnectTimeout=5 -- uptime
  sshfleet run --list-hosts -i lab.ini 'web:&prod'     # the hosts, as ansible --list-hosts prints them
"""


class _RunParser(argparse.ArgumentParser):
    """Everything after the first ``--`` is the command, verbatim: argparse would otherwise take the command's
    first word for PATTERN and its dashes for our options.

    Without ``--`` (nor ``-c``), a command typed after the hosts (``run -H web1 uname -r``) would be misread,
    its ``-r`` or ``-l`` taken for ours: the words from the command on are set aside, unparsed, and
    ``check_command`` says where the ``--`` goes."""

    def parse_known_args(  # type: ignore[override]
        self, args: Optional[list[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        command: Optional[list[str]] = None
        unmarked: Optional[int] = None
        if "--" in words:
            at = words.index("--")
            words, command = words[:at], words[at + 1 :]
        else:
            unmarked = self._command_start(words)
        parsed, extra = super().parse_known_args(words if unmarked is None else words[:unmarked], namespace)
        parsed.argv = command
        parsed.unmarked_command = None
        if unmarked is not None:
            parsed.unmarked_command = (words[:unmarked], words[unmarked:])
        return parsed, extra

    def _command_start(self, words: list[str]) -> Optional[int]:
        """Where a command typed without ``--`` begins: the first positional word after PATTERN (after the
        first positional word with -i, the first one without). None when there is none, or with -c."""
        positional: list[int] = []
        inventory = shell = False
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("-") and len(word) > 1:
                name, _, attached = word.partition("=") if word.startswith("--") else (word[:2], "", word[2:])
                action = self._option_string_actions.get(name)
                if action is None and word.startswith("--"):
                    action = self._option_string_actions.get(word)
                takes_value = action is not None and action.nargs != 0
                if action is not None and action.dest == "inventory":
                    inventory = True
                if action is not None and action.dest == "shell":
                    shell = True
                i += 2 if takes_value and not attached else 1
                continue
            positional.append(i)
            i += 1
        wanted = 1 if inventory else 0
        if shell or len(positional) <= wanted:
            return None
        return positional[wanted]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    previous = subparsers._parser_class
    subparsers._parser_class = _RunParser
    try:
        parser = subparsers.add_parser(
            "run",
            help="run a command on every host, output live with host prefixes",
            description=DESCRIPTION,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            usage="%(prog)s [-i INVENTORY [PATTERN] | -H HOSTS] [options] (-- CMD [ARGS...] | -c 'SHELL LINE')",
        )
    finally:
        subparsers._parser_class = previous
    where = parser.add_argument_group("hosts")
    add_host_options(where, list_hosts=True)
    what = parser.add_argument_group("command")
    what.add_argument("-c", "--shell", metavar="LINE", help="run LINE with /bin/sh -c instead of -- CMD ARGS")
    what.add_argument(
        "-I", "--stdin", action="store_true", help="send our stdin to every host (default: remote stdin is empty)"
    )
    what.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="give the command a pseudo-terminal; one host and a "
        "terminal here: interactive (raw mode, window size follows, Ctrl-C goes to the command)",
    )
    what.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="kill the command (SIGTERM, SIGKILL 2 s later) if it runs longer; it then counts as failed",
    )
    what.add_argument(
        "--detach",
        action="store_true",
        help="leave the command running on the hosts after the run ends (in a session of its own, stdin, stdout "
        "and stderr on /dev/null: redirect with -c to keep its output); prints each host's pid. Without it, "
        "everything the command starts (&, nohup, setsid alike) is killed when the run ends",
    )
    output = parser.add_argument_group("output")
    mode = output.add_mutually_exclusive_group()
    mode.add_argument(
        "-b",
        "--gather",
        action="store_true",
        help="no live output: at the end, group hosts with identical output and exit (node[01-04,07])",
    )
    mode.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object {host: {exit_code, signal, timed_out, stdout, stderr, status, error}}",
    )
    mode.add_argument(
        "--outdir",
        metavar="DIR",
        help="no live output: each host's stdout, stderr and exit code go to DIR/HOST.out, .err, .rc "
        "(none for hosts that could not be reached)",
    )
    ssh = parser.add_argument_group("connection")
    add_connection_options(
        ssh, timeout_flag="--connect-timeout", forks_help="hosts connecting at once (default 64)", transport=True
    )
    ssh.add_argument("--python", metavar="PATH", help="python3 on the hosts (default: the inventory's, or python3)")
    add_become_options(parser.add_argument_group("privilege escalation"))
    # No --transport given: the fast path where it can serve (see _start_fast), else paramiko, as before.
    parser.set_defaults(func=run, transport=None)


def check_command(args: argparse.Namespace) -> None:
    unmarked = getattr(args, "unmarked_command", None)
    if unmarked is not None:
        ours, command = unmarked
        fix = shlex.join(["sshfleet", "run", *ours, "--", *command])
        raise UsageError(f"the command goes after --, so that its words are not read as ours: {fix}")
    if args.shell is not None and args.argv is not None:
        raise UsageError("give the command after -- or with -c, not both")
    if args.shell is None and not args.argv:
        hint = ""
        if args.pattern:
            fix = shlex.join(["sshfleet", "run", "-i", args.inventory or "INVENTORY", "--", args.pattern])
            hint = f" (is {args.pattern!r} the command? put it after --: {fix})"
        raise UsageError(f"no command: give -- CMD [ARGS...] or -c 'SHELL LINE'{hint}")
    if args.shell is not None and not args.shell.strip():
        raise UsageError("-c needs a non-empty command line")


def check_detach(args: argparse.Namespace) -> None:
    if not args.detach:
        return
    given = {"--stdin": args.stdin, "--timeout": args.timeout, "-t": args.tty, "-b": args.gather}
    given["--outdir"] = args.outdir
    clashing = [flag for flag, value in given.items() if value]
    if clashing:
        raise UsageError(
            f"--detach leaves the command running with no input or output here: drop {' and '.join(clashing)} "
            "(redirect its output on the host with -c 'CMD > FILE 2>&1')"
        )


# Hosts refused at login are told apart from those not reached at all, in ping's words.
REFUSED = {"auth_failed": "auth failed", "hostkey_rejected": "host key rejected"}


def classify_host(host: str, outcome: Any) -> HostResult:
    """``classify`` in the command line's words: refused logins named as ping names them, and library advice
    given as flags (``--accept-new``)."""
    result = classify(host, outcome)
    if result.error is None or result.status != "unreachable":
        return result
    kind = str(result.error.get("kind", ""))
    result.error = {**result.error, "message": cli_text(str(result.error.get("message", "")))}
    result.label = cli_text(result.label)
    if kind in REFUSED:
        said = ERROR_WORDS.get(kind, kind.replace("_", " "))
        if result.label.startswith(said):
            result.label = REFUSED[kind] + result.label[len(said) :]
    return result


def summary(results: list[HostResult], elapsed: float) -> list[str]:
    """``summary_lines``, with the count of unreachable hosts split: auth failed and host key rejected apart."""
    lines = summary_lines(results, elapsed)[:-1]

    def word(r: HostResult) -> str:
        kind = str((r.error or {}).get("kind", ""))
        return REFUSED[kind] if r.status == "unreachable" and kind in REFUSED else STATUS_WORDS[r.status]

    order = [STATUS_WORDS[s] for s in STATUSES]
    order[order.index("unreachable") + 1 : order.index("unreachable") + 1] = REFUSED.values()
    counts = [f"{n} {w}" for w in order if (n := sum(1 for r in results if word(r) == w))]
    noun = "host" if len(results) == 1 else "hosts"
    lines.append(f"{len(results)} {noun}: {', '.join(counts)} in {elapsed:.2f}s")
    return lines


def _hint(args: argparse.Namespace, results: list[HostResult]) -> list[str]:
    unknown = [
        r.host
        for r in results
        if (r.error or {}).get("kind") == "hostkey_rejected" and is_unknown(str((r.error or {}).get("message")))
    ]
    hint = first_contact_hint(args, unknown)
    return [hint] if hint else []


def _binary(file: IO[str]) -> IO[bytes]:
    """The byte layer under a text stream, after flushing what was written as text."""
    file.flush()
    buffer = getattr(file, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return _TextAsBinary(file)  # type: ignore[return-value]


class _TextAsBinary:
    """For text streams without ``.buffer`` (tests' StringIO): decode and write."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        self.file.write(data.decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self.file.flush()


def _safe_name(host: str) -> str:
    return host.replace("/", "_").replace("\0", "_") or "_"


class _Collect:
    """What each mode does with output as it arrives: print live, keep for the end, or write to files."""

    def __init__(self, args: argparse.Namespace, hosts: list[str], progress: Progress) -> None:
        self.keep = args.gather or args.json
        self.outdir = Path(args.outdir) if args.outdir else None
        self.kept: dict[str, dict[str, bytearray]] = {h: {STDOUT: bytearray(), STDERR: bytearray()} for h in hosts}
        self.files: dict[tuple[str, str], IO[bytes]] = {}
        self.live: Optional[LiveLines] = None
        if not self.keep and self.outdir is None:
            colour = (sys.stdout.isatty(), sys.stderr.isatty())
            out, err = _binary(sys.stdout), _binary(sys.stderr)
            self.live = LiveLines(hosts, out, err, colour=colour, strip_cr=args.tty, before_write=progress.clear)
        if self.outdir is not None:
            self.outdir.mkdir(parents=True, exist_ok=True)

    def _file(self, host: str, stream: str) -> IO[bytes]:
        assert self.outdir is not None
        key = (host, stream)
        if key not in self.files:
            suffix = ".out" if stream == STDOUT else ".err"
            self.files[key] = open(self.outdir / (_safe_name(host) + suffix), "wb")  # noqa: SIM115
        return self.files[key]

    def feed(self, host: str, stream: str, data: bytes) -> None:
        if self.live is not None:
            self.live.feed(host, stream, data)
        elif self.outdir is not None:
            self._file(host, stream).write(data)
        else:
            self.kept[host][stream] += data

    def end(self, host: str, result: HostResult, outcome: Any) -> None:
        if self.live is not None:
            self.live.end(host)
        if self.keep:
            result.stdout, result.stderr = self.kept[host][STDOUT], self.kept[host][STDERR]
        if self.outdir is not None and result.exit_code is not None:
            for stream in (STDOUT, STDERR):
                file = self._file(host, stream)
                if result.status == "not_started" and stream == STDERR:
                    file.write(f"{outcome.comment}\n".encode())
                file.close()
            (self.outdir / (_safe_name(host) + ".rc")).write_text(f"{result.exit_code}\n", encoding="ascii")

    def close(self) -> None:
        for file in self.files.values():
            file.close()


class _CtrlC:
    """SIGINT while the commands run: the first is forwarded to the remote commands, the second aborts.

    The handler only counts and queues the signal input (ExecStream's input queue is a SimpleQueue, whose
    put is reentrant); everything else, printing included, happens in the main loop.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.count = 0
        self.previous: Any = None

    def __enter__(self) -> _CtrlC:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            self.stream.send_signal("SIGINT")

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)


def _say(*lines: str) -> None:
    for line in lines:
        print(f"sshfleet: {line}", file=sys.stderr)
    sys.stderr.flush()


def _start_agent(args: argparse.Namespace, specs: list[HostSpec], become: dict[str, Any]) -> Any:
    import importlib

    module = importlib.import_module(EXEC_AGENT_MODULE)
    return module.ExecAgent(specs, ssh_options=options_from_args(args), python=args.python, **become)


def _start_fast(
    args: argparse.Namespace, specs: list[HostSpec], transport: Optional[str], become: dict[str, Any]
) -> Any:
    """The fast path (``sshfleet._adhoc``: one ssh process per host, a standard-library helper there, no agent)
    when it gives the same run: a plain command (not -t, not --detach), the ssh binary here, no jump host, no
    host that becomes another user (--become, or the inventory's ansible_become), and no ``--transport
    paramiko``. None otherwise: the exec agent serves the run, as before."""
    if args.tty or args.detach or transport == "paramiko":
        return None
    if any(resolve_become(spec, **become) for spec in specs):
        return None
    from sshfleet import _adhoc
    from sshfleet._ssh._oneshot import resolve_direct

    options = options_from_args(args)
    hosts = resolve_direct(specs, options)
    if hosts is None:
        return None
    return _adhoc.AdhocRun(hosts, forks=options.forks, python=args.python, keepalive=float(options.keepalive))


def run(args: argparse.Namespace) -> int:
    try:
        check_ssh_options(args)
        if args.list_hosts:
            print_host_list(select_hosts(args, allow_empty=True))
            return EXIT_OK
        check_command(args)
        check_detach(args)
        specs = select_hosts(args)
        become = become_from_args(args)  # asks for -K's password now, once
    except SshFleetError as exc:
        print(f"sshfleet run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    requested, args.transport = args.transport, args.transport or "paramiko"
    started = time.monotonic()
    interactive = args.tty and len(specs) == 1 and not (args.gather or args.json or args.outdir)
    interactive = interactive and _is_tty(sys.stdin) and _is_tty(sys.stdout)
    agent_log = logging.getLogger("sshfleet._agent")
    quiet = args.verbose == 0 and agent_log.level == logging.NOTSET
    if quiet:  # per-host failures are in our summary; the agent's warnings would say it twice
        agent_log.setLevel(logging.ERROR)
    try:
        fast = _start_fast(args, specs, requested, become)
        if fast is not None:
            with fast:
                return _run_fleet(fast, args, started)
        with _start_agent(args, specs, become) as agent:
            if interactive:
                from sshfleet._cli._run_tty import run_interactive

                results = [classify_host(*run_interactive(agent, args))]
                if any(r.status != "ok" for r in results):
                    _say(*summary(results, time.monotonic() - started), *_hint(args, results))
                return exit_status(results)
            if args.detach:
                return _run_detached(agent, args, started)
            return _run_fleet(agent, args, started)
    finally:
        if quiet:
            agent_log.setLevel(logging.NOTSET)


def _is_tty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def _terminal_window() -> tuple[int, int]:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        size = os.get_terminal_size(sys.stdout.fileno())
        if size.lines and size.columns:
            return size.lines, size.columns
    return 24, 80


def _run_fleet(agent: Any, args: argparse.Namespace, started: float) -> int:
    hosts = agent.hosts
    stdin: Any = None
    if args.stdin:
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
    tty_term = os.environ.get("TERM", "dumb") if _is_tty(sys.stdout) else "dumb"
    stream = agent.stream(
        args.argv,
        shell=args.shell,
        stdin=stdin,
        pty=args.tty,
        term=tty_term if args.tty else None,
        window=_terminal_window() if args.tty else None,
        timeout=args.timeout,
    )
    progress = Progress(sys.stderr, len(hosts), enabled=_is_tty(sys.stderr) and not args.json)
    sink = _Collect(args, hosts, progress)
    results: dict[str, HostResult] = {}
    told = aborted = broken = False
    try:
        with _CtrlC(stream) as ctrl_c:
            while True:
                if ctrl_c.count >= 2:
                    aborted = True
                    break
                if ctrl_c.count == 1 and not told:
                    told = True
                    progress.clear()
                    _report_interrupt(hosts, results)
                try:
                    event = stream.poll(0.1)
                except StopIteration:
                    break
                try:
                    if event is None:
                        progress.draw(len(results), [h for h in hosts if h not in results])
                    elif event.kind == "exit":
                        result = results[event.host] = classify_host(event.host, event.data)
                        sink.end(event.host, result, event.data)
                        progress.draw(len(results), [h for h in hosts if h not in results])
                    else:
                        sink.feed(event.host, event.kind, event.data)
                except BrokenPipeError:  # `sshfleet run ... | head`: nobody reads any more, stop like SIGPIPE would
                    broken = True
                    _silence_stdout()
                    break
        if aborted or broken:
            progress.clear()
            if aborted:
                _say("aborted: not waiting for the remaining hosts (their commands are killed as the agent closes)")
            stream.cancel()
    finally:
        progress.clear()
        sink.close()
    ordered = [results.get(h) or classify(h, None) for h in hosts]
    for result in ordered:
        if result.status == "interrupted" and sink.keep:
            result.stdout, result.stderr = sink.kept[result.host][STDOUT], sink.kept[result.host][STDERR]
    if args.json:
        import json

        print(json.dumps(to_json(ordered), indent=2))
    elif args.gather:
        render_gather(ordered, _binary(sys.stdout), _binary(sys.stderr))
    _say(*summary(ordered, time.monotonic() - started), *_hint(args, ordered))
    if broken:
        return EXIT_BROKEN_PIPE
    return EXIT_INTERRUPTED if (told or aborted) else exit_status(ordered)


def _run_detached(agent: Any, args: argparse.Namespace, started: float) -> int:
    """Start the command on every host and leave it running: one line per host with its pid, then the summary."""
    responses = agent.Run(args.argv, shell=args.shell, detach=True)
    outcomes = dict(responses)
    results = [classify_host(host, outcomes.get(host)) for host in agent.hosts]
    if args.json:
        import json

        document = to_json(results)
        for host, entry in document.items():
            entry["pid"] = getattr(outcomes.get(host), "pid", None) if entry["status"] == "ok" else None
        print(json.dumps(document, indent=2))
    else:
        width = max(len(h) for h in agent.hosts) + 1
        for result in results:
            if result.status == "ok":
                print(f"{result.host + ':':<{width}} detached, pid {outcomes[result.host].pid}")
        sys.stdout.flush()
    for result in results:
        if result.status == "ok":
            result.label = "detached"
    _say(*summary(results, time.monotonic() - started), *_hint(args, results))
    return exit_status(results)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's last flush does not fail on the closed pipe too."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _report_interrupt(hosts: list[str], results: dict[str, HostResult]) -> None:
    from sshfleet.inventory import fold_hosts

    running = [h for h in hosts if h not in results]
    finished = fold_hosts([h for h in hosts if h in results]) or "none"
    _say(
        f"interrupt: sent SIGINT to the command on {len(running)} running host(s); "
        f"finished: {finished}; still running: {fold_hosts(running) or 'none'} (Ctrl-C again to abort)"
    )
