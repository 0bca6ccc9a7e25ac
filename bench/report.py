"""Turn latest.json into results.md (tables of values and sshfleet/peer ratios) and plot.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

LABELS = {
    "sshfleet": "sshfleet",
    "sshfleet-empty-cache": "sshfleet, empty host cache",
    "sshfleet-openssh": "sshfleet, OpenSSH transport",
    "fabric": "Fabric ThreadingGroup",
    "parallel-ssh": "parallel-ssh",
    "asyncssh": "asyncssh",
    "mitogen": "Mitogen",
    "ansible": "Ansible ad-hoc ping",
    "paramiko": "paramiko, defaults",
    "paramiko-seam": "paramiko, sshfleet's cipher/window",
    "openssh": "OpenSSH client",
}


# One colour and marker per tool in every panel; sshfleet is the thick red line.
COLORS = {
    "sshfleet": "#d62728",
    "sshfleet-empty-cache": "#ff9896",
    "sshfleet-openssh": "#ff7f0e",
    "fabric": "#2ca02c",
    "parallel-ssh": "#9467bd",
    "asyncssh": "#8c564b",
    "mitogen": "#1f77b4",
    "ansible": "#e377c2",
    "paramiko": "#7f7f7f",
    "paramiko-seam": "#bcbd22",
    "openssh": "#17becf",
}


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        digits = 0
    elif abs(value) >= 10:
        digits = min(digits, 1)
    return f"{value:.{digits}f}{unit}"


def _ratio(ours: Optional[float], theirs: Optional[float]) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.2f}x"


def _cell(value: Optional[float], ours: Optional[float], unit: str, is_ours: bool) -> str:
    text = _fmt(value, unit)
    if value is not None and not is_ours:
        text += f" ({_ratio(ours, value)})"
    return text


def _error_note(entry: Any) -> str:
    errors = (entry or {}).get("errors") or []
    return f" ⚠{len(errors)}" if errors else ""


def _sizes(results: dict[str, Any], section: str) -> list[str]:
    keys = list((results.get(section) or {}).keys())
    return sorted(keys, key=int)


def cold_table(results: dict[str, Any]) -> list[str]:
    cold = results.get("cold") or {}
    sizes = _sizes(results, "cold")
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
            ours = _get(cold, k, "sshfleet", "seconds", "median")
            value = _get(cold, k, tool, "seconds", "median")
            is_ours = tool.startswith("sshfleet")
            cells.append(_cell(value, ours, " s", is_ours) + _error_note(_get(cold, k, tool)))
        lines.append(f"| {LABELS.get(tool, tool)} | " + " | ".join(cells) + " |")
    phases = []
    for k in sizes:
        runs = _get(cold, k, "sshfleet", "runs") or []
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
                ours = _get(warm, k, "sshfleet", *metric)
                value = _get(warm, k, tool, *metric)
                is_ours = tool.startswith("sshfleet")
                cells.append(_cell(value, ours, unit, is_ours) + _error_note(_get(warm, k, tool)))
            lines.append(f"| {LABELS.get(tool, tool)} | " + " | ".join(cells) + " |")
        lines.append("")
    rounds = {k: _get(warm, k, "sshfleet", "rounds") for k in keys}
    lines.append("Rounds per tool and size: " + ", ".join(f"{k} hosts: {r}" for k, r in rounds.items()) + ".")
    return [*lines, ""]


def stream_table(results: dict[str, Any]) -> list[str]:
    stream = results.get("stream") or {}
    tools = stream.get("tools") or {}
    if not tools:
        return []
    ours = _get(tools, "sshfleet", "mb_per_s", "median")
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
    our_cpu = _get(tools, "sshfleet", "cpu_s_per_gb", "median")
    for tool, entry in tools.items():
        is_ours = tool.startswith("sshfleet")
        value = _get(entry, "mb_per_s", "median")
        cpu = _get(entry, "cpu_s_per_gb", "median")
        cipher = _get(entry, "info", "cipher") or ""
        cell = _cell(value, ours, "", is_ours) + _error_note(entry)
        lines.append(f"| {LABELS.get(tool, tool)} | {cell} | {_cell(cpu, our_cpu, '', is_ours)} | {cipher} |")
    return [*lines, ""]


def round_trip_lines(results: dict[str, Any]) -> list[str]:
    cold = results.get("cold") or {}
    lines = []
    for tool, label in (
        ("sshfleet", "warm cache"),
        ("sshfleet-empty-cache", "empty cache"),
        ("sshfleet-openssh", "OpenSSH transport, warm cache"),
    ):
        trips = sorted({t for k in cold for r in (_get(cold, k, tool, "runs") or []) for t in r["round_trips"]})
        shipped = sorted({s for k in cold for r in (_get(cold, k, tool, "runs") or []) for s in r["shipped"]})
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


def scale_lines(results: dict[str, Any]) -> list[str]:
    scale = results.get("scale")
    if not scale:
        return []
    n = str(scale["hosts"])
    warm = _get(results, "warm", n) or {}
    s = warm.get("sshfleet") or {}
    lines = [f"## {n} hosts", ""]
    if scale.get("errors"):
        lines += [f"- error: {e}" for e in scale["errors"]]
    if s:
        before, after = s.get("probe_before") or {}, s.get("probe_after") or {}
        serv = s.get("servicers") or {}
        lines += [
            f"- every host answering: **{'yes' if scale.get('all_answered') else 'no'}** "
            f"({_get(serv, 'count')} servicers started, {s.get('rounds', 0)} fan-out rounds = "
            f"{s.get('rounds', 0) * int(n)} calls, no failure)",
            f"- agent up on {n} hosts (warm cache): {_fmt(s.get('open_seconds'), ' s')}; Mitogen contexts up: "
            f"{_fmt(_get(warm, 'mitogen', 'open_seconds'), ' s')}",
            f"- controller threads before/after the calls: Python {before.get('python_threads')} → "
            f"{after.get('python_threads')}, OS {before.get('os_threads')} → {after.get('os_threads')}; "
            f"OS threads after each block of calls: "
            f"{', '.join(str(b[1]) for b in s.get('threads_by_block') or []) or '—'}",
            f"- controller RSS: {_fmt((before.get('rss_kib') or 0) / 1024, ' MiB', 0)} after start, "
            f"{_fmt((after.get('rss_kib') or 0) / 1024, ' MiB', 0)} after the calls",
            f"- servicer on each host: median RSS {_fmt((_get(serv, 'rss_kib', 'median') or 0) / 1024, ' MiB', 1)}, "
            f"{_get(serv, 'threads', 'median')} threads",
        ]
        m = warm.get("mitogen") or {}
        lines.append(
            f"- fan-out round: sshfleet median {_fmt(_get(s, 'round_ms', 'median'), ' ms')} / p99 "
            f"{_fmt(_get(s, 'round_ms', 'p99'), ' ms')}; Mitogen median {_fmt(_get(m, 'round_ms', 'median'), ' ms')} "
            f"/ p99 {_fmt(_get(m, 'round_ms', 'p99'), ' ms')} (ratio "
            f"{_ratio(_get(s, 'round_ms', 'median'), _get(m, 'round_ms', 'median'))})"
        )
        o = warm.get("sshfleet-openssh") or {}
        if o.get("round_ms", {}).get("n"):
            ob, oa = o.get("probe_before") or {}, o.get("probe_after") or {}
            lines.append(
                f"- sshfleet over its OpenSSH transport: up in {_fmt(o.get('open_seconds'), ' s')}, round median "
                f"{_fmt(_get(o, 'round_ms', 'median'), ' ms')} / p99 {_fmt(_get(o, 'round_ms', 'p99'), ' ms')} "
                f"(ratio to Mitogen {_ratio(_get(o, 'round_ms', 'median'), _get(m, 'round_ms', 'median'))}); "
                f"controller threads Python {ob.get('python_threads')} → {oa.get('python_threads')}, OS "
                f"{ob.get('os_threads')} → {oa.get('os_threads')}, ssh child processes {oa.get('children')}"
            )
        for tool, entry in warm.items():
            for err in entry.get("errors") or []:
                lines.append(f"- {tool} error: {err.splitlines()[0]}")
    return [*lines, ""]


def targets(results: dict[str, Any]) -> list[str]:
    warm = results.get("warm") or {}
    cold = results.get("cold") or {}
    tools = _get(results, "stream", "tools") or {}
    rows = []

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    for ours in ("sshfleet", "sshfleet-openssh"):
        for k in ("32", "1"):
            r = ratio(_get(warm, k, ours, "round_ms", "median"), _get(warm, k, "mitogen", "round_ms", "median"))
            label = f"warm fan-out round at {k} host{'s' if k != '1' else ''} ≤ 1.0x Mitogen"
            rows.append((ours, label, r, r is not None and r <= 1.0))
        for peer in ("paramiko", "paramiko-seam"):
            r = ratio(_get(tools, ours, "mb_per_s", "median"), _get(tools, peer, "mb_per_s", "median"))
            rows.append((ours, f"streaming ≥ 0.8x {LABELS[peer]}", r, r is not None and r >= 0.8))
        r = ratio(_get(cold, "32", ours, "seconds", "median"), _get(cold, "32", "fabric", "seconds", "median"))
        label = "agent up on 32 hosts (warm cache) + first call + close ≤ 2x Fabric"
        rows.append((ours, label, r, r is not None and r <= 2.0))
    scale = results.get("scale") or {}
    lines = [
        "## Targets (issue 6)",
        "",
        "| sshfleet transport | target | sshfleet ÷ peer | met |",
        "|---|---|---:|:---:|",
    ]
    for ours, label, r, ok in rows:
        if r is None and ours != "sshfleet":
            continue
        shown = _fmt(r, "x") if r is not None else "not measured"
        lines.append(f"| {ours.replace('sshfleet-', '') if ours != 'sshfleet' else 'paramiko'} | {label} | {shown} | "
                     f"{'yes' if ok else 'no'} |")  # fmt: skip
    if scale:
        ok = bool(scale.get("all_answered"))
        lines.append(f"| paramiko | {scale['hosts']} hosts all answering | — | {'yes' if ok else 'no'} |")
    return [*lines, ""]


def errors(results: dict[str, Any]) -> list[str]:
    found = []
    for section in ("cold", "warm"):
        for k, per_size in (results.get(section) or {}).items():
            for tool, entry in per_size.items():
                for err in (entry or {}).get("errors") or []:
                    found.append(f"- {section} {k} hosts, {tool}: {err.splitlines()[0][:300]}")
    for tool, entry in (_get(results, "stream", "tools") or {}).items():
        for err in entry.get("errors") or []:
            found.append(f"- stream, {tool}: {err.splitlines()[0][:300]}")
    for warmup_tool, entry in (results.get("cold_warmup") or {}).items():
        if "error" in entry:
            found.append(f"- cold warm-up, {warmup_tool}: {entry['error'].splitlines()[0][:300]}")
    for err in results.get("errors") or []:
        found.append(f"- {err.strip().splitlines()[-1][:300]}")
    return ["## Errors", "", *found, ""] if found else []


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine") or {}
    v = results.get("versions") or {}
    sizes = [str(s) for s in _get(results, "plan", "sizes") or []]
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
    lines += targets(results)
    lines += cold_table(results)
    lines += warm_tables(results, sizes)
    lines += stream_table(results)
    lines += round_trip_lines(results)
    lines += scale_lines(results)
    lines += errors(results)
    return "\n".join(lines)


def _plot_tool(
    ax: Any, phase: dict[str, Any], sizes: list[str], tool: str, metric: str, markers: dict[str, str]
) -> None:
    """One tool's median ``metric`` against fleet size, on ``ax``; nothing if the tool has no value."""
    xs = [int(k) for k in sizes if _get(phase, k, tool, metric, "median") is not None]
    ys = [_get(phase, str(k), tool, metric, "median") for k in xs]
    if xs:
        ax.plot(
            xs,
            ys,
            marker=markers.get(tool, "o"),
            color=COLORS.get(tool),
            label=LABELS.get(tool, tool),
            lw=2.5 if tool == "sshfleet" else 1.2,
        )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(
        f"sshfleet vs peers — {_get(results, 'machine', 'cpu')}, {_get(results, 'machine', 'cores')} cores "
        f"({results.get('date', '')[:10]}); medians",
        fontsize=12,
    )
    markers = dict(zip(LABELS, "os^vDPX*<>"))

    ax = axes[0][0]
    cold = results.get("cold") or {}
    sizes = _sizes(results, "cold")
    for tool in next(iter(cold.values()), {}):
        _plot_tool(ax, cold, sizes, tool, "seconds", markers)
    ax.set(title="Cold start (connect + trivial call + close)", xlabel="hosts", ylabel="seconds (log)")
    _log_axes(ax, sizes)

    ax = axes[0][1]
    warm = results.get("warm") or {}
    wsizes = sorted(warm, key=int)
    tools = []
    for k in wsizes:
        tools += [t for t in warm[k] if t not in tools]
    for tool in tools:
        _plot_tool(ax, warm, wsizes, tool, "round_ms", markers)
    ax.set(title="Warm fan-out: one trivial call on every host", xlabel="hosts", ylabel="ms per round (log)")
    _log_axes(ax, wsizes)

    ax = axes[1][0]
    keys = [k for k in wsizes if k in [str(s) for s in _get(results, "plan", "sizes") or []]]
    if keys:
        width = 0.8 / max(1, len(keys))
        for i, k in enumerate(keys):
            ys = [_get(warm, k, t, "cpu_us_per_call") or 0 for t in tools]
            ax.bar([j + i * width for j in range(len(tools))], ys, width, label=f"{k} hosts")
        ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(tools))])
        ax.set_xticklabels([LABELS.get(t, t).replace(", ", "\n").replace(" ", "\n", 1) for t in tools], fontsize=8)
        ax.set_yscale("log")
        ax.set(title="Controller CPU per host-call (incl. ssh children)", ylabel="µs (log)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)

    ax = axes[1][1]
    stools = _get(results, "stream", "tools") or {}
    names = [t for t in stools if _get(stools, t, "mb_per_s", "median") is not None]
    if names:
        ys = [_get(stools, t, "mb_per_s", "median") for t in names]
        bars = ax.bar(range(len(names)), ys, color=[COLORS.get(t, "C0") for t in names])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([LABELS.get(t, t).replace(", ", "\n") for t in names], fontsize=8)
        ax.set(title="Streaming from one host", ylabel="MB/s")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_axes(ax: Any, sizes: list[str]) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([int(k) for k in sizes])
    ax.set_xticklabels(sizes)
    ax.minorticks_off()
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)


def write(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.md").write_text(markdown(results) + "\n")
    try:
        plot(results, out_dir / "plot.png")
    except Exception as exc:  # the tables matter more than the picture
        with (out_dir / "results.md").open("a") as f:
            f.write(f"\n(plot failed: {type(exc).__name__}: {exc})\n")


if __name__ == "__main__":
    import json
    import sys

    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    write(json.loads(src.read_text()), src.parent)
