"""Hostile input: odd files in a host's async dir must not crash or stall the source.

Bad names carry a valid finished result, so an event for one would show that the name filter
let it through. Files with a job name and odd content must not stop the host's other jobs from
being reported on time; the two that hold a real finished result (non-UTF-8, huge) should be
reported as finished. A second host without odd files is the control.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.inprocess_hosts import InProcessHosts, JobPlan
from bench.report import progress
from bench.source_run import EventFile, SourceRun
from bench.tally import rounded, tally
from winsim.host import SimHost

MB = 1024 * 1024
BAD_NAME = "bad name"
UNICODE_NAME = "bad name, non-ASCII digits"


@dataclass(frozen=True)
class HostileConfig:
    huge_mb: int = 20
    big_mb: int = 5
    interval: float = 1.0
    jobs_per_wave: int = 3
    seed: int = 5


@dataclass(frozen=True)
class Odd:
    name: str
    what: str
    data: bytes | None  # None: a directory
    # the status an event should carry, or None: no event at all
    expect: str | None


def _finished(jid: str, stdout: str, encoding: str = "utf-8", bom: bool = True) -> bytes:
    record = {
        "started": True,
        "finished": True,
        "results_file": f"C:\\Users\\ansible\\.ansible_async\\{jid}",
        "ansible_job_id": jid,
        "changed": True,
        "rc": 0,
        "stdout": stdout,
        "stderr": "",
    }
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    body = text.encode(encoding) + b"\r\n"
    return (b"\xef\xbb\xbf" + body) if bom else body


def odd_files(cfg: HostileConfig, rng: random.Random) -> list[Odd]:
    ok = _finished("j1.4000", "should never be reported")
    bad_names = [
        "notes.txt",
        "j123",
        "J123456.4000",
        "j1234567890123.4000",
        "j123456.4000.tmp",
        "xj123456.4000",
        "j123456.",
        "j.4000",
        "j123456.-4000",
        "j123456.4000 ",
        " j123456.4000",
    ]
    # \d matches any Unicode digit in Python and .NET regexes; ansible writes ASCII digits only
    unicode_names = [
        "j\u0661\u0662\u0663.\u0664\u0660\u0660\u0660",  # Arabic-Indic digits
        "j\uff11\uff12.4000",  # fullwidth digits
    ]
    odds = [Odd(n, BAD_NAME, ok, None) for n in bad_names]
    odds += [Odd(n, UNICODE_NAME, ok, None) for n in unicode_names]
    odds += [
        Odd("j777000000001.4000", "directory with a job name", None, None),
        Odd("j777000000002.4000", "empty forever", b"", None),
        Odd("j777000000003.4000", "garbage bytes", rng.randbytes(4096), None),
        Odd("j777000000004.4000", "UTF-8 BOM only", b"\xef\xbb\xbf", None),
        Odd("j777000000005.4000", "NUL bytes", b"\0" * 1024, None),
        Odd("j777000000006.4000", "JSON array", b"[1,2,3]", None),
        Odd("j777000000007.4000", "JSON nested 100k deep", b"[" * 100_000 + b"]" * 100_000, None),
        Odd("j777000000008.4000", "JSON null", b"null", None),
        Odd(
            "j777000000009.4000",
            "UTF-16 with BOM",
            b"\xff\xfe"
            + _finished("j777000000009.4000", "utf16", bom=False).decode().encode("utf-16-le"),
            None,
        ),
        Odd(
            "j777000000010.4000",
            "finished, cp1252 (not UTF-8)",
            _finished("j777000000010.4000", "caf\u00e9 cr\u00e8me", "cp1252", bom=False),
            "finished",
        ),
        Odd(
            "j777000000011.4000",
            f"finished, {cfg.big_mb} MB output",
            _finished("j777000000011.4000", "x" * (cfg.big_mb * MB)),
            "finished",
        ),
        Odd(
            "j777000000012.4000",
            f"finished, {cfg.huge_mb} MB output",
            _finished("j777000000012.4000", "y" * (cfg.huge_mb * MB)),
            "finished",
        ),
    ]
    return odds


def _plant(host: SimHost, odds: list[Odd]) -> None:
    directory = host.async_dir_path
    directory.mkdir(parents=True, exist_ok=True)
    for odd in odds:
        path = directory / odd.name
        if odd.data is None:
            path.mkdir()
        else:
            host.write_file(path, odd.data)


def hostile(workdir: Path, cfg: HostileConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    odds = odd_files(cfg, rng)
    with InProcessHosts(2, workdir / "sim", prefix="ho") as sims:
        odd_host, control = sims.names
        sims.hosts[odd_host].call(_plant, sims.hosts[odd_host], odds)
        progress(f"hostile: {len(odds)} odd files on {odd_host}; {control} is the control")
        events = EventFile(workdir / "hostile.events.jsonl")
        args = {"hosts": sims.source_hosts(), "interval": cfg.interval}
        source = SourceRun(workdir, args, events, "hostile-source").start()
        refs = []
        try:
            for wave in range(2):
                plans = [
                    JobPlan(name, "finished", round(rng.uniform(0.5, 3.0), 3))
                    for name in (odd_host, control)
                    for _ in range(cfg.jobs_per_wave)
                ]
                refs += sims.start_jobs(plans)
                if wave == 0:
                    source.wait_for(lambda: False, 5 * cfg.interval)
            wanted = {(r.host, r.jid, r.expected) for r in refs}
            wanted |= {(odd_host, o.name, o.expect) for o in odds if o.expect}
            source.wait_for(
                lambda: wanted <= {(a.host, a.jid, a.status) for a in events.arrivals}, 60.0
            )
            source.wait_for(lambda: False, 3 * cfg.interval)
            alive = source.alive
            traffic = sims.traffic([odd_host])
        finally:
            exit_record = source.stop()
        final_at = {r: sims.final_write_at(r) for r in refs}
    if exit_record is None and alive:
        raise BenchError(f"the hostile run left no exit record; see {source.log_path}")

    normal = {r.jid for r in refs}
    by_name: dict[str, list[Any]] = {}
    for a in events.arrivals:
        if a.host == odd_host and a.jid not in normal:
            by_name.setdefault(a.jid, []).append(a)
    files: list[dict[str, Any]] = []
    for odd in odds:
        got = by_name.pop(odd.name, [])
        truncated = any(bool(a.event["async_job"].get("truncated")) for a in got)
        stdout = next((str(a.event["async_job"].get("stdout", "")) for a in got), None)
        statuses = sorted({a.status for a in got})
        ok = statuses == ([odd.expect] if odd.expect else []) and len(got) <= 1
        files.append(
            {
                "name": odd.name,
                "what": odd.what,
                "expected": odd.expect,
                "emitted": statuses,
                "events": len(got),
                "truncated": truncated if got else None,
                "stdout_head": stdout[:40] if stdout is not None else None,
                "ok": ok,
            }
        )
    result = tally(refs, final_at, events.arrivals, {odd_host, control})
    odd_latency = tally([r for r in refs if r.host == odd_host], final_at, events.arrivals)
    ctl_latency = tally([r for r in refs if r.host == control], final_at, events.arrivals)
    bad_name_events = sum(f["events"] for f in files if f["what"] == BAD_NAME)
    unicode_name_events = sum(f["events"] for f in files if f["what"] == UNICODE_NAME)
    summary = {
        "files": files,
        "odd_files": len(odds),
        "files_ok": sum(1 for f in files if f["ok"]),
        "bad_name_events": bad_name_events,
        "unicode_digit_name_events": unicode_name_events,
        "stray_events": sorted(by_name),
        "normal_jobs": result.jobs,
        "normal_lost": result.lost,
        "duplicated": result.duplicated,
        "worst_latency_odd_host_s": rounded(odd_latency.worst_latency_s),
        "worst_latency_control_s": rounded(ctl_latency.worst_latency_s),
        "source_alive_at_end": alive,
        "source_error": (exit_record or {}).get("error", "no exit record"),
        "odd_host_http_bytes": traffic.bytes,
        "rss_mb": round(events.max_rss_kb / 1024, 1),
    }
    progress(
        f"hostile: {summary['files_ok']}/{len(odds)} odd files handled as expected, "
        f"{bad_name_events} events for bad names ({unicode_name_events} for names with "
        f"non-ASCII digits), normal jobs lost {result.lost}, "
        f"worst latency {summary['worst_latency_odd_host_s']} s (control "
        f"{summary['worst_latency_control_s']} s), source alive: {alive}"
    )
    return summary
