"""``python -m bench --quick|--full|--smoke``: the benchmarks of winasync.eda.

- head to head: the classic ``async_status`` + ``until`` loop against the source on 20 jobs,
  polling every second, and again in watch mode (``head_to_head_watch``);
- idle poll: what one poll costs when nothing changed (0, 20, 200 job files);
- idle cost: requests, bytes and CPU per idle host per hour, poll (15 s) against watch;
- fleet (``bench.scale``): latency, CPU, RSS and threads for 10, 100 (and 1,000, 2,000) hosts, poll mode
  (interval 15 s) and watch mode, Basic over HTTPS; and a watch-mode fleet whose hosts log on with
  Negotiate (NTLM, messages encrypted over HTTP): 1,000 hosts (20 in the quick profile);
- auth cost: CPU per poll and bytes per idle poll for each way of logging on, in poll mode and in
  watch mode.

Prints progress, then the tables, and writes ``bench/results/latest.json`` (or ``--out``) and a
plot of the fleet latencies next to it (``latest.png``); its keys are public (``docs/contract.md``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from bench import RESULTS_DIR
from bench.auth_cost import AuthCostConfig, auth_cost
from bench.head_to_head import HeadToHeadConfig, head_to_head
from bench.idle_cost import IdleCostConfig, idle_cost
from bench.idle_poll import IdleConfig, idle_poll
from bench.plot import plot_latency
from bench.report import parse_options, progress, table, work_dir, write_json
from bench.scale import ScaleConfig, fleet_table, scale_run


@dataclass(frozen=True)
class Profile:
    head_to_head: HeadToHeadConfig
    head_to_head_watch: HeadToHeadConfig
    idle: IdleConfig
    idle_cost: IdleCostConfig
    fleet: tuple[ScaleConfig, ...]
    # one run per mode, their rows together in ``auth_cost``
    auth: tuple[AuthCostConfig, ...]


def _both_modes(sizes: tuple[tuple[int, float], ...]) -> tuple[ScaleConfig, ...]:
    """Poll mode at the default interval (15 s) and watch mode, for each (hosts, window)."""
    return tuple(
        ScaleConfig(hosts=hosts, interval=15.0, window_s=window, jobs_per_host=1, mode=mode)
        for hosts, window in sizes
        for mode in ("poll", "watch")
    )


def _negotiate_watch(hosts: int, window: float) -> ScaleConfig:
    """Watch mode on hosts that take Negotiate (NTLM, message encryption) over HTTP."""
    return ScaleConfig(
        hosts=hosts,
        interval=15.0,
        window_s=window,
        jobs_per_host=1,
        mode="watch",
        auth="negotiate",
        https=False,
    )


def _auth_both_modes(hosts: int, polls: int, watch_polls: int) -> tuple[AuthCostConfig, ...]:
    """Poll mode (0.5 s interval) and watch mode (idle waits of 1 s) on the same small fleet."""
    return (
        AuthCostConfig(hosts=hosts, polls_per_host=polls),
        AuthCostConfig(hosts=hosts, polls_per_host=watch_polls, mode="watch"),
    )


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        HeadToHeadConfig(jobs=4, min_s=1, max_s=2, repeats=1),
        HeadToHeadConfig(jobs=4, min_s=1, max_s=2, repeats=1, mode="watch"),
        IdleConfig(files=(0, 20), polls=2, interval=0.5),
        IdleCostConfig(hosts=3, span_s=5.0, interval=1.0, watch_wait=3.0, files_per_host=1),
        (
            ScaleConfig(hosts=5, interval=1.0, window_s=8.0),
            ScaleConfig(hosts=5, interval=1.0, window_s=8.0, mode="watch"),
            _negotiate_watch(3, 8.0),
        ),
        _auth_both_modes(2, 3, 2),
    ),
    "quick": Profile(
        HeadToHeadConfig(),
        HeadToHeadConfig(jobs=20, min_s=5, max_s=20, repeats=1, mode="watch"),
        IdleConfig(interval=0.5),
        IdleCostConfig(hosts=50, span_s=100.0),
        (*_both_modes(((10, 45.0), (100, 45.0))), _negotiate_watch(20, 20.0)),
        _auth_both_modes(4, 10, 6),
    ),
    "full": Profile(
        HeadToHeadConfig(repeats=5),
        HeadToHeadConfig(jobs=20, min_s=30, max_s=180, repeats=2, mode="watch"),
        IdleConfig(interval=0.5, polls=10),
        IdleCostConfig(hosts=200, span_s=300.0),
        (
            *_both_modes(((10, 120.0), (100, 120.0), (1000, 150.0), (2000, 150.0))),
            _negotiate_watch(1000, 150.0),
        ),
        _auth_both_modes(10, 20, 20),
    ),
}


def print_tables(doc: dict[str, Any]) -> None:
    for key, label in (
        ("head_to_head", "event source (1 s)"),
        ("head_to_head_watch", "watch mode"),
    ):
        h2h = doc[key]
        base, src = h2h["baseline"], h2h["source"]
        watching, ratios = src["while_watching"], h2h["while_watching_ratios"]
        print()
        print(
            table(
                f"Head to head ({key}): {h2h['jobs']} async jobs of {min(h2h['durations_s'])}-"
                f"{max(h2h['durations_s'])} s on one host",
                ["", "HTTP requests", "bytes", "pipelines", "CPU s", "wall s"],
                [
                    ["async_status until loop", base["http_requests"], base["bytes"],
                     base["module_runs"], base["cpu_s"], base["wall_s"]],
                    [label, src["http_requests"], src["bytes"], src["polls"],
                     src["cpu_s"], src["wall_s"]],
                    ["ratio loop/source", h2h["requests_ratio"], h2h["bytes_ratio"], None,
                     h2h["cpu_ratio"], None],
                    [f"{label}, while watching", watching["http_requests"], watching["bytes"],
                     watching["pipelines"], watching["cpu_s"], None],
                    ["ratio, while watching", ratios["requests_ratio"], ratios["bytes_ratio"],
                     None, ratios["cpu_ratio"], None],
                ],
            )
        )  # fmt: skip
    idle_cost_rows = doc["idle_cost_per_host_hour"]
    print()
    print(
        table(
            "Idle cost per host per hour",
            ["mode", "HTTP requests", "bytes", "CPU ms", "pipelines"],
            [
                [mode, v["requests"], v["bytes"], v["cpu_ms"], v["pipelines"]]
                for mode, v in idle_cost_rows.items()
            ],
        )
    )
    idle = doc["idle_poll"]
    print()
    print(
        table(
            "Idle poll: one poll of a host whose job files did not change",
            ["job files", "HTTP requests", "bytes", "bytes in", "bytes out"],
            [
                [files, v["http_requests"], v["bytes"], v["bytes_in"], v["bytes_out"]]
                for files, v in idle["by_job_files"].items()
            ],
        )
    )
    print()
    print(fleet_table(doc["fleet"]))
    print()
    print(
        table(
            "Auth cost: the source's CPU and the bytes of one idle poll, per way of logging on",
            ["mode", "auth", "protocol", "CPU ms/poll", "bytes/idle poll", "requests/poll"],
            [
                [r["mode"], r["auth"], r["protocol"], r["cpu_ms_per_poll"],
                 r["bytes_per_idle_poll"], r["http_requests_per_poll"]]
                for r in doc["auth_cost"]
            ],
        )
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(
        argv,
        prog="python -m bench",
        description=__doc__,
        profiles=PROFILES,
        out=RESULTS_DIR / "latest.json",
    )
    profile = PROFILES[opts.profile]
    with work_dir("winasync-bench-", opts.keep) as workdir:
        progress(f"benchmark ({opts.profile}); work dir {workdir}")
        doc: dict[str, Any] = {
            "profile": opts.profile,
            "head_to_head": head_to_head(workdir / "h2h", profile.head_to_head),
            "head_to_head_watch": head_to_head(workdir / "h2h-watch", profile.head_to_head_watch),
            "idle_poll": idle_poll(workdir / "idle", profile.idle),
            "idle_cost_per_host_hour": idle_cost(workdir / "idle-cost", profile.idle_cost),
            "fleet": [scale_run(workdir / cfg.slug, cfg) for cfg in profile.fleet],
            "auth_cost": [row for cfg in profile.auth for row in auth_cost(workdir / "auth", cfg)],
        }
        print_tables(doc)
        progress(f"wrote {write_json(opts.out, doc)}")
        png = plot_latency(doc["fleet"], opts.out.with_suffix(".png"))
        if png is not None:
            progress(f"wrote {png}")
    bad = [r for r in doc["fleet"] if r["lost"] or r["duplicated"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
