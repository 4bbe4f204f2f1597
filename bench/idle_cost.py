"""What an idle host costs per hour, poll mode against watch mode: HTTP requests, bytes and the
source's CPU while nothing changes on any host.

Each host has a few finished job files, already reported. After every host has been polled and
a settling pause, the sim's counters and the source's CPU are read at the start and the end of a
span; the differences are scaled to one host and one hour. The watch span should cover a few
waits (a wait is 50 s by default), or the phase of the hosts' waits shows in the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.inprocess_hosts import InProcessHosts, JobPlan
from bench.report import progress
from bench.scale import sample_after
from bench.source_run import EventFile, SourceRun, mode_args

READY_TIMEOUT_S = 300.0
SETTLE_S = 5.0


@dataclass(frozen=True)
class IdleCostConfig:
    hosts: int = 100
    span_s: float = 120.0
    interval: float = 15.0
    watch_wait: float = 50.0
    files_per_host: int = 3


def _one(workdir: Path, cfg: IdleCostConfig, mode: str) -> dict[str, Any]:
    with InProcessHosts(cfg.hosts, workdir / f"sim-{mode}", prefix="ic") as fleet:
        plans = [
            JobPlan(name, "finished", 0.1, {"stdout": "done\r\n"})
            for name in fleet.names
            for _ in range(cfg.files_per_host)
        ]
        refs = fleet.start_jobs(plans)
        if not fleet.sim.call(_ended(fleet, refs)):
            raise BenchError("the idle jobs did not end")
        events = EventFile(workdir / f"idle-{mode}.events.jsonl")
        extra = mode_args(mode, interval=cfg.interval, watch_wait=cfg.watch_wait)
        source = SourceRun(
            workdir, {"hosts": fleet.source_hosts(), **extra}, events, f"idle-{mode}"
        ).start()
        try:
            total = len(refs)
            if not source.wait_for(lambda: len(events.arrivals) >= total, READY_TIMEOUT_S, 0.5):
                raise BenchError(f"{mode}: {len(events.arrivals)} of {total} events came")
            source.wait_for(lambda: False, SETTLE_S)
            t_a = time.time()
            sample_a, traffic_a = sample_after(source, events, t_a), fleet.traffic()
            progress(f"idle cost, {mode}: measuring {cfg.hosts} idle hosts for {cfg.span_s:.0f} s")
            source.wait_for(lambda: False, cfg.span_s)
            t_b = time.time()
            traffic_b = fleet.traffic()
            sample_b = sample_after(source, events, t_b)
        finally:
            source.stop()
    span = t_b - t_a
    per_host_hour = 3600.0 / span / cfg.hosts
    used = traffic_b - traffic_a
    return {
        "requests": round(used.requests * per_host_hour, 1),
        "bytes": round(used.bytes * per_host_hour),
        "cpu_ms": round((sample_b.cpu_s - sample_a.cpu_s) * 1000 * per_host_hour, 1),
        "pipelines": round(used.pipelines * per_host_hour, 1),
        "cpu_pct": round((sample_b.cpu_s - sample_a.cpu_s) * 100 / span, 2),
        "hosts": cfg.hosts,
        "span_s": round(span, 1),
        "interval_s": cfg.interval if mode == "poll" else None,
        "watch_wait_s": cfg.watch_wait if mode == "watch" else None,
    }


async def _ended(fleet: InProcessHosts, refs: list[Any]) -> bool:
    for ref in refs:
        await fleet.hosts[ref.host].jobs[ref.jid].wait(30)
    return True


def idle_cost(workdir: Path, cfg: IdleCostConfig) -> dict[str, Any]:
    """``idle_cost_per_host_hour``: ``{poll: {...}, watch: {...}}``."""
    result = {mode: _one(workdir, cfg, mode) for mode in ("poll", "watch")}
    for mode, row in result.items():
        progress(
            f"idle cost, {mode}: {row['requests']} requests, {row['bytes']} bytes, "
            f"{row['cpu_ms']} ms CPU per host per hour ({row['pipelines']} pipelines)"
        )
    return result
