"""Many hosts, one source: latency from a job's final write to its event, CPU per host poll, RSS.

``python -m bench.scale --hosts 1000 --mode watch --auth negotiate --protocol http --window 150``
runs one fleet item alone (as a profile of ``python -m bench`` would), prints its row and writes
it as ``{"fleet": [row]}`` (``--out``, default ``bench/results/scale.json``).

All hosts live in this process's sim, each on its own HTTPS port; the source runs in a child.
Once every host has been polled once, each host gets jobs whose final writes fall throughout
the window; the run ends when every job's event came (or a deadline passed) plus one interval,
to catch a late duplicate. CPU and polls are taken over the same span (from the child's
samples and the sim's counters), so start-up and shutdown do not count.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import RESULTS_DIR, BenchError
from bench.inprocess_hosts import InProcessHosts, JobPlan
from bench.report import progress, table, work_dir, write_json
from bench.source_run import EventFile, Sample, SourceRun, logon_env, mode_args
from bench.tally import percentile, rounded, tally
from winsim.jobs import Outcome

OUTCOME_WEIGHTS: dict[Outcome, float] = {"finished": 0.8, "failed": 0.15, "timed_out": 0.05}

# a fleet row's keys as the table shows them, with their column headers
FLEET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mode", "mode"),
    ("auth", "auth"),
    ("protocol", "protocol"),
    ("hosts", "hosts"),
    ("interval_s", "interval s"),
    ("latency_p50_s", "p50 s"),
    ("latency_p95_s", "p95 s"),
    ("latency_max_s", "max s"),
    ("cpu_ms_per_host_poll", "CPU ms/poll"),
    ("rss_mb", "RSS MB"),
    ("lost", "lost"),
    ("duplicated", "dup"),
    ("polls_per_s", "polls/s"),
    ("polls_per_s_asked", "asked/s"),
    ("cpu_pct", "CPU %"),
    ("threads", "threads"),
)


@dataclass(frozen=True)
class ScaleConfig:
    hosts: int
    interval: float
    window_s: float
    jobs_per_host: int = 2
    max_concurrency: int | None = None
    seed: int = 7
    # "watch": one waiting poll per host (interval unused), each waiting up to watch_wait s
    mode: str = "poll"
    watch_wait: float = 50.0
    # how the hosts log the source on (InProcessHosts): Basic over HTTPS by default
    auth: str = "basic"
    https: bool = True

    @property
    def protocol(self) -> str:
        return "https" if self.https else "http"

    @property
    def label(self) -> str:
        return f"{self.mode} {self.hosts} hosts {self.auth}/{self.protocol}"

    @property
    def slug(self) -> str:
        """A work dir name, one per fleet item of a profile."""
        return f"fleet-{self.mode}-{self.hosts}-{self.auth}-{self.protocol}"

    def source_args(self) -> dict[str, Any]:
        return mode_args(self.mode, interval=self.interval, watch_wait=self.watch_wait)

    @property
    def settle_s(self) -> float:
        """How long a late duplicate may take to show: one poll cycle."""
        return 3.0 if self.mode == "watch" else self.interval * 1.5


def _sim_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _plans(names: list[str], cfg: ScaleConfig, rng: random.Random) -> list[JobPlan]:
    outcomes = list(OUTCOME_WEIGHTS)
    weights = list(OUTCOME_WEIGHTS.values())
    latest = max(1.0, cfg.window_s - (cfg.interval if cfg.mode == "poll" else 5.0))
    plans = []
    for name in names:
        for _ in range(cfg.jobs_per_host):
            outcome = rng.choices(outcomes, weights)[0]
            options: dict[str, Any] = {"stdout": "done\r\n"}
            if outcome == "failed":
                options["rc"] = rng.choice([1, 2, 3])
            plans.append(JobPlan(name, outcome, round(rng.uniform(0.5, latest), 3), options))
    return plans


def sample_after(source: SourceRun, events: EventFile, t: float) -> Sample:
    if not source.wait_for(lambda: events.sample_at(t) is not None, 30.0):
        raise BenchError(f"the source stopped reporting; see {source.log_path}")
    sample = events.sample_at(t)
    assert sample is not None
    return sample


def scale_run(workdir: Path, cfg: ScaleConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed + cfg.hosts)
    progress(f"fleet {cfg.label}: starting the sim")
    with InProcessHosts(
        cfg.hosts, workdir / "sim", prefix="fl", auth=cfg.auth, https=cfg.https
    ) as sims:
        events = EventFile(workdir / "sims.events.jsonl")
        args: dict[str, Any] = {"hosts": sims.source_hosts(), **cfg.source_args()}
        if cfg.max_concurrency is not None:
            args["max_concurrency"] = cfg.max_concurrency
        source = SourceRun(workdir, args, events, "fleet-source", env=logon_env(cfg.auth)).start()
        try:
            ramp = max(60.0, cfg.hosts * 0.3)
            progress(f"fleet {cfg.label}: waiting for a first poll of every host")
            warm_started = time.monotonic()
            if not source.wait_for(lambda: sims.polled_hosts() == cfg.hosts, ramp, step=0.5):
                raise BenchError(
                    f"{sims.polled_hosts()} of {cfg.hosts} hosts polled after {ramp:.0f} s; "
                    f"see {source.log_path}\n{source.log_tail()}"
                )
            warm_s = time.monotonic() - warm_started
            t_a = time.time()
            sample_a = sample_after(source, events, t_a)
            traffic_a, sim_a = sims.traffic(), _sim_cpu_s()
            plans = _plans(sims.names, cfg, rng)
            refs = sims.start_jobs(plans)
            progress(
                f"fleet {cfg.label}: all polled in {warm_s:.1f} s; {len(refs)} jobs "
                f"ending over {cfg.window_s:.0f} s"
            )
            deadline = cfg.window_s + max(4 * cfg.interval, 30.0)
            expected = {(r.host, r.jid, r.expected) for r in refs}

            def done() -> bool:
                got = {(a.host, a.jid, a.status) for a in events.arrivals}
                return expected <= got

            next_report = time.monotonic() + 15
            while not source.wait_for(done, 5.0, step=0.25):
                if not source.alive or time.time() - t_a > deadline:
                    break
                if time.monotonic() >= next_report:
                    next_report += 15
                    progress(
                        f"  {len(events.arrivals)}/{len(refs)} events, "
                        f"{(sims.traffic() - traffic_a).pipelines} polls"
                    )
            # one more poll cycle: a duplicate would show up now
            source.wait_for(lambda: False, cfg.settle_s)
            t_b = time.time()
            traffic_b, sim_b = sims.traffic(), _sim_cpu_s()
            sample_b = sample_after(source, events, t_b)
            alive = source.alive
        finally:
            exit_record = source.stop()
        final_at = {r: sims.final_write_at(r) for r in refs}

    result = tally(refs, final_at, events.arrivals)
    polls = (traffic_b - traffic_a).pipelines
    span = t_b - t_a
    cpu_ms = (sample_b.cpu_s - sample_a.cpu_s) * 1000
    watch = cfg.mode == "watch"
    row = {
        "hosts": cfg.hosts,
        "mode": cfg.mode,
        "auth": cfg.auth,
        "protocol": cfg.protocol,
        # watch mode has no interval: each poll waits on the host up to watch_wait_s
        "interval_s": None if watch else cfg.interval,
        "watch_wait_s": cfg.watch_wait if watch else None,
        "latency_p50_s": rounded(percentile(result.latencies, 0.5)),
        "latency_p95_s": rounded(percentile(result.latencies, 0.95)),
        "latency_max_s": rounded(result.worst_latency_s),
        "cpu_ms_per_host_poll": rounded(cpu_ms / polls if polls else None, 2),
        "rss_mb": round(events.max_rss_kb / 1024, 1),
        "threads": events.max_threads,
        "cpu_pct": round(cpu_ms / 10 / span, 1),
        "rss_end_mb": round(sample_b.rss_kb / 1024, 1),
        "lost": result.lost,
        "duplicated": result.duplicated,
        "jobs": result.jobs,
        "unexpected": result.unexpected,
        "polls": polls,
        "polls_per_s": round(polls / span, 2),
        "polls_per_s_asked": round(cfg.hosts / (cfg.watch_wait if watch else cfg.interval), 2),
        "source_cpu_pct": round(cpu_ms / 10 / span, 1),
        "sim_cpu_pct": round((sim_b - sim_a) * 100 / span, 1),
        "window_s": round(span, 1),
        "warmup_s": round(warm_s, 1),
        "http_requests": (traffic_b - traffic_a).requests,
        "bytes": (traffic_b - traffic_a).bytes,
        "source_alive": alive,
        "source_error": exit_record.get("error") if exit_record else "no exit record",
    }
    progress(
        f"fleet {cfg.label}: p50 {row['latency_p50_s']} s, p95 {row['latency_p95_s']} s, "
        f"max {row['latency_max_s']} s, {row['cpu_ms_per_host_poll']} ms CPU per host poll, "
        f"lost {row['lost']}, duplicated {row['duplicated']}"
    )
    return row


def fleet_table(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        "Fleet: one source, N hosts, jobs ending throughout",
        [header for _key, header in FLEET_COLUMNS],
        [[row.get(key) for key, _header in FLEET_COLUMNS] for row in rows],
    )


def main(argv: list[str] | None = None) -> int:
    """One fleet item by hand: the profiles' big items cost too much to run a whole profile."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--hosts", type=int, required=True)
    parser.add_argument("--mode", choices=("poll", "watch"), default="watch")
    parser.add_argument("--auth", choices=("basic", "negotiate", "kerberos"), default="basic")
    parser.add_argument("--protocol", choices=("https", "http"), default="https")
    parser.add_argument("--window", type=float, default=150.0, help="seconds the jobs end over")
    parser.add_argument("--interval", type=float, default=15.0, help="poll mode's interval")
    parser.add_argument("--watch-wait", type=float, default=50.0)
    parser.add_argument("--jobs-per-host", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, sim disk)")
    opts = parser.parse_args(argv)
    cfg = ScaleConfig(
        hosts=opts.hosts,
        interval=opts.interval,
        window_s=opts.window,
        jobs_per_host=opts.jobs_per_host,
        mode=opts.mode,
        watch_wait=opts.watch_wait,
        auth=opts.auth,
        https=opts.protocol == "https",
    )
    with work_dir("winasync-scale-", opts.keep) as workdir:
        row = scale_run(workdir / cfg.slug, cfg)
    print()
    print(fleet_table([row]))
    progress(f"wrote {write_json(opts.out, {'fleet': [row]})}")
    return 1 if row["lost"] or row["duplicated"] else 0


if __name__ == "__main__":
    sys.exit(main())
