"""The state of ``sshfleet shell`` and what its commands do: targets, agents, calls, settings.

One ``Fleet`` holds every host's SSH connection for the whole session; each agent the shell loads runs on a
sub-fleet of the hosts selected when it was loaded, over those same connections. A host that fails to start
stays listed with its error, every call shows that error for it, and ``retry`` starts the agent again on
such hosts only (a second instance of the agent on those hosts; each host is served by one instance).

Calls go to every host an agent was loaded on: ``use`` chooses the hosts for ``load`` and ``!cmd``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from sshfleet._cli import _shell_render as render
from sshfleet._cli._shell_agents import BUILTIN_AGENTS, agent_key, resolve_agent, service_of
from sshfleet._cli._shell_parse import parse_fields, split_target
from sshfleet.errors import HostError, UsageError
from sshfleet.inventory import Inventory, fold_hosts

if TYPE_CHECKING:
    from rich.console import Console

    from sshfleet._agent import Agent
    from sshfleet._fleet import Fleet
    from sshfleet._options import SshOptions
    from sshfleet._responses import Outcome, Responses

OUTPUTS = ("table", "json", "gathered")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a call, with what to tell the user: where the call was cancelled, which hosts had
    answered (as pdsh says which hosts are still running)."""


@dataclass
class Settings:
    """What ``set`` changes: the call deadline (None: the agent's, 60 s), forks, and how results print."""

    timeout: Optional[float] = None
    forks: int = 64
    output: str = "table"


@dataclass
class Loaded:
    """An agent loaded in the shell: one instance per start (the load, then each retry), which instance
    serves each host, and each host's latest start outcome (a dict of facts, or its HostError)."""

    key: str
    agent_class: type[Agent]
    instances: list[tuple[Fleet, Agent]] = field(default_factory=list)
    owner: dict[str, Agent] = field(default_factory=dict)
    started: dict[str, Outcome] = field(default_factory=dict)

    def failed(self) -> dict[str, HostError]:
        return {h: o for h, o in self.started.items() if isinstance(o, HostError)}

    def ready(self) -> list[str]:
        return [h for h, o in self.started.items() if not isinstance(o, HostError)]

    def close(self) -> None:
        for fleet, agent in self.instances:
            with contextlib.suppress(Exception):
                agent.close()
            with contextlib.suppress(Exception):
                fleet.close()
        self.instances.clear()
        self.owner.clear()


