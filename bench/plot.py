"""The fleet latencies as a PNG next to the JSON: p50 / p95 / max against hosts, per mode (and
per way of logging on, when a fleet item's is not Basic over HTTPS).

matplotlib comes from the ``bench`` dependency group; without it the plot is skipped (and
said so), the JSON stands on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import progress


def plot_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is not installed (dependency group 'bench'): no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "poll": ("tab:orange", "poll, interval {interval:g} s"),
        "watch": ("tab:blue", "watch"),
    }
    others = iter(("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray"))
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        kind = (row.get("mode", "poll"), row.get("auth", "basic"), row.get("protocol", "https"))
        series.setdefault(kind, []).append(row)
    for (mode, auth, protocol), mine in series.items():
        mine.sort(key=lambda r: r["hosts"])
        color, label = styles.get(mode, ("black", mode))
        if (auth, protocol) != ("basic", "https"):
            color, label = next(others, "black"), f"{label}, {auth}/{protocol}"
        hosts = [r["hosts"] for r in mine]
        name = label.format(interval=mine[0].get("interval_s") or 0)
        for key, line, what in (
            ("latency_p50_s", "-", "p50"),
            ("latency_p95_s", "--", "p95"),
            ("latency_max_s", ":", "max"),
        ):
            values = [r[key] if r[key] is not None else float("nan") for r in mine]
            ax.plot(hosts, values, line, marker="o", color=color, label=f"{name} {what}")
    ax.set_xscale("log")
    ax.set_xlabel("hosts watched by one source")
    ax.set_ylabel("seconds from the job file's final write to the event")
    ax.set_title("winasync.eda: detection latency, poll vs watch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
