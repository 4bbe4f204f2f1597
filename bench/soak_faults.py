"""The fault matrix: hosts whose jobs finish while a fault is on, then the fault is cleared.

Every fault kind of winsim's fault injection gets its own hosts, all watched by one source, with
hosts that have no fault as a control. Each job must end up with exactly one event; the worst
latency (from the job's final write) and the recovery time after the fault was cleared are
reported per fault.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.inprocess_hosts import InProcessHosts, JobPlan, JobRef
from bench.report import progress
from bench.source_run import EventFile, SourceRun
from bench.tally import rounded, tally

# the source's settings for the soak: short timeouts and backoffs, so a fault costs seconds
SOURCE_SETTINGS: dict[str, Any] = {
    "connection_timeout": 3,
    "read_timeout": 4,
    "operation_timeout": 2,
    "poll_timeout": 12,
    "backoff_max": 8,
    "auth_backoff": 10,
}
# watch mode: a short wait, the parked Receive's timeouts above it and below the slow reply
WATCH_SETTINGS: dict[str, Any] = {
    "mode": "watch",
    "watch_wait": 3,
    "operation_timeout": 5,
    "read_timeout": 7,
}
SLOW_REPLY_S = 8.0  # beyond read_timeout
WRONG_PASSWORD = "wrong_password"
FLAP_PERIOD_S = 2.0

# (label, FaultPlan.inject arguments)
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("refused", {"kind": "refuse"}),
    ("http401", {"kind": "unauthorized"}),
    ("http500_wsman_fault", {"kind": "wsman_fault"}),
    ("http503_plain", {"kind": "http_error", "status": 503, "message": "Service Unavailable"}),
    ("slow_reply", {"kind": "delay", "delay": SLOW_REPLY_S}),
    ("dropped_mid_reply", {"kind": "drop"}),
    ("broken_pool", {"kind": "pool_broken"}),
    ("shell_lost", {"kind": "shell_lost"}),
    ("flapping", {"kind": "flap", "period": FLAP_PERIOD_S}),
    # not a FaultPlan kind: the account's password is changed on the host while the fault is
    # on (the source still has the old one), then changed back; every logon is a 401
    ("wrong_password", {"kind": WRONG_PASSWORD}),
]


@dataclass(frozen=True)
class FaultConfig:
    hosts_per_fault: int = 2
    jobs_per_host: int = 3
    fault_s: float = 20.0
    interval: float = 1.0
    seed: int = 11
    mode: str = "poll"

    def source_args(self) -> dict[str, Any]:
        settings = {"interval": self.interval, **SOURCE_SETTINGS}
        return {**settings, **WATCH_SETTINGS} if self.mode == "watch" else settings


def fault_matrix(workdir: Path, cfg: FaultConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one row per fault, how the source fared: alive at the end, its exit error)."""
    rng = random.Random(cfg.seed)
    count = cfg.hosts_per_fault * len(FAULTS)
    with InProcessHosts(count, workdir / "sim", prefix="ft") as sims:
        names = sims.names
        groups = {
            label: names[i * cfg.hosts_per_fault : (i + 1) * cfg.hosts_per_fault]
            for i, (label, _) in enumerate(FAULTS)
        }
        events = EventFile(workdir / "faults.events.jsonl")
        args = {"hosts": sims.source_hosts(), **cfg.source_args()}
        source = SourceRun(workdir, args, events, "faults-source").start()
        try:
            if not source.wait_for(lambda: sims.polled_hosts() == count, 60.0, step=0.2):
                raise BenchError(f"not every host was polled; see {source.log_path}")
            for label, spec in FAULTS:
                for name in groups[label]:
                    if spec.get("kind") == WRONG_PASSWORD:
                        sims.set_password(name, secrets.token_urlsafe(16))
                    elif spec:
                        sims.endpoints[name].faults.inject(**spec)
            plans = [
                JobPlan(name, "finished", round(rng.uniform(1.0, cfg.fault_s - 1.0), 3))
                for name in names
                for _ in range(cfg.jobs_per_host)
            ]
            refs = sims.start_jobs(plans)
            progress(
                f"faults: {len(FAULTS) - 1} faults on {cfg.hosts_per_fault} hosts each "
                f"(+ control), {len(refs)} jobs ending while the faults are on for {cfg.fault_s:g} s"
            )
            source.wait_for(lambda: False, cfg.fault_s)
            for name in names:
                sims.endpoints[name].faults.clear()
                sims.set_password(name, sims.password)
            t_clear = time.time()
            during = {(a.host, a.jid) for a in events.arrivals if a.t < t_clear}
            progress(f"faults: cleared; {len(during)} events came while they were on")
            wanted = {(r.host, r.jid, r.expected) for r in refs}
            recovery = max(SOURCE_SETTINGS["auth_backoff"], SOURCE_SETTINGS["backoff_max"])
            deadline = recovery + SOURCE_SETTINGS["poll_timeout"] + 30.0
            source.wait_for(
                lambda: wanted <= {(a.host, a.jid, a.status) for a in events.arrivals}, deadline
            )
            source.wait_for(lambda: False, 3 * cfg.interval)  # a late duplicate shows up now
            alive = source.alive
            hits = {name: sims.endpoints[name].faults.hits() for name in names}
            logon_failures = {name: sims.endpoints[name].counters.auth_failures for name in names}
        finally:
            exit_record = source.stop()
        open_shells = {n: sims.endpoints[n].open_shells for n in names}
        final_at = {r: sims.final_write_at(r) for r in refs}

    rows = []
    for label, spec in FAULTS:
        hosts = set(groups[label])
        mine: list[JobRef] = [r for r in refs if r.host in hosts]
        result = tally(mine, final_at, events.arrivals, hosts)
        after_clear = [a.t - t_clear for a in events.arrivals if a.host in hosts and a.t >= t_clear]
        rows.append(
            {
                "fault": label,
                "kind": spec.get("kind", "none"),
                "hosts": len(hosts),
                "jobs": len(mine),
                "expected": len(mine),
                "emitted": result.handled,
                "duplicated": result.duplicated,
                "lost": result.lost,
                "unexpected": result.unexpected,
                "worst_latency_s": rounded(result.worst_latency_s),
                "recovery_after_clear_s": rounded(max(after_clear)) if after_clear else None,
                "during_fault": sum(1 for r in mine if (r.host, r.jid) in during),
                "fault_hits": sum(hits[h] for h in hosts),
                # refused logons (what an account lockout policy counts), worst host
                "logon_failures_per_host": max(logon_failures[h] for h in hosts),
                "shells_left_open": sum(open_shells[h] for h in hosts),
            }
        )
    fared = {
        "source_alive_at_end": alive,
        "source_error": (exit_record or {}).get("error", "no exit record"),
        "settings": cfg.source_args(),
        "fault_s": cfg.fault_s,
    }
    return rows, fared
