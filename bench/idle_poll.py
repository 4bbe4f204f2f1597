"""What one poll of a host costs when nothing changed, for 0, 20 and 200 job files.

Each host's job files are finished and already reported; a poll then only lists the directory
and sends back nothing. The figures are exact per poll: counters are read between polls (every
pipeline that started has been terminated), then again ``polls`` polls later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ROOT, BenchError
from bench.inprocess_hosts import InProcessHosts, JobPlan, Traffic, endpoint_traffic
from bench.report import progress
from bench.source_run import EventFile, SourceRun

POLL_SCRIPT = (ROOT / "extensions/eda/winasync_eda/transports/poll.ps1").read_bytes()
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class IdleConfig:
    files: Sequence[int] = (0, 20, 200)
    polls: int = 5
    interval: float = 1.0
    # the figure that idle_poll.http_requests / bytes report
    headline_files: int = 20


def _between_polls(sims: InProcessHosts, name: str, at_least: int) -> Traffic | None:
    t = endpoint_traffic(sims.endpoints[name])
    if t.pipelines >= at_least and t.signals == t.pipelines:
        return t
    return None


def _measure(
    source: SourceRun, sims: InProcessHosts, name: str, polls: int, timeout: float
) -> Traffic:
    found: list[Traffic] = []

    def settled(at_least: int) -> bool:
        t = _between_polls(sims, name, at_least)
        if t is not None:
            found.append(t)
        return t is not None

    start_count = endpoint_traffic(sims.endpoints[name]).pipelines + 1
    if not source.wait_for(lambda: settled(start_count), timeout, step=0.02):
        raise BenchError(f"{name}: no quiet moment between polls")
    first = found[-1]
    if not source.wait_for(lambda: settled(first.pipelines + polls), timeout, step=0.02):
        raise BenchError(f"{name}: {polls} more polls did not come")
    return found[-1] - first


def idle_poll(workdir: Path, cfg: IdleConfig) -> dict[str, Any]:
    with InProcessHosts(len(cfg.files), workdir / "sim", prefix="idle") as sims:
        plans = [
            JobPlan(name, "finished", 0.0)
            for name, count in zip(sims.names, cfg.files, strict=True)
            for _ in range(count)
        ]
        refs = sims.start_jobs(plans)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(sims.job_ended(r) for r in refs):
            if time.monotonic() > deadline:
                raise BenchError("the idle hosts' jobs did not finish")
            time.sleep(0.05)
        progress(
            f"idle poll: hosts with {', '.join(map(str, cfg.files))} finished job files, "
            f"interval {cfg.interval:g} s, {cfg.polls} polls each"
        )
        events = EventFile(workdir / "idle.events.jsonl")
        args = {"hosts": sims.source_hosts(), "interval": cfg.interval}
        source = SourceRun(workdir, args, events, "idle-source").start()
        try:
            if not source.wait_for(lambda: len(events.arrivals) >= len(refs), READY_TIMEOUT_S):
                raise BenchError(
                    f"the source emitted {len(events.arrivals)} of {len(refs)} events; "
                    f"see {source.log_path}"
                )
            by_files: dict[str, Any] = {}
            for name, count in zip(sims.names, cfg.files, strict=True):
                # the poll after the one that read the files is the first idle one
                delta = _measure(source, sims, name, cfg.polls, READY_TIMEOUT_S)
                n = delta.pipelines
                by_files[str(count)] = {
                    "http_requests": round(delta.requests / n, 2),
                    "bytes": round(delta.bytes / n),
                    "bytes_in": round(delta.bytes_in / n),
                    "bytes_out": round(delta.bytes_out / n),
                    "polls_measured": n,
                }
                progress(
                    f"  {count:>4} job files: {delta.requests / n:.1f} requests, "
                    f"{delta.bytes / n / 1024:.1f} KiB per idle poll"
                )
        finally:
            source.stop()
    headline = by_files.get(str(cfg.headline_files)) or next(iter(by_files.values()))
    return {
        "http_requests": headline["http_requests"],
        "bytes": headline["bytes"],
        "job_files": cfg.headline_files if str(cfg.headline_files) in by_files else None,
        "by_job_files": by_files,
        "interval_s": cfg.interval,
        "poll_script_bytes": len(POLL_SCRIPT),
    }
