"""A crash of ansible-rulebook (SIGKILL of it and of its playbooks) while jobs are finishing,
then a restart with the same ``state_file``: no follow-up is lost for good, and one runs twice
only when the crash hit while its playbook ran (after its follow-up tasks began, before its
cleanup removed the job file).

The follow-up tasks of the first run wait on a gate file, so the crash hits at a known point:
one playbook is inside its follow-up, the other outcome has been delivered and waits in the
engine's action queue. Both are what a crash loses without ``redeliver_after``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.sim_process import SimProcess
from tests.e2e.conftest import STEP_TIMEOUT_S, Sandbox, sim_job_files, wait_settled
from tests.paths import REPO

pytestmark = pytest.mark.e2e

REDELIVER_AFTER_S = 5


def _crash_and_restart(
    sandbox: Sandbox,
    sim_hosts: SimProcess,
    *,
    rulebook: str | Path = "winasync.eda.windows_async_jobs",
    variables: dict[str, Any] | None = None,
    persistence_id: str | None = None,
) -> tuple[dict[str, str], str]:
    """Run, crash mid-follow-up, restart; return jid -> status and the held job's jid."""
    settings = {
        "winasync_state_file": str(sandbox.root / "state" / "async_jobs.json"),
        "winasync_redeliver_after": REDELIVER_AFTER_S,
        "winasync_followup_tasks": str(sandbox.hook_tasks),
        "winasync_remediation_tasks": str(sandbox.hook_tasks),
        **(variables or {}),
    }
    env = dict(sandbox.env, E2E_GATE=str(sandbox.gate))

    def start(name: str) -> Any:
        return sandbox.rulebook(
            sim_hosts.inventory,
            settings,
            rulebook=rulebook,
            name=name,
            persistence_id=persistence_id,
            env=env,
        ).start()

    first = start("before-crash")
    jobs = {
        sim_hosts.job("win01", "finished", 0.5, stdout="done"): "finished",
        sim_hosts.job("win02", "failed", 0.8, rc=2): "failed",
    }
    first.wait_for(
        lambda: (
            all(
                f"{host}: {jid} {status}" in first.text()
                for jid, status in jobs.items()
                for host in sim_hosts.names
                if jid in sim_hosts.job_files(host)
            )
            and len(sandbox.hook_runs("start")) == 1
        ),
        STEP_TIMEOUT_S,
        "every outcome delivered and one follow-up held at the gate",
    )
    [held] = sandbox.hook_runs("start")
    first.kill()

    # The crash left every job file and no finished follow-up behind.
    assert sorted(f for files in sim_job_files(sim_hosts).values() for f in files) == sorted(jobs)
    assert sandbox.records() == []
    assert sandbox.hook_runs("end") == []

    sandbox.gate.touch()
    second = start("after-restart")
    wait_settled(second, sandbox, len(jobs), lambda: sim_job_files(sim_hosts))
    second.stop()
    return jobs, str(held["jid"])


def _assert_each_followed_up_once(sandbox: Sandbox, jobs: dict[str, str], held: str) -> None:
    records = sandbox.records()
    assert Counter(r["jid"] for r in records) == Counter(list(jobs)), (
        "a follow-up ran twice or never"
    )
    assert {r["jid"]: r["status"] for r in records} == jobs
    assert all((r["file"], r["hook"], r["cleanup"]) == ("present", "ok", "erased") for r in records)
    # The follow-up tasks began twice only for the job whose playbook the crash interrupted.
    starts = Counter(h["jid"] for h in sandbox.hook_runs("start"))
    assert starts == Counter({jid: 2 if jid == held else 1 for jid in jobs})
    assert Counter(h["jid"] for h in sandbox.hook_runs("end")) == Counter(list(jobs))


def test_sigkill_then_restart_with_state_file_and_redeliver_after(
    sandbox: Sandbox, sim_hosts: SimProcess
) -> None:
    jobs, held = _crash_and_restart(sandbox, sim_hosts)

    _assert_each_followed_up_once(sandbox, jobs, held)
    # The state file kept the restart from emitting them as new outcomes: each came back by
    # redelivery, because its job file was still there after redeliver_after.
    assert all(r["redelivered"] is True for r in sandbox.records())


def test_sigkill_then_restart_with_feedback_and_persistence(
    sandbox: Sandbox, sim_hosts: SimProcess
) -> None:
    # `feedback` cannot come from a rulebook variable: the shipped rulebook, with it set.
    shipped = yaml.safe_load((REPO / "rulebooks" / "windows_async_jobs.yml").read_text())
    shipped[0]["sources"][0]["winasync.eda.async_jobs"]["feedback"] = True
    rulebook = sandbox.root / "windows_async_jobs_feedback.yml"
    rulebook.write_text(yaml.safe_dump(shipped, sort_keys=False), encoding="utf-8")

    jobs, held = _crash_and_restart(
        sandbox,
        sim_hosts,
        rulebook=rulebook,
        variables={"drools_db_file_path": str(sandbox.root / "h2" / "winasync")},
        persistence_id="winasync-e2e",
    )

    _assert_each_followed_up_once(sandbox, jobs, held)
    assert list((sandbox.root / "h2").iterdir()), "no H2 file was written"
