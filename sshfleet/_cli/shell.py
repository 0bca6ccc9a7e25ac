"""``sshfleet shell``: an interactive prompt over a fleet, to pick hosts, load agents, call methods, run commands.

What users of ansible-console, clush and pdsh expect: ``use PATTERN`` (``cd`` in ansible-console) with
``+``/``-`` like clush, ``!cmd``, ``=`` to toggle gathered output, ``set`` at run time, history with Ctrl-R,
tab completion (of commands, agents, methods, fields, enum values, hosts, groups), and a Ctrl-C that cancels
the call in progress, with its remote work, instead of the whole session. Ctrl-D or ``exit`` closes every
agent and leaves nothing running on the hosts.

The state and the commands live in ``_shell_session`` (targets, agents, calls) and ``_shell_exec`` (``!``);
this module is the prompt around them.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from sshfleet._cli import EXIT_OK, EXIT_USAGE
from sshfleet._cli._common import (
    add_become_options,
    add_connection_options,
    add_host_options,
    become_from_args,
    options_from_args,
    positive_float,
    positive_int,
)
from sshfleet.errors import SshFleetError, UsageError

if TYPE_CHECKING:
    from sshfleet._cli._shell_session import ShellSession

log = logging.getLogger(__name__)

COMMANDS: dict[str, str] = {
    "hosts": "the selected hosts (also ?)",
    "use": "use PATTERN | +PATTERN | -PATTERN: select hosts for load and !cmd (Ansible patterns; also cd)",
    "groups": "the inventory's groups and their hosts",
    "load": "load NAME | path.proto: start an agent on the selected hosts (again: on those it lacks)",
    "agents": "the loaded agents with their hosts and state, and the built-in agents one can load",
    "unload": "unload NAME: stop an agent on its hosts",
    "retry": "start the loaded agents again on the hosts where they failed to start",
    "set": "set timeout SECONDS|default (calls and !cmd) | forks N (hosts started at once by later loads) | "
    "output table|json|gathered; set alone shows them",
    "=": "toggle gathered output: identical results grouped under folded host names",
    "py": "a Python prompt with fleet, agents, last (the last Responses); Ctrl-D comes back",
    "help": "help [COMMAND | Method]: this list, or a method's documentation and fields",
    "exit": "close every agent and leave (also quit, Ctrl-D)",
}
ALIASES = {"?": "hosts", "list": "hosts", "cd": "use", "quit": "exit"}
BUILTINS = [*COMMANDS, *ALIASES]
SYNTAX = [
    "Method field=value ...    call Method of the loaded agent that has it (agent.Method when several do)",
    "!cmd args                 run a shell command line on the selected hosts; !! repeats the last one",
]

DESCRIPTION = """\
An interactive prompt over the hosts of the inventory that match PATTERN (or those given with -H): select
hosts, load agents (built-in by name, or a .proto whose NAME_servicer.py sits beside it), call their
methods with field=value arguments, run commands with !cmd. Every agent shares each host's one SSH
connection. Type help at the prompt.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "shell",
        help="interactive prompt: select hosts, load agents, call methods, run !commands",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-i INVENTORY [PATTERN] | -H HOSTS] [--agent NAME_OR_PROTO ...] [options]",
    )
    where = parser.add_argument_group("hosts")
    add_host_options(where)
    what = parser.add_argument_group("shell")
    what.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME_OR_PROTO",
        help="load this agent at start (repeatable): a built-in's name or a .proto path",
    )
    what.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="deadline of each call (default 60)")
    what.add_argument(
        "--history",
        metavar="FILE",
        help="history file (default: $XDG_STATE_HOME/sshfleet/history, else ~/.local/state/sshfleet/history)",
    )
    ssh = parser.add_argument_group("connection")
    add_connection_options(
        ssh, timeout_flag="--connect-timeout", forks_help="hosts connecting at once (default 64)", transport=True
    )
    ssh.add_argument("--python", metavar="PATH", help="python3 on the hosts (default: the inventory's, or python3)")
    add_become_options(parser.add_argument_group("privilege escalation"))
    parser.set_defaults(func=shell)


