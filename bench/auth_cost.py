"""What each way of logging on costs the source: CPU per poll and bytes per idle poll.

One small fleet per auth kind (Basic over HTTPS, Negotiate over HTTP with message encryption,
Negotiate over HTTPS with channel binding, and Kerberos over HTTP with a real KDC when its tools
are installed), each watched by its own source in a child process. The job files are finished and
reported first; then CPU (the child's own samples) and traffic (the sim's counters, HTTP bodies
only) are taken over the same span of idle polls. In watch mode an idle poll is one that waited
``watch_wait`` s on a host where nothing changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.inprocess_hosts import InProcessHosts, JobPlan
from bench.report import progress
from bench.scale import sample_after
from bench.source_run import EventFile, SourceRun, logon_env, mode_args
from bench.tally import rounded
from winsim.kdc import available as kdc_available

READY_TIMEOUT_S = 120.0
# (auth, protocol)
KINDS: tuple[tuple[str, str], ...] = (
    ("basic", "https"),
    ("negotiate", "http"),
    ("negotiate", "https"),
)


@dataclass(frozen=True)
class AuthCostConfig:
    hosts: int = 4
    interval: float = 0.5
    polls_per_host: int = 10
    job_files: int = 5
    kinds: Sequence[tuple[str, str]] = KINDS
    # "watch": the polls wait on the hosts (watch_wait s each; the asyncio client there)
    mode: str = "poll"
    watch_wait: float = 1.0


def auth_cost(workdir: Path, cfg: AuthCostConfig) -> list[dict[str, Any]]:
    kinds = list(cfg.kinds)
    missing = kdc_available()
    if missing:
        progress(f"auth cost: no Kerberos row ({missing})")
    else:
        kinds.append(("kerberos", "http"))
    return [
        _one_kind(workdir / f"{cfg.mode}-{auth}-{protocol}", cfg, auth, protocol)
        for auth, protocol in kinds
    ]


def _one_kind(workdir: Path, cfg: AuthCostConfig, auth: str, protocol: str) -> dict[str, Any]:
    https = protocol == "https"
    what = f"auth cost {cfg.mode} {auth}/{protocol}"
    with InProcessHosts(cfg.hosts, workdir / "sim", prefix="ac", auth=auth, https=https) as fleet:
        refs = fleet.start_jobs(
            [
                JobPlan(name, "finished", 0.0)
                for name in fleet.names
                for _copy in range(cfg.job_files)
            ]
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(fleet.job_ended(r) for r in refs):
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: the jobs did not finish")
            time.sleep(0.05)
        events = EventFile(workdir / "events.jsonl")
        args = {
            "hosts": fleet.source_hosts(),
            **mode_args(cfg.mode, interval=cfg.interval, watch_wait=cfg.watch_wait),
        }
        source = SourceRun(
            workdir, args, events, f"auth-{auth}-{protocol}", env=logon_env(auth)
        ).start()
        try:
            if not source.wait_for(lambda: len(events.arrivals) >= len(refs), READY_TIMEOUT_S):
                raise BenchError(
                    f"{what}: {len(events.arrivals)} of {len(refs)} events; see {source.log_path}"
                )

            # both ends of the span come just after a poll's Command (its Receive and Signal to
            # come), so what the span misses of the last poll it counted from the first: ending
            # on the count's last Command after an arbitrary start left one Receive and Signal
            # per host out (2.67 requests per watch-mode poll over 6 polls a host)
            def commands() -> int:
                return fleet.traffic().pipelines

            first = commands() + 1
            if not source.wait_for(lambda: commands() >= first, READY_TIMEOUT_S, step=0.01):
                raise BenchError(f"{what}: the polls did not come")
            traffic_a, t_a = fleet.traffic(), time.time()
            wanted = traffic_a.pipelines + cfg.hosts * cfg.polls_per_host
            if not source.wait_for(lambda: commands() >= wanted, READY_TIMEOUT_S, step=0.01):
                raise BenchError(f"{what}: the polls did not come")
            traffic_b, t_b = fleet.traffic(), time.time()
            # CPU from the child's first sample after each end (one a second): both late alike
            sample_a = sample_after(source, events, t_a)
            sample_b = sample_after(source, events, t_b)
        finally:
            source.stop()
    delta = traffic_b - traffic_a
    polls = delta.pipelines
    row = {
        "auth": auth,
        "protocol": protocol,
        "mode": cfg.mode,
        "interval_s": None if cfg.mode == "watch" else cfg.interval,
        "watch_wait_s": cfg.watch_wait if cfg.mode == "watch" else None,
        "cpu_ms_per_poll": rounded((sample_b.cpu_s - sample_a.cpu_s) * 1000 / polls, 2),
        "bytes_per_idle_poll": round(delta.bytes / polls),
        "http_requests_per_poll": round(delta.requests / polls, 2),
        "polls": polls,
        "hosts": cfg.hosts,
        "job_files_per_host": cfg.job_files,
    }
    progress(
        f"{what}: {row['cpu_ms_per_poll']} ms CPU, "
        f"{row['bytes_per_idle_poll']} bytes, {row['http_requests_per_poll']} requests per poll"
    )
    return row
