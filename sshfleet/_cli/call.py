"""``sshfleet call [-i INVENTORY] [PATTERN | -H HOSTS] AGENT Method [field=value ...]``: one call, every host.

The one-shot form of the shell, for scripts and CI jobs: start AGENT (a built-in agent's name or a .proto
whose ``NAME_servicer.py`` sits beside it) on the hosts, call Method once, print a table with one row per host
(or JSON), close everything, and exit with the status ``run`` uses. The request is checked before anything
goes on the network, so a typo costs no SSH connection.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from sshfleet._cli import EXIT_USAGE
from sshfleet._cli._common import (
    add_become_options,
    add_connection_options,
    add_host_options,
    become_from_args,
    options_from_args,
    positive_float,
)
from sshfleet.errors import SshFleetError, UsageError

DESCRIPTION = """\
Start AGENT on every host of the inventory that matches PATTERN (or on the hosts given with -H), call
Method once with the fields given as field=value, print one row per host, and stop the agent again.

AGENT is a built-in agent's name (sysinfo, exec, tcpdump, http_server, http_client) or the path of a .proto
whose NAME_servicer.py sits beside it. Values are Python literals (3, 2.5, 'text', [1, 2], {'key': 1},
True); a bare word is text for a string field and a value's name for an enum field.
"""

EPILOG = """\
exit status:
  0    the call succeeded on every host
  1    it failed on some host (an RPC error, or a reply whose success field is false)
  3    some host was unreachable or the agent could not start there; 3 wins over 1
  2    usage error (unknown agent, method or field, a value of the wrong type, a proto that does not compile)
  130  interrupted with Ctrl-C

examples:
  sshfleet call -i lab.ini routers sysinfo Uname
  sshfleet call -H node[01-04] sysinfo Sleep seconds=2.5 --timeout 10
  sshfleet call -i lab.ini agents/my.proto Configure port=8080 tags="['a', 'b']" --json
  sshfleet call -H node01 -l admin --become -K exec Run argv="['id', '-un']"
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "call",
        help="call one agent method on every host and print each host's reply",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-i INVENTORY [PATTERN] | -H HOSTS] AGENT Method [field=value ...] [options]",
    )
    where = parser.add_argument_group("hosts")
    add_host_options(where, pattern=False)
    parser.add_argument("words", nargs="*", metavar="[PATTERN] AGENT Method [field=value]", help=argparse.SUPPRESS)
    what = parser.add_argument_group("call")
    what.add_argument("--json", action="store_true", help="print {host: {ok, status, reply | error}} as JSON")
    what.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="deadline of the call (default: 60)")
    ssh = parser.add_argument_group("connection")
    add_connection_options(
        ssh, timeout_flag="--connect-timeout", forks_help="hosts connecting at once (default 64)", transport=True
    )
    ssh.add_argument("--python", metavar="PATH", help="python3 on the hosts (default: the inventory's, or python3)")
    add_become_options(parser.add_argument_group("privilege escalation"))
    parser.set_defaults(func=call)


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, dict[str, object], list[Any]]:
    """Everything checked before the network: hosts, agent class, method, fields. Raises SshFleetError."""
    from google.protobuf import message_factory

    from sshfleet._cli._common import select_hosts
    from sshfleet._cli._shell_agents import method_of, resolve_agent
    from sshfleet._cli._shell_parse import parse_fields, split_call_words
    from sshfleet._messages import build_request

    words = split_call_words(args.words, with_inventory=bool(args.inventory))
    args.pattern = words.pattern
    agent_class = resolve_agent(words.agent)
    method = method_of(agent_class, words.method)
    if method.client_streaming:
        raise UsageError(f"{words.method} takes a stream of requests: call it from Python or the shell's py")
    fields = parse_fields(method, words.assignments, agent=agent_class.__name__)
    build_request(message_factory.GetMessageClass(method.input_type), fields, method=method.name)  # check only
    specs = select_hosts(args)
    return agent_class, method, fields, specs


def call(args: argparse.Namespace) -> int:
    try:
        agent_class, method, fields, specs = _prepare(args)
        become = become_from_args(args)  # after the checks: a typo costs no password prompt either
    except SshFleetError as exc:
        print(f"sshfleet call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from rich.console import Console

    from sshfleet._cli import _shell_render as render
    from sshfleet._responses import Responses

    agent_log = logging.getLogger("sshfleet._agent")
    quiet = args.verbose == 0 and agent_log.level == logging.NOTSET
    if quiet:  # the table shows each host's failure; the agent's warnings would say it twice
        agent_log.setLevel(logging.ERROR)
    # Not a terminal (a script, CI): no wrapping at 80 columns, so each host stays on one line for grep.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    try:
        with agent_class(specs, ssh_options=options_from_args(args), python=args.python, **become) as agent:
            started = time.monotonic()
            times: dict[str, float] = {}
            if method.server_streaming:
                responses = _stream(agent, method.name, fields, args, console)
            else:
                outcomes = {}
                for host, outcome in agent.invoke_as_completed(method.name, fields, timeout=args.timeout):
                    outcomes[host], times[host] = outcome, time.monotonic() - started
                responses = Responses(method.name, {h: outcomes[h] for h in agent.hosts})
            elapsed = time.monotonic() - started
    finally:
        if quiet:
            agent_log.setLevel(logging.NOTSET)
    if args.json:
        print(render.to_json(responses))
    elif not method.server_streaming:
        render.print_table(console, responses, elapsed, times=times)
    else:
        console.print(render.summary(responses, elapsed), style="dim")
    return render.exit_status(responses)


def _stream(agent: Any, method: str, fields: dict[str, object], args: argparse.Namespace, console: Any) -> Any:
    """Print each host's messages as they arrive (unless --json); each host's outcome is its last message,
    or its error."""
    from sshfleet._cli import _shell_render as render
    from sshfleet._responses import Responses

    last: dict[str, Any] = {}
    width = max((len(h) for h in agent.hosts), default=0)
    stream = agent.invoke_stream(method, fields, timeout=args.timeout)
    try:
        for host, reply in stream:
            last[host] = reply
            if not args.json:
                console.out(render.stream_line(host, reply, width), highlight=False)
    finally:
        stream.cancel()
    return Responses(method, {h: last[h] for h in agent.hosts if h in last})
