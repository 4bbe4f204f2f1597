"""The crash soak: the source is SIGKILLed at random moments and restarted on the same state file.

Jobs keep finishing on the hosts throughout. After the last kill a final run catches up and is
stopped cleanly. Every job must have its event (``lost`` counts those that never got one);
``duplicated`` counts every repeat. A repeat is expected only inside the documented at-least-once
window: the event was handed over but the checkpoint did not record it yet when the process
died. The soak reads the state file after each kill to tell such repeats from any other.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.inprocess_hosts import InProcessHosts, JobPlan, JobRef
from bench.report import progress
from bench.source_run import EventFile, SourceRun
from bench.tally import rounded, tally
from winsim.jobs import Outcome

Key = tuple[str, str, str]


@dataclass(frozen=True)
class CrashConfig:
    runs: int = 8
    hosts: int = 3
    interval: float = 0.5
    life_min_s: float = 0.3
    life_max_s: float = 5.0
    job_every_s: float = 0.25
    job_max_s: float = 3.0
    feedback: bool = False
    seed: int = 3


def recorded(state_file: Path) -> set[Key]:
    """The (host, jid, status) outcomes the checkpoint holds; empty when missing or unreadable."""
    try:
        doc = json.loads(state_file.read_text(encoding="utf-8"))
        delivered = doc["delivered"]
        return {
            (host, jid, status)
            for host, jobs in delivered.items()
            for jid, statuses in jobs.items()
            for status in statuses
        }
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return set()


class JobStarter(threading.Thread):
    """Starts a job on a random host every few hundred ms until stopped."""

    def __init__(self, sims: InProcessHosts, cfg: CrashConfig, rng: random.Random) -> None:
        super().__init__(name="crash-job-starter", daemon=True)
        self.sims = sims
        self.cfg = cfg
        self.rng = rng
        self.refs: list[JobRef] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        outcomes: list[Outcome] = ["finished", "finished", "finished", "failed"]
        while not self.stopped.wait(self.cfg.job_every_s):
            outcome = self.rng.choice(outcomes)
            options: dict[str, Any] = {"rc": 2} if outcome == "failed" else {}
            plan = JobPlan(
                self.rng.choice(self.sims.names),
                outcome,
                round(self.rng.uniform(0.1, self.cfg.job_max_s), 3),
                options,
            )
            self.refs.extend(self.sims.start_jobs([plan]))


def crash_soak(workdir: Path, cfg: CrashConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    tag = "crash-feedback" if cfg.feedback else "crash"
    with InProcessHosts(cfg.hosts, workdir / "sim", prefix="cr") as sims:
        state_file = workdir / f"{tag}.state.json"
        events = EventFile(workdir / f"{tag}.events.jsonl")
        args: dict[str, Any] = {
            "hosts": sims.source_hosts(),
            "interval": cfg.interval,
            "state_file": str(state_file),
        }
        if cfg.feedback:
            args["feedback"] = True
        starter = JobStarter(sims, cfg, rng)
        starter.start()
        unrecorded_at_kill: set[Key] = set()
        lives: list[float] = []
        try:
            for run in range(cfg.runs):
                before = len(events.arrivals)
                source = SourceRun(workdir, args, events, f"{tag}-{run}").start()
                life = rng.uniform(cfg.life_min_s, cfg.life_max_s)
                lives.append(life)
                source.wait_for(lambda: False, life)
                source.kill()
                fresh = {(a.host, a.jid, a.status) for a in events.arrivals[before:]}
                unrecorded_at_kill |= fresh - recorded(state_file)
                if (run + 1) % max(1, cfg.runs // 5) == 0 or run + 1 == cfg.runs:
                    progress(
                        f"{tag}: {run + 1}/{cfg.runs} kills, {len(starter.refs)} jobs started, "
                        f"{len(events.arrivals)} events"
                    )
        finally:
            starter.stopped.set()
            starter.join()
        refs = list(starter.refs)
        end_by = time.monotonic() + cfg.job_max_s + 30
        while not all(sims.job_ended(r) for r in refs) and time.monotonic() < end_by:
            time.sleep(0.1)
        wanted = {(r.host, r.jid, r.expected) for r in refs}
        final = SourceRun(workdir, args, events, f"{tag}-final").start()
        try:
            final.wait_for(
                lambda: wanted <= {(a.host, a.jid, a.status) for a in events.arrivals}, 60.0
            )
            final.wait_for(lambda: False, 3 * cfg.interval)  # a late repeat shows up now
        finally:
            exit_record = final.stop()
        # pools of killed runs are never closed: on Windows they count against MaxShellsPerUser
        # until WinRM's idle timeout; the sim has no such quota, it only counts them
        open_shells = sum(sims.endpoints[n].open_shells for n in sims.names)
        final_at = {r: sims.final_write_at(r) for r in refs}

    result = tally(refs, final_at, events.arrivals)
    counts = Counter((a.host, a.jid, a.status) for a in events.arrivals)
    in_window = sum(n - 1 for k, n in counts.items() if n > 1 and k in unrecorded_at_kill)
    leftovers = sorted(p.name for p in state_file.parent.glob(f".{state_file.name}.*.tmp"))
    progress(
        f"{tag}: {cfg.runs} kills, {result.jobs} jobs: handled {result.handled}, lost "
        f"{result.lost}, duplicated {result.duplicated} ({in_window} inside the at-least-once window)"
    )
    return {
        "runs": cfg.runs,
        "jobs": result.jobs,
        "handled": result.handled,
        "lost": result.lost,
        "duplicated": result.duplicated,
        "duplicated_in_window": in_window,
        "duplicated_outside_window": result.duplicated - in_window,
        "unrecorded_at_kill": len(unrecorded_at_kill),
        "unexpected": result.unexpected,
        "worst_latency_s": rounded(result.worst_latency_s),
        "hosts": cfg.hosts,
        "interval_s": cfg.interval,
        "feedback": cfg.feedback,
        "life_s": [rounded(x, 2) for x in lives],
        "stale_tmp_files": len(leftovers),
        "shells_left_open": open_shells,
        "bad_event_lines": events.bad_lines,
        "final_run_error": (exit_record or {}).get("error", "no exit record"),
    }
