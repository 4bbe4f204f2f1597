"""Legacy (2.15-2.18) job files are written in the host's ANSI code page: the host reports it and
the source decodes with it (it decoded every host as cp1252)."""

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
PASSWORD = "Cp-Passw0rd!"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(execute) as server:
        yield server


@pytest.mark.parametrize(
    ("codepage", "text"), [(1251, "Привет, мир"), (932, "こんにちは世界"), (1252, "café crème")]
)
async def test_a_legacy_file_decodes_with_the_hosts_code_page(
    sim: SimServerThread, tmp_path: Path, codepage: int, text: str
) -> None:
    host = SimHost(f"cp{codepage}", tmp_path)
    host.ansi_codepage = codepage
    host.attach_loop(sim.loop)
    ep = sim.add_host(f"codepage-{codepage}", host, username="ansible", password=PASSWORD)
    jid = sim.call(_start(host, text))
    queue: asyncio.Queue[Any] = asyncio.Queue()
    args = {
        "hosts": [{"name": host.name, "address": ep.address, "port": ep.port}],
        "username": "ansible",
        "password": PASSWORD,
        "auth": "basic",
        "protocol": "http",
        "interval": 0.3,
        "read_timeout": 4,
        "operation_timeout": 2,
    }
    events: list[dict[str, Any]] = []

    def finished() -> list[dict[str, Any]]:
        while not queue.empty():
            events.append(queue.get_nowait())
        return [e["async_job"] for e in events if e["async_job"]["status"] == "finished"]

    task = asyncio.create_task(run(queue, args))
    try:
        await async_wait_until(finished, 20, "the finished event")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sim.remove_host(ep.name)
    data = host.jobs[jid].path.read_bytes()
    assert text.encode(f"cp{codepage}") in data  # written as 5.1's Set-Content writes it
    (event,) = finished()
    assert event["stdout"] == text


async def _start(host: SimHost, text: str) -> str:
    return host.start_job("finished", 0.3, stdout=text, generation="2.18")
