"""The event source run in the test's own loop against endpoints of the simulated host: its
arguments, its run, and the events it put on its queue (one copy for every test that needs it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from winasync_eda.source import run

from harness.sim_thread import SimServerThread
from winsim.server import HostEndpoint


def source_args(ep: HostEndpoint, name: str, password: str, **extra: Any) -> dict[str, Any]:
    """One host over plain HTTP with basic auth, polled fast; ``extra`` adds or overrides."""
    return {
        "hosts": [{"name": name, "address": ep.address, "port": ep.port}],
        "username": "ansible",
        "password": password,
        "auth": "basic",
        "protocol": "http",
        "interval": 0.3,
        "read_timeout": 4,
        "operation_timeout": 2,
        **extra,
    }


class SourceEvents(list[dict[str, Any]]):
    """The events the source put on its queue, taken in whenever the test looks."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def drain(self) -> SourceEvents:
        while not self.queue.empty():
            self.append(self.queue.get_nowait())
        return self

    def with_status(self, status: str, kind: str = "async_job") -> list[dict[str, Any]]:
        """The ``kind`` payloads (``async_job``, ``async_host``) of that status, so far."""
        return [e[kind] for e in self.drain() if kind in e and e[kind]["status"] == status]


@contextlib.asynccontextmanager
async def running_source(
    sim: SimServerThread, ep: HostEndpoint, args: dict[str, Any]
) -> AsyncIterator[SourceEvents]:
    """The source runs while the block does; then it is cancelled and ``ep`` removed."""
    events = SourceEvents()
    task = asyncio.create_task(run(events.queue, args))
    try:
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sim.remove_host(ep.name)


@contextlib.asynccontextmanager
async def source_draining_into(
    args: dict[str, Any], events: list[dict[str, Any]]
) -> AsyncIterator[None]:
    """The source runs while the block does, each event appended to ``events`` as it comes."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.create_task(run(queue, args))

    async def drain() -> None:
        while True:
            events.append(await queue.get())

    drainer = asyncio.create_task(drain())
    try:
        yield
    finally:
        for t in (task, drainer):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