class ShellSession:
    """The shell's state and commands, without the terminal: ``run_line``'s callers own the prompt."""

    def __init__(
        self,
        fleet: Fleet,
        inventory: Inventory,
        console: Console,
        *,
        python: Optional[str] = None,
        label: str = "all",
        commands: Sequence[str] = (),
        become: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.fleet = fleet
        self.become = dict(become or {})  # --become, --become-user, -K: every agent the shell starts gets them
        self.inventory = inventory
        self.console = console
        self.python = python
        self.settings = Settings(forks=fleet.forks)
        self.selection: list[str] = list(fleet.hosts)
        self.label = label
        self.loaded: dict[str, Loaded] = {}
        self.exec_agents: dict[tuple[str, ...], Loaded] = {}
        self.last: Optional[Responses] = None
        self.commands = list(commands)  # the shell's own commands, for "did you mean"

    # --- targets --------------------------------------------------------------------------------------

    @property
    def options(self) -> SshOptions:
        return self.fleet.options.replace(forks=self.settings.forks)

    def select(self, pattern: str) -> list[str]:
        """The fleet's hosts that ``pattern`` selects, in fleet order; UsageError when none."""
        chosen = {spec.name for spec in self.inventory.select(pattern)}
        hosts = [h for h in self.fleet.hosts if h in chosen]
        if not hosts:
            raise UsageError(f"{pattern!r} selects none of this shell's hosts ({fold_hosts(self.fleet.hosts)})")
        return hosts

    def use(self, text: str) -> None:
        """``use PATTERN`` replaces the selection, ``use +PATTERN`` adds to it, ``use -PATTERN`` removes."""
        text = text.strip()
        if not text:
            raise UsageError("use PATTERN (a host, group, glob, a:b, a:&b, a:!b), +PATTERN or -PATTERN")
        if text[0] in "+-":
            pattern = text[1:].strip()
            if not pattern:
                raise UsageError(f"use {text[0]}PATTERN needs a pattern")
            hosts = set(self.select(pattern))
            if text[0] == "+":
                selection = [h for h in self.fleet.hosts if h in hosts or h in self.selection]
                label = f"{self.label}:{pattern}"
            else:
                selection = [h for h in self.selection if h not in hosts]
                label = f"{self.label}:!{pattern}"
            if not selection:
                raise UsageError(f"removing {pattern!r} would leave no host selected")
        else:
            selection, label = self.select(text), text
        self.selection, self.label = selection, label

    def describe_selection(self) -> str:
        return f"{fold_hosts(self.selection)} ({len(self.selection)} of {len(self.fleet)} hosts)"

    def groups(self) -> list[tuple[str, list[str]]]:
        """(group, its hosts in this shell) for every inventory group with at least one of them."""
        mine = set(self.fleet.hosts)
        out = []
        for name, group in self.inventory.groups.items():
            hosts = [h for h in group.hosts if h in mine]
            if hosts:
                out.append((name, hosts))
        return out

    # --- agents ---------------------------------------------------------------------------------------

    def load(self, name: str) -> Loaded:
        """Start the agent ``name`` (a built-in's name or a .proto path) on the selected hosts; when it is
        loaded already, on the selected hosts it does not run on yet."""
        agent_class = resolve_agent(name)
        key = agent_key(name, agent_class)
        loaded = self.loaded.get(key)
        if loaded is None:
            loaded = Loaded(key, agent_class)
            self._start(loaded, self.selection)
            self.loaded[key] = loaded
            return loaded
        if loaded.agent_class is not agent_class:
            raise UsageError(f"another agent named {key} is loaded ({loaded.agent_class.__name__}): unload it first")
        new = [h for h in self.selection if h not in loaded.started]
        if not new:
            failed = [h for h in self.selection if h in loaded.failed()]
            hint = f"; `retry` starts it again on {fold_hosts(failed)}" if failed else ""
            raise UsageError(f"{key} is loaded on every selected host already{hint}")
        self._start(loaded, new)
        return loaded

    def unload(self, name: str) -> None:
        loaded = self.loaded.pop(self._loaded_key(name), None)
        if loaded is not None:
            loaded.close()

    def _loaded_key(self, name: str) -> str:
        if name in self.loaded:
            return name
        for key, loaded in self.loaded.items():
            if name in (loaded.agent_class.__name__,) or agent_key(name, loaded.agent_class) == key:
                return key
        known = ", ".join(self.loaded) or "none"
        raise UsageError(f"no agent {name!r} is loaded (loaded: {known})")

    def retry(self) -> list[str]:
        """Start each loaded agent again on the hosts where it failed to start; the hosts retried."""
        retried: list[str] = []
        for loaded in self.loaded.values():
            failed = [h for h in self.fleet.hosts if h in loaded.failed()]
            if failed:
                self._start(loaded, failed)
                retried.extend(h for h in failed if h not in retried)
        return retried

    def _start(self, loaded: Loaded, hosts: Sequence[str]) -> None:
        """Connect ``hosts`` (progress shown), then start the agent on those that connected."""
        from sshfleet._fleet import Connected, Fleet

        specs = [self.fleet.spec(h) for h in hosts]
        name = loaded.key
        outcomes: dict[str, Outcome] = {}
        started = time.monotonic()
        from rich.markup import escape  # a status line is markup: host names must stay text

        connecting = escape(f"{name}: connecting to {fold_hosts(list(hosts))}")
        with self.console.status(connecting, spinner="dots") as status:
            done: dict[str, list[str]] = {"connected": [], "failed": []}

            def progress(host: str, outcome: object, seconds: float) -> None:
                done["connected" if isinstance(outcome, Connected) else "failed"].append(host)
                waiting = [h for h in hosts if h not in done["connected"] and h not in done["failed"]]
                parts = [f"{word} {fold_hosts(sorted(names))}" for word, names in done.items() if names]
                parts += [f"waiting for {fold_hosts(waiting)}"] if waiting else []
                status.update(escape(f"{name}: " + ", ".join(parts)))

            probe = Fleet(specs, ssh_options=self.options)
            try:
                for host, outcome in probe.connect(on_result=progress).items():
                    if isinstance(outcome, HostError):
                        outcomes[host] = outcome
            finally:
                probe.close()
            ready = [spec for spec in specs if spec.name not in outcomes]
            if ready:
                status.update(escape(f"{name}: bootstrapping on {fold_hosts([spec.name for spec in ready])}"))
                sub = Fleet(ready, ssh_options=self.options)
                try:
                    agent = loaded.agent_class(sub, python=self.python, **self.become)
                except BaseException:
                    sub.close()
                    raise
                loaded.instances.append((sub, agent))
                for host, outcome in agent.started.items():
                    outcomes[host] = outcome
                    if not isinstance(outcome, HostError):
                        loaded.owner[host] = agent
        for host in hosts:
            loaded.started[host] = outcomes[host]
        self._report_start(loaded, hosts, time.monotonic() - started)

    def _report_start(self, loaded: Loaded, hosts: Sequence[str], seconds: float) -> None:
        """``sysinfo: ready on node[01-07] (7) in 1.2s``, then one line per distinct failure reason."""
        from rich.text import Text

        ready = [h for h in hosts if not isinstance(loaded.started[h], HostError)]
        if ready:
            line = Text(f"{loaded.key}: ")
            line.append("ready", style="green").append(f" on {fold_hosts(ready)} ({len(ready)}) in {seconds:.1f}s")
            self.console.print(line)
        by_reason: dict[str, list[str]] = {}
        for host in hosts:
            outcome = loaded.started[host]
            if isinstance(outcome, HostError):
                word = "unreachable" if outcome.kind in ("unreachable", "auth_failed", "hostkey_rejected") else "failed"
                by_reason.setdefault(f"{word}: {render.error_text(outcome)}", []).append(host)
        for reason, failed in by_reason.items():  # Text, not markup: errors hold brackets ("[Errno 111]")
            self.console.print(Text(f"{loaded.key}: ").append(fold_hosts(failed), style="red").append(f" {reason}"))
        if by_reason:
            self.console.print(Text("(calls show these hosts' errors; `retry` starts the agent there again)", "dim"))

    def agents_table(self) -> list[tuple[str, str, str, str]]:
        """(name, class, ready hosts, failed hosts) of each loaded agent."""
        return [
            (
                key,
                loaded.agent_class.__name__,
                fold_hosts(loaded.ready()) or "-",
                fold_hosts(list(loaded.failed())) or "-",
            )
            for key, loaded in self.loaded.items()
        ]

    @staticmethod
    def loadable() -> list[str]:
        return list(BUILTIN_AGENTS)

    # --- calls ----------------------------------------------------------------------------------------

    def methods(self) -> dict[str, tuple[Loaded, Any]]:
        """``Method`` (when one loaded agent has it) and ``agent.Method`` -> (Loaded, MethodDescriptor)."""
        out: dict[str, tuple[Loaded, Any]] = {}
        seen: dict[str, int] = {}
        for loaded in self.loaded.values():
            for method in service_of(loaded.agent_class).methods:
                out[f"{loaded.key}.{method.name}"] = (loaded, method)
                seen[method.name] = seen.get(method.name, 0) + 1
                out.setdefault(method.name, (loaded, method))
        for name, count in seen.items():
            if count > 1:
                del out[name]
        return out

    def find_method(self, word: str) -> tuple[Loaded, Any]:
        """The loaded agent and method ``word`` (``Method`` or ``agent.Method``) names; UsageError otherwise."""
        import difflib

        agent_name, method_name = split_target(word)
        if agent_name is not None:
            loaded = self.loaded[self._loaded_key(agent_name)]
            method = service_of(loaded.agent_class).methods_by_name.get(method_name)
            if method is None:
                names = [m.name for m in service_of(loaded.agent_class).methods]
                raise UsageError(f"{loaded.key} has no method {method_name!r} (methods: {', '.join(names)})")
            return loaded, method
        owners = [
            loaded for loaded in self.loaded.values() if method_name in service_of(loaded.agent_class).methods_by_name
        ]
        if len(owners) > 1:
            choices = " or ".join(f"{o.key}.{method_name}" for o in owners)
            raise UsageError(f"{method_name} is a method of several loaded agents: say {choices}")
        if owners:
            return owners[0], service_of(owners[0].agent_class).methods_by_name[method_name]
        known = sorted({m.name for loaded in self.loaded.values() for m in service_of(loaded.agent_class).methods})
        close = difflib.get_close_matches(word, known + self.commands, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if not self.loaded:
            raise UsageError(f"unknown command {word!r}{hint} (no agent loaded yet: `load sysinfo`; `help`)")
        raise UsageError(f"unknown command or method {word!r}{hint} (`help` lists the commands, `agents` the agents)")

    def call(self, word: str, words: Sequence[str]) -> Optional[Responses]:
        """Call ``[agent.]Method field=value ...`` on the selected hosts the agent was loaded on; prints the result."""
        loaded, method = self.find_method(word)
        if method.client_streaming:
            raise UsageError(f"{method.name} takes a stream of requests: call it from `py`")
        fields = parse_fields(method, words, agent=loaded.key)
        targets = self._targets(loaded)
        if method.server_streaming:
            self._call_stream(loaded, method.name, fields, targets)
            return None
        started = time.monotonic()
        outcomes: dict[str, Outcome] = {}
        times: dict[str, float] = {}
        try:
            for _, agent in list(loaded.instances):
                serves = [h for h in targets if loaded.owner.get(h) is agent]
                if not serves:
                    continue
                # As each host answers, so each gets its own time; Ctrl-C here cancels the calls still running.
                answers = agent.invoke_as_completed(method.name, fields, timeout=self.settings.timeout, hosts=serves)
                for host, outcome in answers:
                    outcomes[host], times[host] = outcome, time.monotonic() - started
        except KeyboardInterrupt:
            waiting = [h for h in targets if h in loaded.owner and h not in outcomes]
            answered = [h for h in self.fleet.hosts if h in outcomes]
            raise Interrupted(
                f"interrupted: {method.name} cancelled on {fold_hosts(waiting) or 'no host'} (no answer yet); "
                f"answered: {fold_hosts(answered) or 'none'}"
            ) from None
        responses = self._merge(loaded, method.name, outcomes, targets)
        self.last = responses
        self.show(responses, time.monotonic() - started, times)
        return responses

    def _targets(self, loaded: Loaded) -> list[str]:
        """The selected hosts the agent was loaded on (in fleet order); says which selected hosts it is not on."""
        selected = set(self.selection)
        targets = [h for h in self.fleet.hosts if h in loaded.started and h in selected]
        missing = [h for h in self.fleet.hosts if h in selected and h not in loaded.started]
        if not targets:
            runs_on = fold_hosts([h for h in self.fleet.hosts if h in loaded.started]) or "no host"
            raise UsageError(f"{loaded.key} is not loaded on the selected hosts (it runs on {runs_on}): use or load")
        if missing:
            note = f"({loaded.key} is not loaded on {fold_hosts(missing)}: `load {loaded.key}` there to call them too)"
            self.console.print(note, style="dim", markup=False)
        return targets

    def _merge(self, loaded: Loaded, method: str, outcomes: dict[str, Outcome], targets: Sequence[str]) -> Responses:
        from sshfleet._responses import Responses

        ordered = {h: outcomes.get(h, loaded.started[h]) for h in targets}
        return Responses(method, ordered)

    def show(self, responses: Responses, seconds: float, times: Optional[dict[str, float]] = None) -> None:
        if self.settings.output == "json":
            self.console.print_json(render.to_json(responses))
        else:
            gathered = self.settings.output == "gathered"
            render.print_table(self.console, responses, seconds, gathered=gathered, times=times)

    def _call_stream(self, loaded: Loaded, method: str, fields: dict[str, object], targets: Sequence[str]) -> None:
        """Each host's messages as they arrive, prefixed with the host; Ctrl-C cancels every host's call."""
        width = max((len(h) for h in targets), default=0)
        last: dict[str, Outcome] = {}
        started = time.monotonic()
        for _, agent in list(loaded.instances):
            serves = [h for h in targets if loaded.owner.get(h) is agent]
            if not serves:
                continue
            stream: Any = agent.invoke_stream(method, fields, timeout=self.settings.timeout, hosts=serves)
            try:
                for host, reply in stream:
                    last[host] = reply
                    self.console.out(render.stream_line(host, reply, width), highlight=False)
            finally:
                stream.cancel()
        for host, error in loaded.failed().items():
            if host in targets:
                self.console.out(render.stream_line(host, error, width), highlight=False)
        responses = self._merge(loaded, method, last, targets)
        self.last = responses
        self.console.print(render.summary(responses, time.monotonic() - started), style="dim")

    # --- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every agent (each stops its servicers), then the fleet and its connections."""
        for loaded in [*self.loaded.values(), *self.exec_agents.values()]:
            loaded.close()
        self.loaded.clear()
        self.exec_agents.clear()
        self.fleet.close()
