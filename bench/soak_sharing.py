"""How often a poll's read breaks the watchdog's final write, at a 1 s interval.

Windows PowerShell 5.1's ``Set-Content`` fails while any reader holds the job file; the job is
then ``lost`` although it finished. The simulated host keeps a poll's read handle open for
``hold_ms`` (a model of one open, one pre-sized read and a close on Windows: well under a
millisecond for a job file; 1 ms is taken to stay on the safe side) and fails a final write that
meets it. The figure is the share of jobs whose write failed so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.inprocess_hosts import InProcessHosts, JobPlan
from bench.report import progress
from bench.source_run import EventFile, SourceRun


@dataclass(frozen=True)
class SharingConfig:
    hosts: int = 4
    jobs_per_host: int = 50
    interval: float = 1.0
    hold_ms: float = 1.0
    max_duration_s: float = 20.0
    seed: int = 7
    timeout_s: float = 300.0


def sharing(workdir: Path, cfg: SharingConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    with InProcessHosts(cfg.hosts, workdir / "sim", prefix="sh") as fleet:
        for host in fleet.hosts.values():
            host.read_hold_s = cfg.hold_ms / 1000
        events = EventFile(workdir / "sharing.events.jsonl")
        args = {"hosts": fleet.source_hosts(), "interval": cfg.interval}
        source = SourceRun(workdir, args, events, "sharing-source").start()
        try:
            plans = [
                JobPlan(name, "finished", round(rng.uniform(0.3, cfg.max_duration_s), 3))
                for name in fleet.names
                for _ in range(cfg.jobs_per_host)
            ]
            refs = fleet.start_jobs(plans)
            wanted = {(r.host, r.jid) for r in refs}
            source.wait_for(
                lambda: wanted <= {(a.host, a.jid) for a in events.arrivals}, cfg.timeout_s
            )
        finally:
            source.stop()
        failed = sum(1 for r in refs if fleet.hosts[r.host].jobs[r.jid].phase == "write-failed")
    statuses = [a.status for a in events.arrivals]
    result = {
        "jobs": len(refs),
        "interval_s": cfg.interval,
        "read_hold_ms": cfg.hold_ms,
        "writes_failed": failed,
        "lost": statuses.count("lost"),
        "finished": statuses.count("finished"),
        "reported": len({(a.host, a.jid) for a in events.arrivals}),
    }
    progress(
        f"sharing: {failed} of {len(refs)} final writes failed on a poll's read handle "
        f"(interval {cfg.interval} s, read handle modelled open {cfg.hold_ms} ms); "
        f"{result['lost']} lost, {result['finished']} finished"
    )
    return result
