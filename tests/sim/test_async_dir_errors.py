"""An async dir that cannot be listed fails the poll with its cause; it is never "no directory",
which made the client report every running job `vanished`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.source import run

from harness.sim_thread import SimServerThread
from tests.waiting import async_wait_until
from winsim.host import SimHost
from winsim.scripts.dispatch import execute

pytestmark = pytest.mark.sim
PASSWORD = "DirErr-Passw0rd!"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(execute) as server:
        yield server


async def test_access_denied_fails_the_poll_and_no_job_vanishes(
    sim: SimServerThread, tmp_path: Path
) -> None:
    host = SimHost("win01", tmp_path)
    host.attach_loop(sim.loop)
    ep = sim.add_host("direrr-win01", host, username="ansible", password=PASSWORD)
    jid = sim.call(_start(host))
    queue: asyncio.Queue[Any] = asyncio.Queue()
    args = {
        "hosts": [{"name": "win01", "address": ep.address, "port": ep.port}],
        "username": "ansible",
        "password": PASSWORD,
        "auth": "basic",
        "protocol": "http",
        "interval": 0.3,
        "backoff_max": 0.6,
        "read_timeout": 4,
        "operation_timeout": 2,
        "emit": ["running", "vanished", "finished", "lost"],
        "host_events": True,
    }
    events: list[dict[str, Any]] = []

    def seen(kind: str, status: str) -> list[dict[str, Any]]:
        while not queue.empty():
            events.append(queue.get_nowait())
        return [e[kind] for e in events if kind in e and e[kind]["status"] == status]

    task = asyncio.create_task(run(queue, args))
    try:
        await async_wait_until(lambda: seen("async_job", "running"), 20, "the running event")
        host.call(host.deny_access, host.async_dir)
        await async_wait_until(lambda: seen("async_host", "unreachable"), 20, "a failed poll")
        (down,) = seen("async_host", "unreachable")
        assert "access to the async dir" in down["error"] and "is denied" in down["error"]
        host.call(host.deny_access, host.async_dir, False)
        host.call(host.end_job_now, jid)
        await async_wait_until(lambda: seen("async_job", "finished"), 20, "the finished event")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sim.remove_host(ep.name)
        for job in list(host.jobs.values()):
            host.call(job.kill)
    assert seen("async_job", "vanished") == []
    assert seen("async_job", "lost") == []
    assert [e["jid"] for e in seen("async_job", "finished")] == [jid]


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
    queue: asyncio.Queue[Any] = asyncio.Queue()
    args = {
        "hosts": [{"name": "win03", "address": ep.address, "port": ep.port}],
        "username": "ansible",
        "password": PASSWORD,
        "auth": "basic",
        "protocol": "http",
        "interval": 0.3,
        "read_timeout": 4,
        "operation_timeout": 2,
    }
    events: list[dict[str, Any]] = []

    def lost() -> list[dict[str, Any]]:
        while not queue.empty():
            events.append(queue.get_nowait())
        return [e["async_job"] for e in events if e["async_job"]["status"] == "lost"]

    task = asyncio.create_task(run(queue, args))
    try:
        results_file = host.jobs[jid].results_file
        await async_wait_until(lambda: host.reader_holds(results_file), 20, "a poll's read")
        host.call(host.end_job_now, jid)
        await async_wait_until(lost, 20, "the lost event")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sim.remove_host(ep.name)
    assert host.jobs[jid].phase == "write-failed"
    (event,) = lost()
    assert event["jid"] == jid
    assert "final write failed because a reader held the job file open" in event["msg"]
    assert [e["async_job"]["status"] for e in events] == ["lost"]
