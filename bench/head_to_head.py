"""The classic ``async_status`` + ``until`` loop against the event source, on the same jobs.

Both sides start the same jobs with the same playbook task (async ``win_shell``, ``poll: 0``):

- baseline: ``classic_wait.yml`` starts them and waits with ``until: finished``, ``delay: 1``;
  its waiting cost is that run minus a run of the start task alone (``--tags start``), which
  also takes ansible-playbook's own start-up out of the difference;
- source: already watching the host (interval 1 s) while ``--tags start`` starts the jobs, until
  the last job's event; everything it sent counts, its pool opening and idle polls included.
  The same side is also measured ``while_watching``: from the moment the start-only playbook
  begins (the source already watching, as a rulebook daemon is) to the last event. That is the
  window the loop's figures cover too: the start-only run it is reduced by opened a connection
  as well, so neither side's connection setup, nor either process's start, counts there.

The source talks to the host through an endpoint of its own (an alias of the same simulated
host), so its requests are counted apart from the playbook's. CPU times move by tens of percent
from run to run on a shared machine, so the whole comparison is repeated on fresh hosts and the
medians are reported (requests and bytes hardly move).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.baseline import CLASSIC_PLAYBOOK, PlaybookRun, run_playbook
from bench.inprocess_hosts import InProcessHosts, Traffic
from bench.report import progress
from bench.scale import sample_after
from bench.source_run import EventFile, SourceRun, mode_args
from bench.tally import rounded

START_TIMEOUT_S = 60.0
EVENTS_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class HeadToHeadConfig:
    jobs: int = 20
    min_s: int = 2
    max_s: int = 5
    interval: float = 1.0
    repeats: int = 3
    seed: int = 20
    # the source's mode: "watch" waits on the host instead of polling every interval
    mode: str = "poll"
    watch_wait: float = 50.0

    def source_args(self) -> dict[str, Any]:
        return mode_args(self.mode, interval=self.interval, watch_wait=self.watch_wait)

    @property
    def source_label(self) -> str:
        if self.mode == "watch":
            return f"watch mode (waits up to {self.watch_wait:g} s)"
        return f"interval {self.interval:g} s"


@dataclass
class _SourceSide:
    traffic: Traffic
    cpu_s: float
    startup_cpu_s: float | None
    wall_s: float
    rss_kb: int
    # from the start-only playbook's start to the last event
    watching_traffic: Traffic
    watching_cpu_s: float
    statuses: list[str] = field(default_factory=list)


def _check_playbook(run: PlaybookRun, what: str) -> None:
    if run.rc != 0:
        tail = "\n".join(run.log.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"{what}: ansible-playbook exited with {run.rc}; see {run.log}\n{tail}")


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def _watch_while_starting(
    sims: InProcessHosts,
    host: str,
    extra: dict[str, Any],
    workdir: Path,
    cfg: HeadToHeadConfig,
    rep: int,
) -> tuple[PlaybookRun, _SourceSide]:
    """The source watches ``host`` while the start-only playbook starts the jobs on it."""
    watch = f"{host}-watch"
    sims.alias(watch, host)
    events = EventFile(workdir / f"h2h-{rep}.events.jsonl")
    args: dict[str, Any] = {
        "hosts": [{**sims.source_host(watch), "name": host}],
        **cfg.source_args(),
    }
    source = SourceRun(workdir, args, events, f"h2h-source-{rep}").start()
    try:
        if not source.wait_for(lambda: sims.polled_hosts([watch]) > 0, START_TIMEOUT_S):
            raise BenchError(f"the source never polled; see {source.log_path}")
        began = time.time()
        traffic_before = sims.traffic([watch])
        cpu_before = sample_after(source, events, began).cpu_s
        start_only = run_playbook(
            sims, [host], CLASSIC_PLAYBOOK, extra, workdir, f"start-only-{rep}", tags="start"
        )
        _check_playbook(start_only, "start-only playbook")
        timeout = max(EVENTS_TIMEOUT_S, cfg.max_s + 60.0)  # the longest job, and room
        if not source.wait_for(lambda: len(events.arrivals) >= cfg.jobs, timeout):
            raise BenchError(
                f"the source emitted {len(events.arrivals)} of {cfg.jobs} events; "
                f"see {source.log_path}\n{source.log_tail()}"
            )
        last_event = max(a.t for a in events.arrivals)
        watching_traffic = sims.traffic([watch]) - traffic_before
        watching_cpu = sample_after(source, events, last_event).cpu_s - cpu_before
    finally:
        exit_record = source.stop()
    if exit_record is None:
        raise BenchError(f"the source did not report its exit; see {source.log_path}")
    first = events.samples[0] if events.samples else None
    side = _SourceSide(
        traffic=sims.traffic([watch]),
        cpu_s=float(exit_record["cpu_s"]),
        startup_cpu_s=first.cpu_s if first else None,
        wall_s=last_event - (first.t if first else last_event),
        rss_kb=events.max_rss_kb,
        watching_traffic=watching_traffic,
        watching_cpu_s=watching_cpu,
        statuses=sorted({a.status for a in events.arrivals}),
    )
    return start_only, side


def _median_traffic(items: list[Traffic]) -> Traffic:
    def med(values: list[int]) -> int:
        return round(statistics.median(values))

    return Traffic(
        med([t.requests for t in items]),
        med([t.bytes_in for t in items]),
        med([t.bytes_out for t in items]),
        med([t.pipelines for t in items]),
        med([t.signals for t in items]),
    )


def _run_summary(runs: list[PlaybookRun]) -> dict[str, Any]:
    return {
        **_median_traffic([r.traffic for r in runs]).as_dict(),
        "module_runs": round(statistics.median(r.traffic.pipelines for r in runs)),
        "cpu_s": round(statistics.median(r.cpu_s for r in runs), 3),
        "cpu_s_each": [round(r.cpu_s, 3) for r in runs],
        "wall_s": round(statistics.median(r.wall_s for r in runs), 3),
    }


def head_to_head(workdir: Path, cfg: HeadToHeadConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    durations = [rng.randint(cfg.min_s, cfg.max_s) for _ in range(cfg.jobs)]
    # the async limit and the loop's retries cover the longest job, with room to spare
    room = max(120, max(durations) + 60)
    extra = {"bench_durations": durations, "bench_async": room, "bench_retries": room}
    classics: list[PlaybookRun] = []
    starts: list[PlaybookRun] = []
    sides: list[_SourceSide] = []
    with InProcessHosts(2 * cfg.repeats, workdir / "sim", prefix="h2h") as sims:
        for rep in range(cfg.repeats):
            classic_host, watched_host = sims.names[2 * rep : 2 * rep + 2]
            progress(
                f"head-to-head {rep + 1}/{cfg.repeats}: classic playbook on {classic_host} "
                f"({cfg.jobs} jobs of {cfg.min_s}-{cfg.max_s} s, until finished, delay 1); "
                f"then the source watching {watched_host} while the jobs start"
            )
            classic = run_playbook(
                sims, [classic_host], CLASSIC_PLAYBOOK, extra, workdir, f"classic-{rep}"
            )
            _check_playbook(classic, "classic playbook")
            start_only, side = _watch_while_starting(sims, watched_host, extra, workdir, cfg, rep)
            classics.append(classic)
            starts.append(start_only)
            sides.append(side)
            progress(
                f"  classic {classic.traffic.requests} requests, {classic.cpu_s:.2f} s CPU; "
                f"start-only {start_only.traffic.requests} requests, {start_only.cpu_s:.2f} s "
                f"CPU; source {side.traffic.requests} requests, {side.cpu_s:.2f} s CPU"
            )

    classic_sum, start_sum = _run_summary(classics), _run_summary(starts)
    wait_traffic = _median_traffic(
        [c.traffic - s.traffic for c, s in zip(classics, starts, strict=True)]
    )
    wait_cpu = classic_sum["cpu_s"] - start_sum["cpu_s"]
    src_traffic = _median_traffic([s.traffic for s in sides])
    src_cpu = statistics.median(s.cpu_s for s in sides)
    watching_traffic = _median_traffic([s.watching_traffic for s in sides])
    watching_cpu = statistics.median(s.watching_cpu_s for s in sides)
    startups = [s.startup_cpu_s for s in sides if s.startup_cpu_s is not None]
    baseline = {
        "method": f"async_status + until: finished, retries {room}, delay 1 "
        "(median classic run minus median start-only run)",
        **wait_traffic.as_dict(),
        "module_runs": wait_traffic.pipelines,
        "cpu_s": round(wait_cpu, 3),
        "wall_s": round(classic_sum["wall_s"] - start_sum["wall_s"], 3),
        "classic_run": classic_sum,
        "start_only_run": start_sum,
    }
    src = {
        "method": f"winasync.eda.async_jobs, {cfg.source_label}, "
        "watching before the jobs start, until the last event",
        **src_traffic.as_dict(),
        "polls": src_traffic.pipelines,
        "cpu_s": round(src_cpu, 3),
        "cpu_s_each": [round(s.cpu_s, 3) for s in sides],
        # interpreter start and imports, before the source began (included in cpu_s)
        "startup_cpu_s": rounded(statistics.median(startups)) if startups else None,
        "wall_s": round(statistics.median(s.wall_s for s in sides), 3),
        "rss_mb": round(max(s.rss_kb for s in sides) / 1024, 1),
        "events": cfg.jobs,
        "statuses": sorted({st for s in sides for st in s.statuses}),
        "while_watching": {
            "method": "from the start-only playbook's start to the last event, the source "
            "already watching (its process start and pool opening not counted)",
            **watching_traffic.as_dict(),
            "cpu_s": round(watching_cpu, 3),
            "cpu_s_each": [round(s.watching_cpu_s, 3) for s in sides],
        },
    }
    return {
        "jobs": cfg.jobs,
        "durations_s": durations,
        "interval_s": cfg.interval,
        "mode": cfg.mode,
        "repeats": cfg.repeats,
        "requests_ratio": _ratio(wait_traffic.requests, src_traffic.requests),
        "bytes_ratio": _ratio(wait_traffic.bytes, src_traffic.bytes),
        # the source's CPU counts its whole life, interpreter start and imports included; a
        # rulebook pays those once, not per batch of jobs: the ratio without them
        "cpu_ratio": _ratio(wait_cpu, src_cpu),
        "cpu_ratio_excluding_source_startup": _ratio(
            wait_cpu, src_cpu - (statistics.median(startups) if startups else 0.0)
        ),
        # the same, counting on the source's side only the window the loop's figures cover
        "while_watching_ratios": {
            "requests_ratio": _ratio(wait_traffic.requests, watching_traffic.requests),
            "bytes_ratio": _ratio(wait_traffic.bytes, watching_traffic.bytes),
            "cpu_ratio": _ratio(wait_cpu, watching_cpu),
        },
        "baseline": baseline,
        "source": src,
    }
