"""Scheduler, delivery and checkpoint with a fake transport: isolation, backoff, restarts, acks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import pytest
from winasync_eda.checkpoint import Checkpoint, CheckpointError
from winasync_eda.delivery import Delivery
from winasync_eda.model import DEFAULT_EMIT, Status
from winasync_eda.scheduler import HostSlot, Scheduler, Timing
from winasync_eda.tracker import HostTracker
from winasync_eda.transports.base import PollRequest, Snapshot

from tests.unit.fakes import (
    AuthenticationFailed,
    FakeHost,
    FakeTransport,
    TransportError,
    finished,
    running,
)
from tests.waiting import async_wait_until

DIR = "%USERPROFILE%\\.ansible_async"


class Harness:
    """A scheduler over fake hosts, collecting what it emits."""

    def __init__(
        self,
        hosts: list[FakeHost],
        *,
        state: Path | None = None,
        timing: Timing | None = None,
        emit: frozenset[Status] = DEFAULT_EMIT,
        redeliver_after: float | None = None,
        feedback: bool = False,
        host_events: bool = False,
    ) -> None:
        self.hosts = hosts
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self.events: list[dict[str, Any]] = []
        self.checkpoint = Checkpoint(state)
        self.feedback: asyncio.Queue[Any] | None = asyncio.Queue() if feedback else None
        self.ack = True
        self.delivery = Delivery(
            self.queue,
            self.checkpoint,
            emit=emit,
            max_output_bytes=4096,
            redeliver_after_s=redeliver_after,
            feedback_queue=self.feedback,
        )
        self.slots = [HostSlot(h.name, DIR, FakeTransport(h), HostTracker(h.name)) for h in hosts]
        self.scheduler = Scheduler(
            self.slots,
            self.delivery,
            timing or Timing(interval=0.05, jitter=0.1, backoff_max=0.4),
            host_events=host_events,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def _consume(self) -> None:
        while True:
            ev = await self.queue.get()
            self.events.append(ev)
            if self.feedback is not None and self.ack:
                await self.feedback.put(ev)

    async def __aenter__(self) -> Harness:
        await self.checkpoint.load()
        await self.delivery.start()
        self._tasks = [
            asyncio.create_task(self.scheduler.run()),
            asyncio.create_task(self._consume()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.delivery.stop()

    def jobs(self, status: str | None = None) -> list[tuple[str, str, str]]:
        out = [
            (e["async_job"]["host"], e["async_job"]["jid"], e["async_job"]["status"])
            for e in self.events
            if "async_job" in e
        ]
        return [o for o in out if status is None or o[2] == status]


async def test_outcomes_emitted_once_in_order_per_host() -> None:
    a = FakeHost("win01")
    a.write("j1.1", running("j1.1"))
    a.procs[4242] = 0
    async with Harness([a]) as h:
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


async def test_one_pipeline_per_host_per_poll_asks_only_for_changes() -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Harness([a]) as h:
        await async_wait_until(lambda: a.polls >= 3, 5, "polls")
    assert a.requests[0].known == {}
    assert "j1.1" in a.requests[-1].known
    assert h.jobs() == [("win01", "j1.1", "finished")]


async def test_unreachable_host_does_not_delay_the_others_and_recovers() -> None:
    good, bad = FakeHost("good"), FakeHost("bad")
    bad.fail_always = TransportError("bad: connection refused")
    good.write("j1.1", finished("j1.1"))
    bad.write("j9.9", finished("j9.9"))
    async with Harness([good, bad], host_events=True) as h:
        await async_wait_until(
            lambda: h.jobs() == [("good", "j1.1", "finished")], 5, "good host's event"
        )
        await async_wait_until(lambda: bad.polls >= 3, 10, "bad host retried")
        gaps_ok = good.polls > bad.polls  # backoff: the failing host is polled less and less
        bad.fail_always = None
        await async_wait_until(
            lambda: ("bad", "j9.9", "finished") in h.jobs(), 10, "bad host recovered"
        )
    assert gaps_ok
    hosts_events = [e["async_host"] for e in h.events if "async_host" in e]
    assert [(e["host"], e["status"]) for e in hosts_events] == [
        ("bad", "unreachable"),
        ("bad", "recovered"),
    ]
    assert "connection refused" in (hosts_events[0]["error"] or "")


async def test_authentication_failure_backs_off_long() -> None:
    a = FakeHost("win01")
    a.fail_always = AuthenticationFailed("win01: authentication failed")
    other = FakeHost("win02")
    timing = Timing(interval=0.05, backoff_max=0.2, auth_backoff=3600)
    async with Harness([a, other], timing=timing):
        await async_wait_until(lambda: other.polls >= 20, 10, "the other host keeps going")
    assert a.polls == 1


class GaugedTransport(FakeTransport):
    """Counts polls in flight across every host."""

    gauge: ClassVar[dict[str, int]] = {"now": 0, "max": 0}

    async def poll(self, request: PollRequest) -> Snapshot:
        g = self.gauge
        g["now"] += 1
        g["max"] = max(g["max"], g["now"])
        try:
            return await super().poll(request)
        finally:
            g["now"] -= 1


async def test_concurrency_is_capped() -> None:
    hosts = [FakeHost(f"win{i:02d}", delay_s=0.05) for i in range(12)]
    h = Harness(hosts, timing=Timing(interval=0.01, jitter=0.0, max_concurrency=3))
    for slot, host in zip(h.slots, hosts, strict=True):
        slot.transport = GaugedTransport(host)
    async with h:
        await async_wait_until(
            lambda: all(x.polls >= 2 for x in hosts), 15, "every host polled twice"
        )
    assert GaugedTransport.gauge["max"] == 3


async def test_restart_with_state_file_emits_neither_less_nor_more(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Harness([a], state=state) as h1:
        await async_wait_until(lambda: len(h1.jobs()) == 1, 5, "first event")
    a.write("j2.2", finished("j2.2", failed=True, rc=1))  # finishes while the source is down
    async with Harness([a], state=state) as h2:
        await async_wait_until(lambda: len(h2.jobs()) == 1, 5, "the job that ended while down")
        polls = a.polls
        await async_wait_until(lambda: a.polls >= polls + 4, 5, "more polls")
    assert h2.jobs() == [("win01", "j2.2", "failed")]
    saved = json.loads(state.read_text())
    assert set(saved["delivered"]["win01"]) == {"j1.1", "j2.2"}


async def test_checkpoint_forgets_jobs_whose_file_is_gone(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Harness([a], state=state) as h:
        await async_wait_until(lambda: len(h.jobs()) == 1, 5, "event")
        a.remove("j1.1")
        await async_wait_until(
            lambda: "j1.1" not in json.loads(state.read_text())["delivered"].get("win01", {}),
            5,
            "pruned",
        )


async def test_redeliver_after_when_file_outlives_its_event(tmp_path: Path) -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Harness([a], redeliver_after=0.3) as h:
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
    h = Harness([a], state=state, feedback=True)
    h.ack = False
    h.delivery.feedback_timeout_s = 0.3
    async with h:
        await async_wait_until(lambda: len(h.jobs()) == 1, 5, "event sent")
        await async_wait_until(
            lambda: h.delivery.emitted == 0 and a.polls >= 4, 5, "unacknowledged"
        )
    assert not state.exists() or "j1.1" not in state.read_text()
    h2 = Harness([a], state=state, feedback=True)
    async with h2:
        await async_wait_until(lambda: h2.delivery.emitted == 1, 5, "acknowledged")
    assert "j1.1" in json.loads(state.read_text())["delivered"]["win01"]


async def test_unacknowledged_event_is_sent_again_after_the_next_poll(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    a.write("j2.2", finished("j2.2", failed=True, rc=1))
    h = Harness([a], state=state, feedback=True)
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
    async with Harness([a], emit=emit) as h:
        await async_wait_until(lambda: len(h.jobs()) == 1, 5, "running")
        a.remove("j1.1")
        await async_wait_until(lambda: len(h.jobs()) == 2, 5, "vanished")
    assert [s for _, _, s in h.jobs()] == ["running", "vanished"]


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


async def test_stale_temp_file_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text('{"version": 1, "delivered": {"win01": {"j1.1": {"finished": 5}}}}')
    stale = tmp_path / ".s.json.4242.tmp"
    stale.write_text('{"version": 1, "deliv')
    checkpoint = Checkpoint(state)
    await checkpoint.load()
    assert not stale.exists()
    assert checkpoint.delivered_at("win01", "j1.1", "finished") == 5


async def test_corrupt_state_file_is_one_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text("{not json")
    with pytest.raises(CheckpointError, match="state_file"):
        await Checkpoint(state).load()


async def test_summary_line_per_cycle(caplog: pytest.LogCaptureFixture) -> None:
    import winasync_eda.scheduler as sched

    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    mp = pytest.MonkeyPatch()
    mp.setattr(sched, "SUMMARY_MIN_PERIOD_S", 0.1)
    caplog.set_level(logging.INFO, logger="winasync_eda")
    try:
        async with Harness([a]):
            await async_wait_until(
                lambda: any("poll cycle" in r.message for r in caplog.records), 5, "summary"
            )
    finally:
        mp.undo()
    line = next(r.message for r in caplog.records if "poll cycle" in r.message)
    assert "hosts" in line and "failed" in line and "events emitted" in line
