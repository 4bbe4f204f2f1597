"""A host with a backlog of job files, read by the real source over pypsrp: in budgeted polls
that follow one another at once, under the host's memory quota, with no event lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sim_thread import SimServerThread
from tests.sim.source_on_sim import running_source, source_args
from tests.waiting import async_wait_until
from winsim.backlog import write_backlog
from winsim.host import SimHost

pytestmark = pytest.mark.sim
PASSWORD = "Backlog-Passw0rd!"


async def test_a_backlog_past_the_memory_quota_is_read_whole_in_budgeted_polls(
    sim: SimServerThread, tmp_path: Path
) -> None:
    """Old behaviour: the first poll after a start asked for every file at once, the pipeline
    passed MaxMemoryPerShellMB and failed, and every retry failed the same way: no event."""
    host = SimHost("win01", tmp_path, memory_quota_mb=96)
    host.attach_loop(sim.loop)
    names = write_backlog(host, 200, 40_000, rc_every=10)  # 8 MB: 40 + 10 x 8 MB > 96 MB
    ep = sim.add_host("backlog-win01", host, username="ansible", password=PASSWORD)
    args = source_args(
        ep,
        "win01",
        PASSWORD,
        # a long interval: only the follow-up polls of a deferred backlog can read it in time
        interval=600,
        read_timeout=10,
        operation_timeout=5,
        max_answer_bytes=2 * 1024 * 1024,
    )
    async with running_source(sim, ep, args) as events:
        await async_wait_until(
            lambda: len(events.drain()) >= len(names), 60, "an event for every job of the backlog"
        )
    jobs = {e["async_job"]["jid"]: e["async_job"] for e in events}
    assert sorted(jobs) == names and len(events) == len(names)
    assert sum(1 for j in jobs.values() if j["status"] == "failed") == 20
    assert all(j["rc"] in (0, 2) and not j["truncated"] for j in jobs.values())
    assert host.quota_failures == 0
    assert host.peak_working_set < 96 * 1024 * 1024
