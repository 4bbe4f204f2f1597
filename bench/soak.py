"""``python -m bench.soak --quick|--full|--smoke``: the reliability suite.

Fault matrix, crash soak (SIGKILL + restart on one state file), failover across
ansible-rulebook nodes on PostgreSQL (``soak_failover.py``), hostile input and a backlog of
3,000 job files read after a restart, against
simulated Windows hosts over HTTPS. Prints its tables and writes ``bench/results/soak.json``
(or ``--out``). Exits 1 when a job was lost, an event was repeated outside the documented
at-least-once window, a bad name was reported, or the source died.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any

from bench import RESULTS_DIR
from bench.report import parse_options, progress, table, work_dir, write_json
from bench.soak_backlog import RSS_TARGET_MB, BacklogConfig, backlog
from bench.soak_crash import CrashConfig, crash_soak
from bench.soak_failover import FailoverConfig, failover_soak
from bench.soak_faults import FaultConfig, fault_matrix
from bench.soak_hostile import HostileConfig, hostile
from bench.soak_sharing import SharingConfig, sharing


@dataclass(frozen=True)
class SoakProfile:
    faults: FaultConfig
    crash: CrashConfig
    crash_feedback: CrashConfig | None
    # the fault matrix and the crash soak again in watch mode
    watch: bool = True
    hostile: HostileConfig = field(default_factory=HostileConfig)
    backlog: BacklogConfig = field(default_factory=BacklogConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)


PROFILES: dict[str, SoakProfile] = {
    "smoke": SoakProfile(
        faults=FaultConfig(hosts_per_fault=1, jobs_per_host=2, fault_s=8.0),
        crash=CrashConfig(runs=3, hosts=2, life_max_s=3.0),
        crash_feedback=None,
        hostile=HostileConfig(jobs_per_wave=2),
        backlog=BacklogConfig(files=300),
        sharing=SharingConfig(hosts=2, jobs_per_host=5, max_duration_s=3.0),
        failover=FailoverConfig(runs=1, hosts=2),
    ),
    "quick": SoakProfile(
        faults=FaultConfig(hosts_per_fault=2, jobs_per_host=3, fault_s=20.0),
        crash=CrashConfig(runs=10),
        crash_feedback=CrashConfig(runs=5, feedback=True, seed=4),
        failover=FailoverConfig(runs=5),
    ),
    "full": SoakProfile(
        faults=FaultConfig(hosts_per_fault=4, jobs_per_host=5, fault_s=45.0, interval=2.0),
        crash=CrashConfig(runs=60, hosts=4),
        crash_feedback=CrashConfig(runs=30, hosts=4, feedback=True, seed=4),
        hostile=HostileConfig(jobs_per_wave=5),
    ),
}


def print_tables(doc: dict[str, Any]) -> None:
    rows = [
        [
            f["fault"],
            f["hosts"],
            f["jobs"],
            f["expected"],
            f["emitted"],
            f["duplicated"],
            f["during_fault"],
            f["worst_latency_s"],
            f["recovery_after_clear_s"],
            f["fault_hits"],
        ]
        for f in doc["faults"]
    ]
    print()
    print(
        table(
            "Fault matrix (jobs finish while the fault is on; then it is cleared)",
            [
                "fault",
                "hosts",
                "jobs",
                "expected",
                "emitted",
                "dup",
                "during",
                "worst lat s",
                "after clear s",
                "hits",
            ],
            rows,
        )
    )
    lockout = doc.get("lockout")
    if lockout:
        print(
            f"wrong password: at most {lockout['logon_failures_per_host']} refused logons per host "
            f"in {lockout['window_s']:g} s with auth_backoff {lockout['auth_backoff_s']:g} s "
            f"(bound {lockout['bound_per_host']}); at the default auth_backoff of 900 s that is "
            f"at most {lockout['per_host_per_hour_at_default']} per host per hour"
        )
    crashes = [doc["crash"]] + ([doc["crash_feedback"]] if doc.get("crash_feedback") else [])
    print()
    print(
        table(
            "Crash soak (SIGKILL at random moments, restart on the same state_file)",
            ["feedback", "runs", "jobs", "handled", "lost", "dup", "dup in window", "dup outside"],
            [
                [
                    c["feedback"],
                    c["runs"],
                    c["jobs"],
                    c["handled"],
                    c["lost"],
                    c["duplicated"],
                    c["duplicated_in_window"],
                    c["duplicated_outside_window"],
                ]
                for c in crashes
            ],
        )
    )
    fo = doc["failover"]
    print()
    print(
        table(
            "Failover (ansible-rulebook nodes on one PostgreSQL, SIGKILL, the next node takes over)",
            ["runs", "jobs", "handled", "lost", "dup", "dup outside", "takeover s", "window s"],
            [
                [
                    fo["runs"],
                    fo["jobs"],
                    fo["handled"],
                    fo["lost"],
                    fo["duplicated"],
                    fo["duplicated_outside_window"],
                    "/".join(str(v) for v in fo["takeover_s"].values()),
                    "/".join(str(v) for v in fo["window_s"].values()),
                ]
            ],
        )
    )
    print(f"kill moments: {fo['moments']} (reached: {fo['moments_reached']}); p50/max")
    h = doc["hostile"]
    print()
    print(
        table(
            "Hostile input (odd files in one host's async dir)",
            ["file", "what", "expected", "emitted", "ok"],
            [
                [repr(f["name"]), f["what"], f["expected"], ",".join(f["emitted"]) or "-", f["ok"]]
                for f in h["files"]
            ],
        )
    )
    print(
        f"normal jobs: {h['normal_jobs']}, lost {h['normal_lost']}, duplicated {h['duplicated']};"
        f" worst latency {h['worst_latency_odd_host_s']} s on the odd host, "
        f"{h['worst_latency_control_s']} s on the control; source alive: "
        f"{h['source_alive_at_end']}"
    )
    b = doc["backlog"]
    print()
    print(
        table(
            "Backlog after a restart (finished job files on one host; SIGKILL half way, restart)",
            [
                "files",
                "KB each",
                "read after restart s",
                "complete",
                "dup",
                "polls",
                "peak RSS MB",
                "peak poll MB / quota",
                "over quota",
            ],
            [
                [
                    b["files"],
                    b["file_kb"],
                    b["read_after_restart_s"],
                    b["complete_after_restart"],
                    b["duplicated"],
                    b["polls"],
                    b["peak_rss_mb"],
                    f"{b['peak_poll_working_set_mb']} / {b['memory_quota_mb']}",
                    b["pipelines_over_quota"],
                ]
            ],
        )
    )
    s = doc["sharing"]
    print(
        f"Final writes broken by a poll's read (interval {s['interval_s']} s, read handle "
        f"modelled open {s['read_hold_ms']} ms): {s['writes_failed']} of {s['jobs']} jobs "
        f"({s['lost']} reported lost)"
    )


def lockout_figures(rows: list[dict[str, Any]], fared: dict[str, Any]) -> dict[str, Any] | None:
    """Refused logons per host under a wrong password, against the auth_backoff bound."""
    row = next((r for r in rows if r["fault"] == "wrong_password"), None)
    if row is None:
        return None
    backoff = float(fared["settings"]["auth_backoff"])
    window = float(fared["fault_s"])
    return {
        "logon_failures_per_host": row["logon_failures_per_host"],
        "window_s": window,
        "auth_backoff_s": backoff,
        # the first logon, then one per auth_backoff (plus one in flight when the window ends)
        "bound_per_host": 2 + int(window // backoff),
        "per_host_per_hour_at_default": 1 + 3600 // 900,
    }


def failures(doc: dict[str, Any]) -> list[str]:
    found = []
    for key in ("faults", "faults_watch"):
        for f in doc.get(key, []):
            if f["lost"] or f["duplicated"] or f["unexpected"]:
                found.append(f"{key} {f['fault']}: lost {f['lost']}, duplicated {f['duplicated']}")
        fared = doc.get(f"{key}_source")
        if fared is not None and not fared["source_alive_at_end"]:
            found.append(f"the source died during the fault matrix ({key})")
    lockout = doc.get("lockout")
    if lockout and lockout["logon_failures_per_host"] > lockout["bound_per_host"]:
        found.append(
            f"wrong password: {lockout['logon_failures_per_host']} logons on one host, more than "
            f"1 per auth_backoff ({lockout['bound_per_host']})"
        )
    for key in ("crash", "crash_feedback", "crash_watch", "failover"):
        c = doc.get(key)
        if c and (c["lost"] or c["duplicated_outside_window"] or c.get("files_left")):
            found.append(
                f"{key}: lost {c['lost']}, duplicated outside the window "
                f"{c['duplicated_outside_window']}"
            )
    h = doc["hostile"]
    if h["bad_name_events"] or h["normal_lost"] or not h["source_alive_at_end"]:
        found.append(
            f"hostile: {h['bad_name_events']} bad-name events, {h['normal_lost']} normal jobs "
            f"lost, source alive {h['source_alive_at_end']}"
        )
    s = doc["sharing"]
    if s["reported"] != s["jobs"]:
        found.append(f"sharing: {s['jobs'] - s['reported']} jobs never reported")
    b = doc["backlog"]
    if not b["complete_after_restart"] or b["pipelines_over_quota"]:
        found.append(
            f"backlog: {b['missing']} jobs never reported, {b['pipelines_over_quota']} pipelines "
            "over the memory quota"
        )
    if b["peak_rss_mb"] > RSS_TARGET_MB:
        found.append(f"backlog: peak RSS {b['peak_rss_mb']} MB over {RSS_TARGET_MB} MB")
    if h["unicode_digit_name_events"]:
        found.append(
            f"hostile: {h['unicode_digit_name_events']} events for job names with non-ASCII "
            "digits (a name regex that uses \\d takes any Unicode digit)"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(
        argv,
        prog="python -m bench.soak",
        description=__doc__,
        profiles=PROFILES,
        out=RESULTS_DIR / "soak.json",
    )
    profile = PROFILES[opts.profile]
    with work_dir("winasync-soak-", opts.keep) as workdir:
        progress(f"soak ({opts.profile}); work dir {workdir}")
        fault_rows, fared = fault_matrix(workdir / "faults", profile.faults)
        doc: dict[str, Any] = {
            "profile": opts.profile,
            "faults": fault_rows,
            "faults_source": fared,
            "lockout": lockout_figures(fault_rows, fared),
            "crash": crash_soak(workdir / "crash", profile.crash),
        }
        if profile.crash_feedback is not None:
            doc["crash_feedback"] = crash_soak(workdir / "crash-fb", profile.crash_feedback)
        if profile.watch:
            watch_rows, watch_fared = fault_matrix(
                workdir / "faults-watch", replace(profile.faults, mode="watch")
            )
            doc["faults_watch"] = watch_rows
            doc["faults_watch_source"] = watch_fared
            doc["crash_watch"] = crash_soak(
                workdir / "crash-watch", replace(profile.crash, mode="watch")
            )
        doc["hostile"] = hostile(workdir / "hostile", profile.hostile)
        doc["backlog"] = backlog(workdir / "backlog", profile.backlog)
        doc["sharing"] = sharing(workdir / "sharing", profile.sharing)
        doc["failover"] = failover_soak(workdir / "failover", profile.failover)
        problems = failures(doc)
        doc["problems"] = problems
        print_tables(doc)
        progress(f"wrote {write_json(opts.out, doc)}")
        for problem in problems:
            progress(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