def history_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where history is kept: the XDG state directory, as less and bash do."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sshfleet" / "history"


def shell(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sshfleet._cli._common import select_hosts
    from sshfleet._cli._shell_session import ShellSession
    from sshfleet._fleet import Fleet
    from sshfleet.inventory import Inventory

    try:
        specs = select_hosts(args)
        inventory = Inventory.load(args.inventory) if args.inventory else Inventory.from_hosts(specs)
        become = become_from_args(args)
    except SshFleetError as exc:
        print(f"sshfleet shell: {exc}", file=sys.stderr)
        return EXIT_USAGE
    agent_log = logging.getLogger("sshfleet._agent")
    quiet = args.verbose == 0 and agent_log.level == logging.NOTSET
    if quiet:  # the shell reports each host's failure itself
        agent_log.setLevel(logging.ERROR)
    # soft_wrap: an error stays one line however narrow the terminal; not a terminal: no wrap at 80 columns.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
    fleet = Fleet(specs, ssh_options=options_from_args(args))
    session = ShellSession(
        fleet, inventory, console, python=args.python, label=args.pattern or "all", commands=BUILTINS, become=become
    )
    session.settings.timeout = args.timeout
    try:
        prompt = Shell(session, history=args.history)
        for name in args.agent:
            prompt.guarded("load", partial(prompt.do_load, "", (name,)))
        prompt.loop()
    finally:
        with console.status("closing agents"):
            session.close()
        if quiet:
            agent_log.setLevel(logging.NOTSET)
    return EXIT_OK


class _Source:
    """The completer's view of the session (sshfleet._cli._shell_complete.CompletionSource)."""

    def __init__(self, session: ShellSession) -> None:
        self.session = session

    def commands(self) -> list[str]:
        return [c for c in BUILTINS if c not in ("?", "=")]

    def methods(self) -> Mapping[str, Any]:
        return {name: method for name, (_, method) in self.session.methods().items()}

    def loaded_names(self) -> list[str]:
        return list(self.session.loaded)

    def host_names(self) -> list[str]:
        return list(self.session.fleet.hosts)

    def group_names(self) -> list[str]:
        return [name for name, _ in self.session.groups()]


class Shell:
    """The prompt: reads lines, runs them, prints one-line errors, and goes on until exit or Ctrl-D."""

    def __init__(self, session: ShellSession, history: Optional[str] = None) -> None:
        self.session = session
        self.console = session.console
        self.history_file = Path(history) if history else history_path()
        self.last_bang: Optional[str] = None
        self.handlers: dict[str, Callable[[str, tuple[str, ...]], Optional[bool]]] = {
            "hosts": self.do_hosts,
            "use": self.do_use,
            "groups": self.do_groups,
            "load": self.do_load,
            "agents": self.do_agents,
            "unload": self.do_unload,
            "retry": self.do_retry,
            "set": self.do_set,
            "=": self.do_toggle,
            "py": self.do_py,
            "help": self.do_help,
            "exit": self.do_exit,
        }

    # --- the loop ---------------------------------------------------------------------------------------

    def prompt_text(self) -> str:
        return f"sshfleet {self.session.label} ({len(self.session.selection)})> "

    def loop(self) -> None:
        if not sys.stdin.isatty():  # a script on stdin: no terminal to draw a prompt on
            for line in sys.stdin:
                if self.run_line(line) is False:
                    return
            return
        prompt = self._prompt_session()
        while True:
            try:
                line = prompt.prompt(self.prompt_text())
            except KeyboardInterrupt:
                continue  # as in bash: Ctrl-C at the prompt drops the line
            except EOFError:
                self.console.print("exit")
                return
            if self.run_line(line) is False:
                return

    def _prompt_session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory

        from sshfleet._cli._shell_complete import ShellCompleter

        history: History
        try:
            self.history_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.history_file.touch(mode=0o600, exist_ok=True)
            history = FileHistory(str(self.history_file))
        except OSError as exc:
            self.console.print(f"history not kept: {self.history_file}: {exc.strerror or exc}", style="yellow")
            history = InMemoryHistory()
        # Completion on Tab only, as readline does: while-typing completion would also race Tab's "insert the
        # common part" (prompt_toolkit runs one completion at a time and drops the second).
        return PromptSession(
            history=history, completer=ShellCompleter(_Source(self.session)), complete_while_typing=False
        )

    def run_line(self, line: str) -> Optional[bool]:
        """Run one line; False means leave. Errors are one line, and the shell goes on after them."""
        from sshfleet._cli._shell_parse import classify_line

        def run() -> Optional[bool]:
            parsed = classify_line(line, BUILTINS)
            if parsed.kind == "empty":
                return None
            if parsed.kind == "bang":
                self.do_bang(parsed.word or parsed.rest)
                return None
            if parsed.kind == "builtin":
                word = ALIASES.get(parsed.word, parsed.word)
                return self.handlers[word](parsed.rest, parsed.args)
            self.session.call(parsed.word, parsed.args)
            return None

        head = line.strip().split(" ", 1)[0]
        return self.guarded(ALIASES.get(head, head), run)

    def guarded(self, what: str, action: Callable[[], Optional[bool]]) -> Optional[bool]:
        """``action()``, with its errors as one line and Ctrl-C as "interrupted": the shell goes on."""
        try:
            return action()
        except SshFleetError as exc:
            self.error(str(exc))
        except KeyboardInterrupt as exc:
            from sshfleet._cli._shell_session import Interrupted

            if isinstance(exc, Interrupted):
                self.console.print(str(exc), style="yellow", markup=False)
            elif what in COMMANDS:
                self.console.print(f"interrupted: {what} stopped", style="yellow")
            else:
                self.console.print("interrupted: the call was cancelled on every host", style="yellow")
        except Exception as exc:  # a bug must not cost the user the session and its agents
            log.debug("unexpected error", exc_info=True)
            self.error(f"internal error: {exc!r}")
        return None

    def error(self, message: str) -> None:
        from rich.text import Text

        first = (message.strip().splitlines() or ["?"])[0]
        self.console.print(Text(f"error: {first}", style="red"))

    # --- commands ---------------------------------------------------------------------------------------

    def do_hosts(self, rest: str, args: tuple[str, ...]) -> None:
        self.console.print(self.session.describe_selection(), markup=False)

    def do_use(self, rest: str, args: tuple[str, ...]) -> None:
        if not rest:
            return self.do_hosts(rest, args)
        self.session.use(rest)
        self.do_hosts(rest, args)
        return None

    def do_groups(self, rest: str, args: tuple[str, ...]) -> None:
        from sshfleet.inventory import fold_hosts

        for name, hosts in self.session.groups():
            self.console.print(f"{name:<16} {fold_hosts(hosts)} ({len(hosts)})", markup=False)

    def do_load(self, rest: str, args: tuple[str, ...]) -> None:
        if not args:
            raise UsageError(f"load NAME | path.proto (built-in agents: {', '.join(self.session.loadable())})")
        for name in args:
            self.session.load(name)

    def do_agents(self, rest: str, args: tuple[str, ...]) -> None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        rows = self.session.agents_table()
        if rows:
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for column in ("agent", "class", "ready on", "failed on"):
                table.add_column(column)
            for row in rows:
                table.add_row(*(Text(cell) for cell in row))  # Text: host names and paths are not markup
            self.console.print(table)
        else:
            self.console.print("no agent loaded")
        built_in = ", ".join(self.session.loadable())
        self.console.print(f"[dim]load one of: {built_in}, or a path to a .proto[/]")

    def do_unload(self, rest: str, args: tuple[str, ...]) -> None:
        if not args:
            raise UsageError("unload NAME (see agents)")
        for name in args:
            self.session.unload(name)

    def do_retry(self, rest: str, args: tuple[str, ...]) -> None:
        if not self.session.retry():
            self.console.print("nothing to retry: every loaded agent started on all its hosts")

    def do_set(self, rest: str, args: tuple[str, ...]) -> None:
        from sshfleet._cli._shell_session import OUTPUTS

        settings = self.session.settings
        if not args:
            timeout = f"{settings.timeout:g}" if settings.timeout else "default (60)"
            self.console.print(f"timeout {timeout}\nforks {settings.forks}\noutput {settings.output}", markup=False)
            return
        if len(args) != 2:
            raise UsageError("set timeout SECONDS|default | forks N | output table|json|gathered")
        name, value = args
        try:
            if name == "timeout":
                settings.timeout = None if value == "default" else positive_float(value)
            elif name == "forks":
                settings.forks = positive_int(value)
            elif name == "output":
                if value not in OUTPUTS:
                    raise UsageError(f"output is one of {', '.join(OUTPUTS)}, not {value!r}")
                settings.output = value
            else:
                raise UsageError(f"no setting {name!r}: timeout, forks or output")
        except (ValueError, argparse.ArgumentTypeError) as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"set {name}: {exc}") from exc

    def do_toggle(self, rest: str, args: tuple[str, ...]) -> None:
        settings = self.session.settings
        settings.output = "table" if settings.output == "gathered" else "gathered"
        self.console.print(f"output {settings.output}")

    def do_bang(self, command: str) -> None:
        from sshfleet._cli._shell_exec import run_command

        if command == "!!":
            if self.last_bang is None:
                raise UsageError("no command to repeat yet")
            command = self.last_bang
            self.console.print(f"!{command}", markup=False)
        if not command:
            raise UsageError("!cmd args: a command line to run on the selected hosts")
        self.last_bang = command
        run_command(self.session, command)

    def do_py(self, rest: str, args: tuple[str, ...]) -> None:
        import code

        session = self.session
        agents = {key: loaded.instances[0][1] for key, loaded in session.loaded.items() if loaded.instances}
        namespace: dict[str, Any] = {"fleet": session.fleet, "agents": agents, "last": session.last}
        namespace.update((key, agent) for key, agent in agents.items() if key.isidentifier())
        names = ", ".join(namespace)
        with contextlib.suppress(SystemExit):
            code.interact(
                banner=f"Python {sys.version.split()[0]}: {names}; Ctrl-D to go back", local=namespace, exitmsg=""
            )

    def do_help(self, rest: str, args: tuple[str, ...]) -> None:
        if not args:
            for name, text in COMMANDS.items():
                self.console.print(f"  {name:<8} {text}", markup=False)
            for text in SYNTAX:
                self.console.print(f"  {text}", markup=False)
            return
        word = ALIASES.get(args[0], args[0])
        if word in COMMANDS:
            self.console.print(f"{word}: {COMMANDS[word]}", markup=False)
            return
        loaded, method = self.session.find_method(word)
        self.console.print(method_help(loaded.agent_class, method), markup=False)

    def do_exit(self, rest: str, args: tuple[str, ...]) -> bool:
        return False


def method_help(agent_class: Any, method: Any) -> str:
    """A method's documentation from the proto (the generated method's docstring) and its request fields."""
    from sshfleet._cli._shell_complete import field_type_name

    doc = inspect.cleandoc(getattr(getattr(agent_class, method.name, None), "__doc__", None) or "")
    lines = [line for line in doc.splitlines() if not line.strip().startswith("timeout:")]
    kind = "stream of " if method.server_streaming else ""
    head = f"{agent_class.__name__}.{method.name}({method.input_type.name}) -> {kind}{method.output_type.name}"
    fields = [f"  {f.name}: {field_type_name(f)}" for f in method.input_type.fields]
    body = "\n".join(lines).split("\n\nReturns:")[0].strip()
    if "Args:" in body:  # the docstring lists the fields with their types and comments already
        fields = []
    elif not fields:
        fields = ["  (no fields)"]
    return "\n".join([head, *([body] if body else []), *fields])
