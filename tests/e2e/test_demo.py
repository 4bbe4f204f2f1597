"""``make demo`` for real: it ends by itself, shows each event and follow-up, prints the summary
table with every job as expected, and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from demo.scenario import JOBS
from harness.process import marked_pids
from tests.paths import REPO

pytestmark = pytest.mark.e2e

MARKER_VAR = "E2E_DEMO_RUN"
DEMO_TIMEOUT_S = 400


def test_demo_runs_to_its_summary_and_leaves_nothing_running(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "WINASYNC_"))}
    env[MARKER_VAR] = marker
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "demo", "--workdir", str(workdir), "--timeout", "300"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
            check=False,
        )
    finally:
        left = marked_pids(marker, MARKER_VAR)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert left == [], f"the demo left processes running: {left}"

    lines = out.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:4] == ["job", "host", "jid", "outcome"]
    )
    rows = {line.split()[0]: line.split() for line in lines[header + 2 : header + 2 + len(JOBS)]}
    assert sorted(rows) == sorted(job.name for job in JOBS)
    for job in JOBS:
        row = rows[job.name]
        jid = row[2]
        assert re.fullmatch(r"j\d+\.\d+", jid)
        assert row[3] == row[4] == job.expected
        assert f"{job.playbook} (1 run)" in " ".join(row)
        assert row[-2:] == ["yes", "yes"]  # cleaned, ok
        # shown as it happened: the event, then its follow-up, both before the table
        event = next(i for i, line in enumerate(lines) if "event" in line and jid in line)
        follow_up = next(
            i for i, line in enumerate(lines) if "follow-up" in line and job.name in line
        )
        assert event < follow_up < header
    assert "All 4 jobs were handled as expected" in out
    # the side effects themselves: one record line per job, each job file removed
    records = (workdir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == len(JOBS)
    async_dirs = list((workdir / "sim").glob("*/Users/*/.ansible_async"))
    assert async_dirs, "no simulated async dir found"
    assert [f.name for d in async_dirs for f in d.iterdir()] == []
