"""``python -m bench.fabric_run -F CONFIG -l USER HOST... -- CMD``: Fabric's bare run as a whole process.

What a user scripting a fleet with Fabric writes: ``ThreadingGroup(*hosts).run(cmd)`` then ``close()``, with
host keys checked against the ssh_config's UserKnownHostsFile (Fabric would add unknown keys: here they are
refused).
The ad-hoc phase times it from interpreter start to exit, as it times ``sshfleet ping`` and ``sshfleet run``.
Prints ``HOST: LINE`` for each line of output; exit status 1 if any host failed.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fabric_run")
    p.add_argument("-F", dest="ssh_config", required=True)
    p.add_argument("-l", dest="user", required=True)
    p.add_argument("hosts", nargs="+")
    args, command = p.parse_args(argv[: argv.index("--")]), argv[argv.index("--") + 1 :]

    import paramiko
    from fabric import Config, ThreadingGroup
    from fabric.exceptions import GroupException

    config = Config(runtime_ssh_path=args.ssh_config)
    group = ThreadingGroup(*args.hosts, user=args.user, config=config, connect_kwargs={"allow_agent": False})
    for conn in group:
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        for path in conn.ssh_config.get("userknownhostsfile", "").split():  # Fabric does not read it itself
            conn.client.load_host_keys(path)
    try:
        results = group.run(shlex.join(command), hide=True, in_stream=False, warn=True)
    except GroupException as exc:
        results = exc.result
    finally:
        group.close()
    failed = 0
    for conn, result in results.items():
        if isinstance(result, Exception) or result.exited != 0:
            failed += 1
            why = result if isinstance(result, Exception) else f"exit {result.exited}"
            print(f"{conn.original_host}: FAILED: {why}", file=sys.stderr)
            continue
        for line in result.stdout.splitlines():
            print(f"{conn.original_host}: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
