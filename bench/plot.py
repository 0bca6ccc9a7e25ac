"""results/plot.png: the medians of results.md drawn, one panel per table (rebuilt by ``python -m bench.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from bench._render import COLORS, LABELS, dig, sizes_of

MARKERS = dict(zip(LABELS, "os^vDPX*<>hp8dH^vos"))
Getter = Callable[[str, str], Optional[float]]


def _line(ax: Any, sizes: list[str], tool: str, value: Getter) -> None:
    """One tool's value against fleet size, on ``ax``; nothing if the tool has no value."""
    points = [(int(k), value(k, tool)) for k in sizes]
    points = [(x, y) for x, y in points if y is not None]
    if points:
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            marker=MARKERS.get(tool, "o"),
            color=COLORS.get(tool),
            label=LABELS.get(tool, tool),
            lw=2.5 if tool in ("sshfleet", "sshfleet-run") else 1.2,
        )


def _tools(phase: dict[str, Any], sizes: list[str]) -> list[str]:
    tools: list[str] = []
    for k in sizes:
        tools += [t for t in phase.get(k, {}) if t not in tools]
    return tools


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(13, 13.5))
    fig.suptitle(
        f"sshfleet vs peers — {dig(results, 'machine', 'cpu')}, {dig(results, 'machine', 'cores')} cores "
        f"({results.get('date', '')[:10]}); medians",
        fontsize=12,
    )

    adhoc = dig(results, "adhoc", "sizes") or {}
    asizes = sorted(adhoc, key=int)
    for ax, metric, title, ylabel in (
        (axes[0][0], "wall_s", "Ad-hoc `uname -n`, whole process: wall time", "seconds (log)"),
        (axes[0][1], "cpu_ms_per_host", "Ad-hoc `uname -n`: controller CPU per host", "ms of CPU per host (log)"),
    ):
        for tool in _tools(adhoc, asizes):
            _line(ax, asizes, tool, lambda k, t, m=metric: dig(adhoc, k, t, m))
        ax.set(title=title, xlabel="hosts", ylabel=ylabel)
        _log_axes(ax, asizes)

    warm = results.get("warm") or {}
    wsizes = sorted(warm, key=int)
    ax = axes[1][0]
    for tool in _tools(warm, wsizes):
        _line(ax, wsizes, tool, lambda k, t: dig(warm, k, t, "cpu_us_per_call"))
    ax.set(title="Controller CPU per host-call, warm rounds (incl. ssh children)", xlabel="hosts", ylabel="µs (log)")
    _log_axes(ax, wsizes)

    ax = axes[1][1]
    for tool in _tools(warm, wsizes):
        _line(ax, wsizes, tool, lambda k, t: dig(warm, k, t, "round_ms", "median"))
    ax.set(title="Warm fan-out: one trivial call on every host", xlabel="hosts", ylabel="ms per round (log)")
    _log_axes(ax, wsizes)

    ax = axes[2][0]
    cold = results.get("cold") or {}
    csizes = sizes_of(results, "cold")
    for tool in _tools(cold, csizes):
        _line(ax, csizes, tool, lambda k, t: dig(cold, k, t, "seconds", "median"))
    ax.set(title="Cold start (connect + trivial call + close)", xlabel="hosts", ylabel="seconds (log)")
    _log_axes(ax, csizes)

    ax = axes[2][1]
    stools = dig(results, "stream", "tools") or {}
    names = [t for t in stools if dig(stools, t, "mb_per_s", "median") is not None]
    if names:
        ys = [dig(stools, t, "mb_per_s", "median") for t in names]
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
    if not ax.get_lines():
        ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([int(k) for k in sizes])
    ax.set_xticklabels(sizes)
    ax.xaxis.set_minor_locator(NullLocator())
    # 1-2-5 steps, labelled in plain numbers: a panel spanning less than a decade still shows its scale.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
