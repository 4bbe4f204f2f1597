"""The event source's lifetime: check arguments, build one transport per host, poll, clean up.

On cancellation (ansible-rulebook shutting down) every runspace pool is closed, so no shell is
left open on the hosts, and the checkpoint is flushed before CancelledError goes on up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .checkpoint import Checkpoint
from .checkpoint_pg import PostgresStore
from .config import SourceConfig, parse_args
from .delivery import Delivery
from .scheduler import HostSlot, Scheduler, Timing
from .settings import HostSettings
from .tracker import HostTracker
from .transports.base import Transport
from .transports.local import LocalTransport

LOGGER = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 15.0


def make_transport(
    host: HostSettings, cfg: SourceConfig, executor: ThreadPoolExecutor | None = None
) -> Transport:
    """The transport for one host (PSRP unless ``connection: local``)."""
    if host.connection == "local":
        return LocalTransport(host.name)
    from .transports.psrp import PsrpTransport

    return PsrpTransport(host, cfg.poll_timeout, executor)


async def run(queue: asyncio.Queue[Any], args: Mapping[str, Any]) -> None:
    """Watch the configured hosts until cancelled."""
    # off the event loop: a large inventory takes seconds to read and template
    cfg = await asyncio.to_thread(parse_args, args)
    store = None
    if cfg.checkpoint_db is not None:
        assert cfg.checkpoint_id is not None  # parse_args sees to it
        store = PostgresStore(cfg.checkpoint_db, cfg.checkpoint_id)
    checkpoint = Checkpoint(cfg.state_file, store)
    await checkpoint.load()
    delivery = Delivery(
        queue,
        checkpoint,
        emit=cfg.emit,
        max_output_bytes=cfg.max_output_bytes,
        redeliver_after_s=cfg.redeliver_after,
        feedback_queue=cfg.feedback_queue,
    )
    lost_after_ms = None if cfg.lost_after is None else int(cfg.lost_after * 1000)
    # pypsrp blocks: each poll in flight holds a thread, and a host stuck inside one pypsrp call
    # holds its thread until that call returns. The source's own pool, sized for
    # max_concurrency, leaves the engine's default executor alone.
    executor = ThreadPoolExecutor(cfg.max_concurrency + 8, thread_name_prefix="async_jobs-psrp")
    slots = [
        HostSlot(
            name=h.name,
            async_dir=h.async_dir,
            transport=make_transport(h, cfg, executor),
            tracker=HostTracker(h.name, only=cfg.jids, lost_after_ms=lost_after_ms),
        )
        for h in cfg.hosts
    ]
    timing = Timing(
        interval=cfg.interval,
        jitter=cfg.jitter,
        max_concurrency=cfg.max_concurrency,
        poll_timeout=cfg.poll_timeout,
        backoff_max=cfg.backoff_max,
        auth_backoff=cfg.auth_backoff,
        # the host's summary keeps MaxBytes / 4 of stdout and stderr: never less than an event holds
        max_bytes=max(1024 * 1024, 4 * cfg.max_output_bytes),
    )
    LOGGER.info(
        "watching %d hosts every %.1f s (at most %d at once); emitting %s%s%s",
        len(slots),
        cfg.interval,
        cfg.max_concurrency,
        ", ".join(sorted(cfg.emit)),
        f"; checkpoint {cfg.state_file}" if cfg.state_file else "",
        f"; checkpoint in PostgreSQL table {store.table}" if store else "",
    )
    await delivery.start()
    try:
        await Scheduler(slots, delivery, timing, host_events=cfg.host_events).run()
    finally:
        await asyncio.shield(_shutdown(slots, delivery))
        executor.shutdown(wait=False, cancel_futures=True)


async def _shutdown(slots: list[HostSlot], delivery: Delivery) -> None:
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(s.transport.close() for s in slots), return_exceptions=True),
            CLOSE_TIMEOUT_S,
        )
    except TimeoutError:
        LOGGER.warning("closing the connections took over %.0f s: gave up waiting", CLOSE_TIMEOUT_S)
    else:
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, BaseException):
                LOGGER.warning(
                    "%s: closing the connection failed: %s", slot.name, type(result).__name__
                )
    try:
        # a checkpoint database that is away would make the last flush wait for good
        await asyncio.wait_for(delivery.stop(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        LOGGER.warning(
            "the checkpoint could not be written within %.0f s: the last outcomes will be "
            "emitted again at the next start",
            CLOSE_TIMEOUT_S,
        )
    await delivery.checkpoint.close()
    LOGGER.info("stopped: %d connections closed, checkpoint flushed", len(slots))
