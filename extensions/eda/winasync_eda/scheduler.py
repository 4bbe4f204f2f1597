"""When each host is polled: every ``interval`` seconds with jitter, at most N at once; or, in
watch mode, continuously, each poll waiting on the host until something changes.

Each host has its own loop, so an unreachable or slow host only delays itself. A failed poll is
retried with exponential backoff (tenacity) capped at ``backoff_max``; an authentication failure
waits ``auth_backoff`` instead, because retrying a bad password quickly locks the account out.
A host recovers by itself at its next successful poll.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from .transports.base import (
    AuthenticationFailed,
    HostUnsupported,
    Snapshot,
    Transport,
    TransportError,
)

LOGGER = logging.getLogger(__name__)
SUMMARY_MIN_PERIOD_S = 5.0
# watch mode: a host is asked at most this often while its answers come back at once (jobs
# starting, a file being written, a watchdog to confirm gone)
WATCH_MIN_GAP_S = 1.0


@dataclass
class HostSlot:
    """One watched host: its transport, its tracker, its health."""

    name: str
    async_dir: str
    transport: Transport
    tracker: HostTracker
    failures: int = 0
    last_error: str | None = None
    # the last failure said the host cannot run the poll script (reported once per episode)
    unsupported: bool = False


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
    # a host that cannot run the poll script (Constrained Language Mode) is asked again this rarely
    unsupported_retry: float = 3600.0
    # a job file larger than this is summarised on the host (docs/poll-protocol.md), not sent
    max_bytes: int = 1024 * 1024
    # an answer's byte budget; files past it are deferred to the next polls, which follow at once
    max_answer_bytes: int = 4 * 1024 * 1024
    # watch mode: each poll may wait this long on the host for a change; None: poll mode
    watch_wait: float | None = None


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
        # interval, 2x, 4x ... up to backoff_max, plus jitter so failing hosts do not retry in step;
        # in watch mode (no interval) from one second: a rebooted host is asked again soon
        step = max(timing.interval if timing.watch_wait is None else 1.0, 0.1)
        self._backoff = wait_exponential(multiplier=step, max=timing.backoff_max) + wait_random(
            0, step * max(timing.jitter, 0.05)
        )

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
            started = time.monotonic()
            snap = await self._poll(slot)
            findings = slot.tracker.apply(snap)
            self._counts.events += await self.delivery.deliver(
                slot.name, slot.async_dir, slot.tracker, findings
            )
            # a backlog left for later (the answer's byte budget was spent): read on at once
            if snap.deferred:
                await asyncio.sleep(0)
            elif self.timing.watch_wait is not None:
                # the next poll waits on the host; one that answers at once is paced
                await asyncio.sleep(max(0.0, started + WATCH_MIN_GAP_S - time.monotonic()))
            else:
                await asyncio.sleep(self._next_delay())

    def _wait_s(self, slot: HostSlot) -> float:
        """How long the next poll of this host may wait on it (0 in poll mode, when the tracker
        has something to confirm or re-read at once, or right after a failed poll)."""
        # after a failure the host may have rebooted (a new boot time, which the waiting check
        # does not watch) or lost its pool: ask at once first
        if self.timing.watch_wait is None or not slot.tracker.settled or slot.failures:
            return 0.0
        return self.timing.watch_wait

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
            # a cancel (the source stopping) is no failure of the host: no log, no host event;
            # tenacity raises it at the next turn
            if (
                outcome is not None
                and outcome.failed
                and not isinstance(outcome.exception(), asyncio.CancelledError)
            ):
                await self._failed(slot, attempt.retry_state)
        if slot.failures:
            LOGGER.warning("%s: reachable again after %d failed polls", slot.name, slot.failures)
            slot.failures = 0
            slot.last_error = None
            slot.unsupported = False
            if self.host_events:
                await self.delivery.host_event(slot.name, "recovered", None)
        return snap

    async def _poll_once(self, slot: HostSlot) -> Snapshot:
        wait = self._wait_s(slot)
        request = slot.tracker.request(
            slot.async_dir, self.timing.max_bytes, self.timing.max_answer_bytes, wait
        )
        # max_concurrency bounds the polls that work; a waiting poll mostly waits, and every
        # watched host has one in flight
        async with self._sem if wait == 0 else contextlib.nullcontext():
            self._counts.polls += 1
            started = time.monotonic()
            try:
                # the transport enforces its own deadline; this one only guards against a hang
                return await asyncio.wait_for(
                    slot.transport.poll(request), self.timing.poll_timeout + 10 + wait
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
                elapsed = time.monotonic() - started - wait
                if elapsed > self.timing.interval:
                    self._counts.slow_ms.append(int(elapsed * 1000))

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        if isinstance(exc, AuthenticationFailed):
            return self.timing.auth_backoff
        if isinstance(exc, HostUnsupported):
            return self.timing.unsupported_retry
        return float(self._backoff(rs))

    async def _failed(self, slot: HostSlot, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        error = (str(exc) or type(exc).__name__) if exc is not None else "unknown error"
        slot.failures += 1
        self._counts.failed += 1
        slot.last_error = error
        if isinstance(exc, HostUnsupported):
            if not slot.unsupported:  # once per episode: the log, and the event
                slot.unsupported = True
                LOGGER.error(
                    "%s: cannot run the poll script: %s; asking again every %.0f s",
                    slot.name,
                    exc.reason,
                    self.timing.unsupported_retry,
                )
                if self.host_events:
                    await self.delivery.host_event(slot.name, "unsupported", exc.reason)
            return
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
