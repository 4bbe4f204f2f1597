"""The source's lifetime: cancellation closes every transport and flushes the checkpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import FakeHost, FakeTransport, finished
from tests.waiting import async_wait_until


async def test_cancel_closes_every_transport_and_flushes(tmp_path: Path) -> None:
    from winasync_eda import source

    hosts = [FakeHost("a"), FakeHost("b")]
    hosts[0].write("j1.1", finished("j1.1"))
    made: list[FakeTransport] = []

    def fake_transport(h: Any, cfg: Any, executor: Any = None) -> FakeTransport:
        t = FakeTransport(next(x for x in hosts if x.name == h.name))
        made.append(t)
        return t

    queue: asyncio.Queue[Any] = asyncio.Queue()
    state = tmp_path / "s.json"
    mp = pytest.MonkeyPatch()
    mp.setattr(source, "make_transport", fake_transport)
    try:
        task = asyncio.create_task(
            source.run(
                queue,
                {
                    "hosts": [
                        {"name": "a", "password": "pw", "username": "u"},
                        {"name": "b", "password": "pw", "username": "u"},
                    ],
                    "interval": 0.05,
                    "state_file": str(state),
                },
            )
        )
        await async_wait_until(lambda: queue.qsize() == 1, 10, "an event")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        mp.undo()
    assert [h.closed for h in hosts] == [1, 1]
    assert "j1.1" in state.read_text()
