"""An async dir that cannot be listed fails the poll with its cause; it is never "no directory",
which made the client report every running job `vanished`."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sim_thread import SimServerThread
from tests.sim.source_on_sim import running_source, source_args
from tests.waiting import async_wait_until
from winsim.host import SimHost

pytestmark = pytest.mark.sim
PASSWORD = "DirErr-Passw0rd!"


async def test_access_denied_fails_the_poll_and_no_job_vanishes(
    sim: SimServerThread, tmp_path: Path
) -> None:
    host = SimHost("win01", tmp_path)
    host.attach_loop(sim.loop)
    ep = sim.add_host("direrr-win01", host, username="ansible", password=PASSWORD)
    jid = sim.call(_start(host))
    args = source_args(
        ep,
        "win01",
        PASSWORD,
        backoff_max=0.6,
        emit=["running", "vanished", "finished", "lost"],
        host_events=True,
    )
    try:
        async with running_source(sim, ep, args) as events:
            await async_wait_until(lambda: events.with_status("running"), 20, "the running event")
            host.call(host.deny_access, host.async_dir)
            await async_wait_until(
                lambda: events.with_status("unreachable", "async_host"), 20, "a failed poll"
            )
            (down,) = events.with_status("unreachable", "async_host")
            assert "access to the async dir" in down["error"] and "is denied" in down["error"]
            host.call(host.deny_access, host.async_dir, False)
            host.call(host.end_job_now, jid)
            await async_wait_until(lambda: events.with_status("finished"), 20, "the finished event")
    finally:
        for job in list(host.jobs.values()):
            host.call(job.kill)
    assert events.with_status("vanished") == []
    assert events.with_status("lost") == []
    assert [e["jid"] for e in events.with_status("finished")] == [jid]


async def _start(host: SimHost) -> str:
    return host.start_job("finished", 3600)


async def test_a_final_write_broken_by_a_reader_is_lost_naming_the_cause(
    sim: SimServerThread, tmp_path: Path
) -> None:
    """Windows PowerShell 5.1's Set-Content fails while any reader holds the job file, whatever
    it shares: the job file keeps its running content and the watchdog exits. Old behaviour of
    the simulated host: the write always succeeded, so the source never met this case."""
    host = SimHost("win03", tmp_path)
    host.read_hold_s = 30.0  # every read of the poll keeps its handle open past the final write
    host.attach_loop(sim.loop)
    ep = sim.add_host("direrr-win03", host, username="ansible", password=PASSWORD)
    jid = sim.call(_start(host))
    async with running_source(sim, ep, source_args(ep, "win03", PASSWORD)) as events:
        results_file = host.jobs[jid].results_file
        await async_wait_until(lambda: host.reader_holds(results_file), 20, "a poll's read")
        host.call(host.end_job_now, jid)
        await async_wait_until(lambda: events.with_status("lost"), 20, "the lost event")
    assert host.jobs[jid].phase == "write-failed"
    (event,) = events.with_status("lost")
    assert event["jid"] == jid
    assert "final write failed because a reader held the job file open" in event["msg"]
    assert [e["async_job"]["status"] for e in events] == ["lost"]
