"""One-off ``ssh`` client processes, one per host, for `sshfleet run`'s plain commands (``sshfleet._adhoc``).

No master, no paramiko: the process runs the command and ends, as ``ssh host cmd``, clush and pssh do it, so a
run of one command pays one SSH handshake per host and nothing else. The settings are the OpenSSH transport's
(``_openssh_args``): everything from ``resolve()``, strict host-key checking, nothing read from ssh_config.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import subprocess
import time
from typing import Callable, Optional, Union

from sshfleet._options import HostSpec, SshOptions
from sshfleet._ssh._config import ResolvedHost, prefetch, resolve
from sshfleet._ssh._openssh_args import oneshot_argv, translate_failure
from sshfleet._ssh._sshg import ssh_binary
from sshfleet.errors import ConnectError, SshFleetError

log = logging.getLogger(__name__)
SSH_FAILED = 255  # ssh's own exit status for a connection it could not make or keep


def resolve_direct(specs: list[HostSpec], options: SshOptions) -> Optional[list[ResolvedHost]]:
    """Every host resolved (one ``ssh -G`` round), if all can be reached by a one-off ssh; None otherwise, or
    when resolving fails (the agent's path then reports it per host, as it always has)."""
    try:
        prefetch(specs, options)
        hosts = [resolve(spec, options) for spec in specs]
    except SshFleetError:
        return None
    return hosts if all(available(h) for h in hosts) else None


def available(host: ResolvedHost) -> bool:
    """Whether ``host`` can be reached by a one-off ssh: the binary is here and no jump host is in the way."""
    return ssh_binary() is not None and not host.proxy_jump


def spawn(host: ResolvedHost, command: str) -> subprocess.Popen[bytes]:
    """``ssh host command`` with pipes on all three streams, in a session of its own: the terminal's Ctrl-C is
    ours to forward as a message, and must not kill the ssh processes (that would only cut the channels)."""
    argv = oneshot_argv(host, command, ssh_binary() or "ssh")
    log.debug("%s: %s", host.name, shlex.join(argv[:-1]))  # the command is the helper's loader: long, not useful
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
    )


def failure(host: ResolvedHost, stderr: bytes, *, timed_out: bool, waited: float) -> ConnectError:
    """The sshfleet error for a one-off ssh that never reached the command, from what ssh printed."""
    return translate_failure(host, stderr.decode("utf-8", "replace"), timed_out=timed_out, waited=waited)


def check_logins(
    hosts: list[ResolvedHost], *, forks: int, on_result: Optional[Callable[[str, object, float], None]] = None
) -> dict[str, Union[float, ConnectError]]:
    """Log into every host with a one-off ``ssh host exit`` (``forks`` at once): {name: seconds, or the
    error}. `sshfleet ping` with the ssh binary: the handshake and authentication are OpenSSH's, as every later
    fast-path run makes them, and no paramiko is imported. Each host has a deadline (connect + auth + 5 s)."""
    results: dict[str, Union[float, ConnectError]] = {}
    waiting = list(reversed(hosts))
    running: dict[int, tuple[ResolvedHost, subprocess.Popen[bytes], float, bytearray]] = {}
    with selectors.DefaultSelector() as selector:
        while waiting or running:
            while waiting and len(running) < max(1, forks):
                host = waiting.pop()
                argv = oneshot_argv(host, "exit 0", ssh_binary() or "ssh")
                log.debug("%s: %s", host.name, shlex.join(argv))
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                assert proc.stderr is not None
                running[proc.stderr.fileno()] = (host, proc, time.monotonic(), bytearray())
                selector.register(proc.stderr, selectors.EVENT_READ)
            now = time.monotonic()
            limit = min(begun + _limit(h) for h, _, begun, _ in running.values())
            for key, _ in selector.select(max(0.0, limit - now)):
                host, proc, begun, said = running[key.fd]
                data = os.read(key.fd, 65536)
                if data:
                    said += data
                    continue
                selector.unregister(key.fileobj)
                del running[key.fd]
                status = proc.wait()
                proc.stderr.close()  # type: ignore[union-attr]
                took = time.monotonic() - begun
                ok = status == 0
                results[host.name] = took if ok else failure(host, bytes(said), timed_out=False, waited=_limit(host))
                if on_result is not None:
                    on_result(host.name, results[host.name], took)
            now = time.monotonic()
            for fd, (host, proc, begun, said) in list(running.items()):
                if now - begun > _limit(host):
                    proc.kill()
                    proc.wait()
                    selector.unregister(proc.stderr)  # type: ignore[arg-type]
                    proc.stderr.close()  # type: ignore[union-attr]
                    del running[fd]
                    results[host.name] = failure(host, bytes(said), timed_out=True, waited=_limit(host))
                    if on_result is not None:
                        on_result(host.name, results[host.name], now - begun)
    return results


def _limit(host: ResolvedHost) -> float:
    return host.connect_timeout + host.auth_timeout + 5.0
