"""The waiting poll (watch mode, docs/poll-protocol.md "Waiting") on the simulated host: it answers
as soon as the host differs from what the client sent, or when Wait runs out, and a stop ends it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Unpack

import pytest

from tests.sim.conftest import FakeClock
from tests.sim.poll_params import PollArgs, poll_params
from tests.waiting import async_wait_until
from winsim.api import Command, PipelineRequest, PipelineResult
from winsim.host import SimHost
from winsim.scripts.dispatch import execute
from winsim.scripts.poll import FUNCTION

pytestmark = pytest.mark.sim

# a deadline for a wait that should end by a change: far below the Wait given
ANSWER_WITHIN_S = 5.0


@pytest.fixture
def host(tmp_path: Path, clock: FakeClock) -> SimHost:
    host = SimHost("win01", tmp_path, clock=clock, boot_ms=1_795_800_000_000)
    host.async_dir_path.mkdir(parents=True)
    return host


async def call(host: SimHost, **args: Unpack[PollArgs]) -> PipelineResult:
    """A waiting poll (``wait`` "0" unless given)."""
    params = poll_params({"wait": "0", **args})
    command = Command(text=FUNCTION, is_script=False, parameters=params)
    return await execute(host, PipelineRequest([command]))


def answer(result: PipelineResult) -> dict[str, Any]:
    assert not result.failed, result.errors
    data: dict[str, Any] = json.loads(result.output[0])
    return data


async def known_after_a_poll(host: SimHost) -> dict[str, str]:
    """What a client sends as Known after one plain poll."""
    first = answer(await call(host))
    return {f["name"]: f"{f['size']}:{f['mtime_ms']}" for f in first["files"]}


async def test_nothing_changed_waits_until_wait_runs_out(host: SimHost) -> None:
    (host.async_dir_path / "j1.2").write_bytes(b'{"started": 1, "finished": 1}')
    known = await known_after_a_poll(host)
    started = time.monotonic()
    result = answer(await call(host, wait="1.5", known=known))
    assert time.monotonic() - started >= 1.4
    # the same answer as a poll: nothing new
    assert result["files"] == [] and result["gone"] == []
    assert host.waiting_polls == 0 and host.peak_waiting_polls == 1


async def test_a_new_file_ends_the_wait(host: SimHost) -> None:
    task = asyncio.create_task(call(host, wait="50"))
    await async_wait_until(lambda: host.waiting_polls == 1, 5, "the poll waits")
    (host.async_dir_path / "j5.6").write_bytes(b'{"started": 1, "finished": 1, "rc": 0}')
    result = answer(await asyncio.wait_for(task, ANSWER_WITHIN_S))
    assert [f["name"] for f in result["files"]] == ["j5.6"]


async def test_a_changed_or_removed_file_ends_the_wait(host: SimHost) -> None:
    path = host.async_dir_path / "j1.2"
    path.write_bytes(b'{"started": 1}')
    known = await known_after_a_poll(host)
    task = asyncio.create_task(call(host, wait="50", known=known))
    await async_wait_until(lambda: host.waiting_polls == 1, 5, "the poll waits")
    path.write_bytes(b'{"started": 1, "finished": 1, "rc": 0}')
    result = answer(await asyncio.wait_for(task, ANSWER_WITHIN_S))
    assert [f["name"] for f in result["files"]] == ["j1.2"]

    known = {"j1.2": f"{result['files'][0]['size']}:{result['files'][0]['mtime_ms']}"}
    task = asyncio.create_task(call(host, wait="50", known=known))
    await async_wait_until(lambda: host.waiting_polls == 1, 5, "the poll waits")
    path.unlink()
    result = answer(await asyncio.wait_for(task, ANSWER_WITHIN_S))
    assert result["gone"] == ["j1.2"]


async def test_a_watchdog_that_dies_ends_the_wait(host: SimHost) -> None:
    pid = host.spawn_process()
    first = answer(await call(host, pids=[pid]))
    seen = first["procs"]
    assert seen[str(pid)] is not None
    task = asyncio.create_task(call(host, wait="50", pids=[pid], seen=seen))
    await async_wait_until(lambda: host.waiting_polls == 1, 5, "the poll waits")
    host.kill_process(pid)
    result = answer(await asyncio.wait_for(task, ANSWER_WITHIN_S))
    assert result["procs"] == {str(pid): None}


async def test_a_pid_the_client_has_no_state_for_takes_the_first_checks_state(
    host: SimHost,
) -> None:
    pid = host.spawn_process()
    task = asyncio.create_task(call(host, wait="50", pids=[pid]))
    await async_wait_until(lambda: host.waiting_polls == 1, 5, "the poll waits")
    host.kill_process(pid)  # differs from the state the wait began with
    result = answer(await asyncio.wait_for(task, ANSWER_WITHIN_S))
    assert result["procs"] == {str(pid): None}


async def test_a_stop_ends_the_wait_and_releases_it(host: SimHost) -> None:
    task = asyncio.create_task(call(host, wait="50"))
    await async_wait_until(lambda: host.waiting_polls == 1, 5, "the poll waits")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.waiting_polls == 0


async def test_a_refused_async_dir_fails_at_once_without_waiting(host: SimHost) -> None:
    result = await asyncio.wait_for(
        call(host, wait="50", async_dir=r"%NOSUCHVAR%\x"), ANSWER_WITHIN_S
    )
    assert result.failed and "not expanded" in result.errors[-1]


@pytest.mark.parametrize("wait", ["soon", "1e3", "NaN"])
async def test_a_wait_that_is_not_a_decimal_fails_the_poll(host: SimHost, wait: str) -> None:
    result = await call(host, wait=wait)
    assert result.failed and "System.Decimal" in result.errors[-1]


async def test_one_process_holds_two_thousand_waiting_polls(tmp_path: Path) -> None:
    hosts = [SimHost(f"win{i:03d}", tmp_path) for i in range(200)]
    for h in hosts:
        h.async_dir_path.mkdir(parents=True)
    tasks = [asyncio.create_task(call(h, wait="50")) for h in hosts for _ in range(10)]
    await async_wait_until(
        lambda: sum(h.waiting_polls for h in hosts) == 2000, 60, "2,000 polls waiting"
    )
    for h in hosts:
        (h.async_dir_path / "j1.2").write_bytes(b'{"started": 1, "finished": 1}')
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert all([f["name"] for f in answer(r)["files"]] == ["j1.2"] for r in results)
    assert sum(h.peak_waiting_polls for h in hosts) == 2000
    assert sum(h.waiting_polls for h in hosts) == 0
