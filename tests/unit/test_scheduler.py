"""Scheduler with a fake transport: one poll per host, isolation, backoff, concurrency, summaries."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
from winasync_eda.transports.base import PollRequest, Snapshot

from tests.unit.fakes import (
    AuthenticationFailed,
    FakeHost,
    FakeTransport,
    TransportError,
    Watching,
    finished,
    source_timing,
)
from tests.waiting import async_wait_until


async def test_one_pipeline_per_host_per_poll_asks_only_for_changes() -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Watching([a]) as h:
        await async_wait_until(lambda: a.polls >= 3, 5, "polls")
    assert a.requests[0].known == {}
    assert "j1.1" in a.requests[-1].known
    assert h.jobs() == [("win01", "j1.1", "finished")]


async def test_unreachable_host_does_not_delay_the_others_and_recovers() -> None:
    good, bad = FakeHost("good"), FakeHost("bad")
    bad.fail_always = TransportError("bad: connection refused")
    good.write("j1.1", finished("j1.1"))
    bad.write("j9.9", finished("j9.9"))
    async with Watching([good, bad], host_events=True) as h:
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
    slow = source_timing(interval=0.05, backoff_max=0.2, auth_backoff=3600)
    async with Watching([a, other], timing=slow):
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
    h = Watching(hosts, timing=source_timing(interval=0.01, jitter=0.0, max_concurrency=3))
    for slot, host in zip(h.slots, hosts, strict=True):
        slot.transport = GaugedTransport(host)
    async with h:
        await async_wait_until(
            lambda: all(x.polls >= 2 for x in hosts), 15, "every host polled twice"
        )
    assert GaugedTransport.gauge["max"] == 3


async def test_summary_line_per_cycle(caplog: pytest.LogCaptureFixture) -> None:
    import winasync_eda.scheduler as sched

    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    mp = pytest.MonkeyPatch()
    mp.setattr(sched, "SUMMARY_MIN_PERIOD_S", 0.1)
    caplog.set_level(logging.INFO, logger="winasync_eda")
    try:
        async with Watching([a]):
            await async_wait_until(
                lambda: any("poll cycle" in r.message for r in caplog.records), 5, "summary"
            )
    finally:
        mp.undo()
    line = next(r.message for r in caplog.records if "poll cycle" in r.message)
    assert "hosts" in line and "failed" in line and "events emitted" in line
