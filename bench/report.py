"""Turn latest.json into results.md (tables of values and sshfleet/peer ratios) and plot.png.

``python -m bench.report [latest.json] [--readme README.md]`` rebuilds both next to the JSON file (and the
targets table in the README's bench summary block). The older tables (cold start,
warm fan-out, streaming) are here; issue 14's in bench/tables.py, the plot in bench/plot.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from bench import plot, tables
from bench._render import LABELS, cell, dig, error_note, sizes_of


def cold_table(results: dict[str, Any]) -> list[str]:
    cold = results.get("cold") or {}
    sizes = sizes_of(results, "cold")
    if not sizes:
        return []
    tools = list(next(iter(cold.values())).keys())
    lines = [
        "## Cold start: connect + one trivial remote Python action + disconnect",
        "",
        "Median seconds per run; (ratio) = sshfleet ÷ tool, **< 1 means sshfleet is faster**. "
        "sshfleet = `SysinfoAgent(hosts)` + `Uname()` + `close()` with the payload already cached on the hosts; "
        "the empty-cache row ships grpcio/protobuf and the agent first; the OpenSSH-transport row is the same agent "
        'with `transport="openssh"` (sshfleet rows carry no ratio; the targets table has both transports).',
        "",
        "| tool | " + " | ".join(f"{k} host{'s' if k != '1' else ''}" for k in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for tool in tools:
        cells = []
        for k in sizes:
            ours = dig(cold, k, "sshfleet", "seconds", "median")
            value = dig(cold, k, tool, "seconds", "median")
            is_ours = tool.startswith("sshfleet")
            cells.append(cell(value, ours, " s", is_ours) + error_note(dig(cold, k, tool)))
        lines.append(f"| {LABELS.get(tool, tool)} | " + " | ".join(cells) + " |")
    phases = []
    for k in sizes:
        runs = dig(cold, k, "sshfleet", "runs") or []
        if runs:
            parts = {p: sorted(r["phases"][p] for r in runs)[len(runs) // 2] for p in ("start", "first_call", "close")}
            phases.append(
                f"{k}: start {parts['start']:.2f} s, first call {parts['first_call'] * 1000:.0f} ms, "
                f"close {parts['close']:.2f} s"
            )
    if phases:
        lines += ["", "sshfleet's cold start split (medians): " + "; ".join(phases) + "."]
    return [*lines, ""]


def warm_tables(results: dict[str, Any], keys: list[str]) -> list[str]:
    warm = results.get("warm") or {}
    keys = [k for k in keys if k in warm]
    if not keys:
        return []
    tools: list[str] = []
    for k in keys:
        tools += [t for t in warm[k] if t not in tools]
    header = "| tool | " + " | ".join(f"{k} host{'s' if k != '1' else ''}" for k in keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    lines = [
        "## Warm fan-out: one trivial call on every host over open connections",
        "",
        "One round = sshfleet `agent.Uname()` / Mitogen `call_async` on every context then gather / Fabric, "
        "parallel-ssh and asyncssh exec of `true` on open connections. (ratio) = sshfleet (paramiko transport, the "
        "default) ÷ tool, "
        "**< 1 means sshfleet is faster / cheaper**.",
        "",
    ]
    for title, metric, unit in (
        ("Median ms per round", ("round_ms", "median"), " ms"),
        ("p99 ms per round", ("round_ms", "p99"), " ms"),
        ("Controller CPU µs per host-call (process + its ssh children)", ("cpu_us_per_call",), " µs"),
    ):
        lines += [f"**{title}**", "", header, rule]
        for tool in tools:
            cells = []
            for k in keys:
                ours = dig(warm, k, "sshfleet", *metric)
                value = dig(warm, k, tool, *metric)
                is_ours = tool.startswith("sshfleet")
                cells.append(cell(value, ours, unit, is_ours) + error_note(dig(warm, k, tool)))
            lines.append(f"| {LABELS.get(tool, tool)} | " + " | ".join(cells) + " |")
        lines.append("")
    rounds = {k: dig(warm, k, "sshfleet", "rounds") for k in keys}
    lines.append("Rounds per tool and size: " + ", ".join(f"{k} hosts: {r}" for k, r in rounds.items()) + ".")
    return [*lines, ""]


def stream_table(results: dict[str, Any]) -> list[str]:
    stream = results.get("stream") or {}
    tools = stream.get("tools") or {}
    if not tools:
        return []
    ours = dig(tools, "sshfleet", "mb_per_s", "median")
    lines = [
        "## Streaming from one host",
        "",
        f"Median MB/s (10^6 bytes/s) reading {stream['bytes'] >> 20} MiB; (ratio) = sshfleet ÷ tool, "
        "**> 1 means sshfleet is faster**. sshfleet: `Count(n, 64 KiB)` server stream; paramiko: exec "
        "`head -c N /dev/zero` and read the channel; OpenSSH: `ssh host 'head -c N /dev/zero' > /dev/null` "
        "over an open ControlMaster. Controller CPU = CPU seconds the controller process and its ssh children "
        "spent per GB received (ratio < 1 means sshfleet is cheaper); it is less sensitive than MB/s to other "
        "load on the machine.",
        "",
        "| tool | MB/s (ratio, > 1 better) | controller CPU s/GB (ratio, < 1 better) | cipher |",
        "|---|---:|---:|---|",
    ]
    our_cpu = dig(tools, "sshfleet", "cpu_s_per_gb", "median")
    for tool, entry in tools.items():
        is_ours = tool.startswith("sshfleet")
        value = dig(entry, "mb_per_s", "median")
        cpu = dig(entry, "cpu_s_per_gb", "median")
        cipher = dig(entry, "info", "cipher") or ""
        text = cell(value, ours, "", is_ours) + error_note(entry)
        lines.append(f"| {LABELS.get(tool, tool)} | {text} | {cell(cpu, our_cpu, '', is_ours)} | {cipher} |")
    return [*lines, ""]


def round_trip_lines(results: dict[str, Any]) -> list[str]:
    cold = results.get("cold") or {}
    lines = []
    for tool, label in (
        ("sshfleet", "warm cache"),
        ("sshfleet-empty-cache", "empty cache"),
        ("sshfleet-openssh", "OpenSSH transport, warm cache"),
    ):
        trips = sorted({t for k in cold for r in (dig(cold, k, tool, "runs") or []) for t in r["round_trips"]})
        shipped = sorted({s for k in cold for r in (dig(cold, k, tool, "runs") or []) for s in r["shipped"]})
        if trips:
            lines.append(
                f"- {label}: {'/'.join(map(str, trips))} round trips per host "
                f"(from `SysinfoAgent(...).started[host]['round_trips']`), shipped: {', '.join(shipped) or 'nothing'}"
            )
    if not lines:
        return []
    return [
        "## Bootstrap round trips (sshfleet)",
        "",
        "Counted by the bootstrap after the SSH connection is up (channel open, exec, READY; "
        "a cold cache adds NEED + the bundles):",
        "",
        *lines,
        "",
    ]


def errors(results: dict[str, Any]) -> list[str]:
    found = []
    for section in ("cold", "warm"):
        for k, per_size in (results.get(section) or {}).items():
            for tool, entry in per_size.items():
                for err in (entry or {}).get("errors") or []:
                    found.append(f"- {section} {k} hosts, {tool}: {err.splitlines()[0][:300]}")
    for tool, entry in (dig(results, "stream", "tools") or {}).items():
        for err in entry.get("errors") or []:
            found.append(f"- stream, {tool}: {err.splitlines()[0][:300]}")
    for warmup_tool, entry in (results.get("cold_warmup") or {}).items():
        if "error" in entry:
            found.append(f"- cold warm-up, {warmup_tool}: {entry['error'].splitlines()[0][:300]}")
    found += tables.extra_errors(results)
    for err in results.get("errors") or []:
        found.append(f"- {err.strip().splitlines()[-1][:300]}")
    return ["## Errors", "", *found, ""] if found else []


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine") or {}
    v = results.get("versions") or {}
    sizes = [str(s) for s in dig(results, "plan", "sizes") or []]
    lines = [
        "# sshfleet benchmark results",
        "",
        f"Generated by `python -m bench` on {results.get('date')} in {results.get('total_seconds', 0):.0f} s. "
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, {m.get('os')}, "
        f"kernel {m.get('kernel')}, Python {m.get('python')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_start') or [])}.",
        "",
        "Every tool ran against the same real-sshd testbed (network namespaces on this machine) in the same run, "
        "in alternating order; values are medians. **Ratios are sshfleet ÷ tool: below 1 is better for times "
        "and CPU, above 1 is better for throughput.** Raw numbers: latest.json. How it is measured: "
        "bench/README.md.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    lines += tables.targets(results)
    lines += tables.earlier_targets(results)
    lines += tables.adhoc_tables(results)
    lines += tables.cpu_rows(results)
    lines += cold_table(results)
    lines += warm_tables(results, sizes)
    lines += stream_table(results)
    lines += tables.files_table(results)
    lines += round_trip_lines(results)
    lines += tables.scale_lines(results)
    lines += errors(results)
    return "\n".join(lines)


def write(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.md").write_text(markdown(results) + "\n")
    try:
        plot.plot(results, out_dir / "plot.png")
    except Exception as exc:  # the tables matter more than the picture
        with (out_dir / "results.md").open("a") as f:
            f.write(f"\n(plot failed: {type(exc).__name__}: {exc})\n")


def update_readme(results: dict[str, Any], readme: Path) -> None:
    """Replace the block between the summary markers of ``readme`` with this run's targets table."""
    text = readme.read_text()
    begin, end = text.find(tables.SUMMARY_BEGIN), text.find(tables.SUMMARY_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{readme}: no bench summary markers ({tables.SUMMARY_BEGIN} ... {tables.SUMMARY_END})")
    block = "\n".join(tables.summary(results))
    readme.write_text(text[:begin] + block + text[end + len(tables.SUMMARY_END) :])


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    p.add_argument("json", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    p.add_argument("--readme", metavar="README", help="also put the targets table in this file's bench summary block")
    args = p.parse_args(argv)
    src = Path(args.json)
    results = json.loads(src.read_text())
    write(results, src.parent)
    if args.readme:
        update_readme(results, Path(args.readme))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
