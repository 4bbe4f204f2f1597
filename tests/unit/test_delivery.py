"""Delivery with a fake transport: each outcome once and in order, redelivery, acknowledgements."""

from __future__ import annotations

import json
from pathlib import Path

from winasync_eda.model import Status

from tests.unit.fakes import DIR, FakeHost, Watching, finished, running
from tests.waiting import async_wait_until


async def test_outcomes_emitted_once_in_order_per_host() -> None:
    a = FakeHost("win01")
    a.write("j1.1", running("j1.1"))
    a.procs[4242] = 0
    async with Watching([a]) as h:
        await async_wait_until(lambda: a.polls >= 3, 5, "a few polls")
        a.write("j1.1", finished("j1.1"))
        a.write("j2.2", finished("j2.2", rc=2, failed=True))
        await async_wait_until(lambda: len(h.jobs()) == 2, 5, "two outcomes")
        polls = a.polls
        await async_wait_until(lambda: a.polls >= polls + 5, 5, "more polls")
    assert h.jobs() == [("win01", "j1.1", "finished"), ("win01", "j2.2", "failed")]
    ev = h.events[0]
    assert ev["meta"]["hosts"] == "win01"
    assert ev["async_job"]["results_file"].endswith("\\j1.1")
    assert ev["async_job"]["async_dir"] == DIR


async def test_redeliver_after_when_file_outlives_its_event(tmp_path: Path) -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Watching([a], redeliver_after=0.3) as h:
        await async_wait_until(lambda: len(h.jobs()) >= 2, 10, "a redelivery")
        a.remove("j1.1")
        n = len(h.jobs())
        polls = a.polls
        await async_wait_until(lambda: a.polls >= polls + 10, 10, "more polls")
        assert len(h.jobs()) == n
    first, second = h.events[0], h.events[1]
    assert first["async_job"]["redelivered"] is False and second["async_job"]["redelivered"] is True
    assert first["meta"]["uuid"] != second["meta"]["uuid"]


async def test_feedback_records_only_acknowledged_events(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    h = Watching([a], state=state, feedback=True)
    h.ack = False
    h.delivery.feedback_timeout_s = 0.3
    async with h:
        await async_wait_until(lambda: len(h.jobs()) == 1, 5, "event sent")
        await async_wait_until(
            lambda: h.delivery.emitted == 0 and a.polls >= 4, 5, "unacknowledged"
        )
    assert not state.exists() or "j1.1" not in state.read_text()
    h2 = Watching([a], state=state, feedback=True)
    async with h2:
        await async_wait_until(lambda: h2.delivery.emitted == 1, 5, "acknowledged")
    assert "j1.1" in json.loads(state.read_text())["delivered"]["win01"]


async def test_unacknowledged_event_is_sent_again_after_the_next_poll(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    a.write("j2.2", finished("j2.2", failed=True, rc=1))
    h = Watching([a], state=state, feedback=True)
    h.ack = False
    h.delivery.feedback_timeout_s = 0.2
    async with h:
        await async_wait_until(lambda: len(h.jobs()) >= 2, 5, "the first event sent twice")
        assert h.jobs()[:2] == [("win01", "j1.1", "finished")] * 2  # order kept: j2.2 waits
        h.ack = True
        await async_wait_until(lambda: h.delivery.emitted == 2, 10, "both acknowledged")
    saved = json.loads(state.read_text())["delivered"]["win01"]
    assert set(saved) == {"j1.1", "j2.2"}


async def test_emit_filter_running_and_vanished() -> None:
    a = FakeHost("win01")
    a.write("j1.1", running("j1.1"))
    a.procs[4242] = 0
    emit = frozenset({Status.RUNNING, Status.VANISHED})
    async with Watching([a], emit=emit) as h:
        await async_wait_until(lambda: len(h.jobs()) == 1, 5, "running")
        a.remove("j1.1")
        await async_wait_until(lambda: len(h.jobs()) == 2, 5, "vanished")
    assert [s for _, _, s in h.jobs()] == ["running", "vanished"]
