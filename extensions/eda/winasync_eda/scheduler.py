"""When each host is polled: every ``interval`` seconds with jitter, at most N at once.

Each host has its own loop, so an unreachable or slow host only delays itself. A failed poll is
retried with exponential backoff (tenacity) capped at ``backoff_max``; an authentication failure
waits ``auth_backoff`` instead, because retrying a bad password quickly locks the account out.
A host recovers by itself at its next successful poll.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from .delivery import Delivery
from .tracker import HostTracker
from .transports.base import AuthenticationFailed, Snapshot, Transport, TransportError

LOGGER = logging.getLogger(__name__)
SUMMARY_MIN_PERIOD_S = 5.0


@dataclass
class HostSlot:
    """One watched host: its transport, its tracker, its health."""

    name: str
    async_dir: str
    transport: Transport
    tracker: HostTracker
    failures: int = 0
    last_error: str | None = None


@dataclass
class _Counts:
    polls: int = 0
    failed: int = 0
    events: int = 0
    slow_ms: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Timing:
    # the source arguments of the same names (their defaults are config.py's)
    interval: float
    jitter: float
    max_concurrency: int
    poll_timeout: float
    backoff_max: float
    auth_backoff: float
    # a job file larger than this is summarised on the host (docs/poll-protocol.md), not sent
    max_bytes: int = 1024 * 1024


class Scheduler:
    """Runs one polling loop per host until cancelled."""

    def __init__(
        self,
        slots: list[HostSlot],
        delivery: Delivery,
        timing: Timing,
        *,
        host_events: bool = False,
    ) -> None:
        self.slots = slots
        self.delivery = delivery
        self.timing = timing
        self.host_events = host_events
        self._sem = asyncio.Semaphore(timing.max_concurrency)
        self._counts = _Counts()
        # interval, 2x, 4x ... up to backoff_max, plus jitter so failing hosts do not retry in step
        self._backoff = wait_exponential(
            multiplier=max(timing.interval, 0.1), max=timing.backoff_max
        ) + wait_random(0, max(timing.interval, 0.1) * max(timing.jitter, 0.05))

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._host_loop(s), name=f"poll-{s.name}") for s in self.slots]
        tasks.append(asyncio.create_task(self._summaries(), name="poll-summary"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _host_loop(self, slot: HostSlot) -> None:
        spread = (
            min(self.timing.interval, 5.0) if len(self.slots) > self.timing.max_concurrency else 0.0
        )
        await asyncio.sleep(random.uniform(0, spread))  # noqa: S311 - jitter, not crypto
        while True:
            snap = await self._poll(slot)
            findings = slot.tracker.apply(snap)
            self._counts.events += await self.delivery.deliver(
                slot.name, slot.async_dir, slot.tracker, findings
            )
            await asyncio.sleep(self._next_delay())

    def _next_delay(self) -> float:
        j = self.timing.jitter
        return self.timing.interval * random.uniform(1 - j, 1 + j)  # noqa: S311

    async def _poll(self, slot: HostSlot) -> Snapshot:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransportError), wait=self._wait, reraise=True
        )
        async for attempt in retrying:
            with attempt:
                snap = await self._poll_once(slot)
            outcome = attempt.retry_state.outcome
            if outcome is not None and outcome.failed:
                await self._failed(slot, attempt.retry_state)
        if slot.failures:
            LOGGER.warning("%s: reachable again after %d failed polls", slot.name, slot.failures)
            slot.failures = 0
            slot.last_error = None
            if self.host_events:
                await self.delivery.host_event(slot.name, "recovered", None)
        return snap

    async def _poll_once(self, slot: HostSlot) -> Snapshot:
        request = slot.tracker.request(slot.async_dir, self.timing.max_bytes)
        async with self._sem:
            self._counts.polls += 1
            started = time.monotonic()
            try:
                # the transport enforces its own deadline; this one only guards against a hang
                return await asyncio.wait_for(
                    slot.transport.poll(request), self.timing.poll_timeout + 10
                )
            except TimeoutError:
                raise TransportError(
                    f"{slot.name}: poll exceeded {self.timing.poll_timeout:.0f} s"
                ) from None
            except TransportError:
                raise
            except Exception as exc:  # a bug must not stop the other hosts: log it, retry later
                LOGGER.exception("%s: unexpected error while polling", slot.name)
                raise TransportError(f"{slot.name}: unexpected {type(exc).__name__}") from None
            finally:
                elapsed = time.monotonic() - started
                if elapsed > self.timing.interval:
                    self._counts.slow_ms.append(int(elapsed * 1000))

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        if isinstance(exc, AuthenticationFailed):
            return self.timing.auth_backoff
        return float(self._backoff(rs))

    async def _failed(self, slot: HostSlot, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        error = (str(exc) or type(exc).__name__) if exc is not None else "unknown error"
        slot.failures += 1
        self._counts.failed += 1
        slot.last_error = error
        log = (
            LOGGER.warning
            if slot.failures == 1 or isinstance(exc, AuthenticationFailed)
            else LOGGER.info
        )
        log(
            "%s: poll failed (%s); failure %d in a row, backing off",
            slot.name,
            error,
            slot.failures,
        )
        if slot.failures == 1 and self.host_events:
            await self.delivery.host_event(slot.name, "unreachable", error)

    async def _summaries(self) -> None:
        period = max(self.timing.interval, SUMMARY_MIN_PERIOD_S)
        while True:
            await asyncio.sleep(period)
            c, self._counts = self._counts, _Counts()
            jobs = running = 0
            for s in self.slots:
                n, r = s.tracker.counts()
                jobs += n
                running += r
            down = sum(1 for s in self.slots if s.failures)
            LOGGER.info(
                "poll cycle (%.0f s): %d polls of %d hosts, %d failed, %d hosts unreachable, "
                "%d job files (%d running), %d events emitted%s",
                period,
                c.polls,
                len(self.slots),
                c.failed,
                down,
                jobs,
                running,
                c.events,
                f", {len(c.slow_ms)} polls slower than the interval" if c.slow_ms else "",
            )
