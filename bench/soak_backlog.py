"""A backlog after a restart: one host holding thousands of finished job files.

Ansible never deletes the files of ``poll: 0`` jobs. The source is started on such a host with a
``state_file``, killed (SIGKILL) half way through the backlog, and started again: the new
process knows nothing (``Known`` is empty), so it must read the whole directory again, in
answers bounded by ``max_answer_bytes``, under the host's MaxMemoryPerShellMB, and emit every
outcome it had not emitted yet. Figures: time to read the backlog after the restart, the
source's peak RSS, the simulated host's peak poll working set against its quota.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.inprocess_hosts import InProcessHosts
from bench.report import progress
from bench.source_run import EventFile, SourceRun
from bench.tally import duplicates
from winsim.backlog import write_backlog

MB = 1024 * 1024
RSS_TARGET_MB = 300


@dataclass(frozen=True)
class BacklogConfig:
    files: int = 3000
    file_bytes: int = 40_000
    # the source is killed once this share of the backlog was emitted
    kill_at: float = 0.5
    interval: float = 15.0
    timeout_s: float = 600.0


def backlog(workdir: Path, cfg: BacklogConfig) -> dict[str, Any]:
    with InProcessHosts(1, workdir / "sim", prefix="bl") as fleet:
        (name,) = fleet.names
        host = fleet.hosts[name]
        names = fleet.sim.call(_write(host, cfg))
        quota_mb = host.memory_quota_mb
        progress(
            f"backlog: {cfg.files} finished job files of {cfg.file_bytes // 1000} KB on {name} "
            f"(MaxMemoryPerShellMB {quota_mb})"
        )
        events = EventFile(workdir / "backlog.events.jsonl")
        args = {
            "hosts": fleet.source_hosts(),
            "interval": cfg.interval,
            "state_file": str(workdir / "backlog.state.json"),
        }
        first = SourceRun(workdir, args, events, "backlog-first").start()
        wanted = set(names)

        def emitted() -> set[str]:
            return {a.jid for a in events.arrivals if a.host == name}

        try:
            first.wait_for(lambda: len(emitted()) >= cfg.kill_at * cfg.files, cfg.timeout_s)
        finally:
            first.kill()
        before_restart = len(emitted())
        rss_first_kb = events.max_rss_kb
        started = time.monotonic()
        restart_wall = time.time()
        second = SourceRun(workdir, args, events, "backlog-restart").start()
        try:
            complete = second.wait_for(lambda: wanted <= emitted(), cfg.timeout_s)
            read_s = time.monotonic() - started
        finally:
            exit_record = second.stop()
        if exit_record is None:
            raise BenchError(f"the backlog run left no exit record; see {second.log_path}")
        polls = fleet.traffic([name]).pipelines
    restart_rss = [s.rss_kb for s in events.samples if s.t >= restart_wall]
    restart_rss += [int(e.get("maxrss_kb", 0)) for e in events.exits[-1:]]
    result = {
        "files": cfg.files,
        "file_kb": cfg.file_bytes // 1000,
        "emitted_before_restart": before_restart,
        "complete_after_restart": complete,
        "missing": len(wanted - emitted()),
        "duplicated": duplicates(events.arrivals),
        "read_after_restart_s": round(read_s, 1),
        "polls": polls,
        "peak_rss_mb": round(events.max_rss_kb / 1024, 1),
        "peak_rss_first_run_mb": round(rss_first_kb / 1024, 1),
        "peak_rss_restart_mb": round(max(restart_rss, default=0) / 1024, 1),
        "rss_target_mb": RSS_TARGET_MB,
        "memory_quota_mb": quota_mb,
        "peak_poll_working_set_mb": round(host.peak_working_set / MB, 1),
        "pipelines_over_quota": host.quota_failures,
    }
    progress(
        f"backlog: {result['emitted_before_restart']} emitted, then SIGKILL and restart; all "
        f"{cfg.files} read {result['read_after_restart_s']} s after the restart "
        f"(complete: {complete}, duplicated {result['duplicated']}); peak RSS "
        f"{result['peak_rss_mb']} MB; peak poll working set {result['peak_poll_working_set_mb']}"
        f" MB of {quota_mb} MB, {host.quota_failures} pipelines over the quota"
    )
    return result


async def _write(host: Any, cfg: BacklogConfig) -> list[str]:
    return write_backlog(host, cfg.files, cfg.file_bytes, rc_every=10)
