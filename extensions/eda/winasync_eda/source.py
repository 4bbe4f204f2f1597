"""The event source's lifetime: check arguments, build one transport per host, poll, clean up.

On cancellation (ansible-rulebook shutting down) every runspace pool is closed, so no shell is
left open on the hosts, and the checkpoint is flushed before CancelledError goes on up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint
from .checkpoint_pg import PostgresStore
from .config import SourceConfig, parse_args
from .delivery import Delivery
from .scheduler import HostSlot, Scheduler, Timing
from .settings import HostSettings
from .tracker import HostTracker
from .transports.base import Transport
from .transports.local import LocalTransport
from .transports.psrp_common import PsrpTransportCore

if TYPE_CHECKING:
    from .transports.aio_http import HttpClient

LOGGER = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 15.0
# the shells' idle timeout: a source killed without closing its pools leaves each host's shell
# this long after its last request (WinRM's own default, 2 hours, would hold MaxShellsPerUser)
IDLE_TIMEOUT_S = 180


# which PSRP client carries watch mode: auto (asyncio where it supports the host's auth),
# pypsrp (a thread per waiting poll, as before), aio (asyncio where it can, else pypsrp)
BACKEND_ENV = "WINASYNC_EDA_WATCH_BACKEND"


def psrp_backend(host: HostSettings, cfg: SourceConfig) -> tuple[str, str]:
    """("aio" or "pypsrp", why): the one place that picks a host's PSRP client.

    Watch mode parks a Receive per host for up to a minute: on pypsrp (synchronous) that is a
    thread per host, on the asyncio client a coroutine. The asyncio client speaks Basic,
    client certificates, and negotiate, ntlm and kerberos (a logon per connection, sealed over
    HTTP, bound over HTTPS); CredSSP, and Negotiate through a proxy, stay on pypsrp. Poll mode
    stays on pypsrp: a poll holds its thread only while it runs."""
    if cfg.mode != "watch":
        return "pypsrp", "poll mode"
    if os.environ.get(BACKEND_ENV, "auto").strip().lower() == "pypsrp":
        return "pypsrp", f"{BACKEND_ENV}=pypsrp"
    try:
        from .transports.aio_http import supports
    except ImportError as exc:  # aiohttp or psrpcore missing from an older environment
        return "pypsrp", f"{exc.name} is not installed"
    unsupported = supports(host)
    if unsupported is not None:
        return "pypsrp", f"{unsupported} needs pypsrp"
    return "aio", "asyncio"


def make_transport(
    host: HostSettings,
    cfg: SourceConfig,
    executor: ThreadPoolExecutor | None = None,
    http: HttpClient | None = None,
    backend: str | None = None,
) -> Transport:
    """The transport for one host (PSRP unless ``connection: local``); ``http``: the shared
    session of the asyncio client, for the hosts ``psrp_backend`` gives it (``backend``: its
    choice when already made)."""
    if host.connection == "local":
        return LocalTransport(host.name)
    if backend is None and http is not None:
        backend = psrp_backend(host, cfg)[0]
    if http is not None and backend == "aio":
        from .transports.aio_psrp import AioPsrpTransport

        return AioPsrpTransport(
            host,
            cfg.poll_timeout,
            http,
            poll_script=cfg.poll_script,
            idle_timeout=idle_timeout(cfg),
        )
    from .transports.psrp import PsrpTransport

    return PsrpTransport(
        host,
        cfg.poll_timeout,
        executor,
        poll_script=cfg.poll_script,
        idle_timeout=idle_timeout(cfg),
    )


def idle_timeout(cfg: SourceConfig) -> int:
    """A few minutes; in poll mode also above three intervals, so a shell outlives the pause
    between two polls (a Receive parked on a waiting poll keeps the shell alive by itself)."""
    if cfg.mode == "watch":
        return IDLE_TIMEOUT_S
    return max(IDLE_TIMEOUT_S, math.ceil(3 * cfg.interval))


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
    backends = _backends(cfg)
    # pypsrp blocks: each poll in flight holds a thread, and a host stuck inside one pypsrp call
    # holds its thread until that call returns. The source's own pool, sized for
    # max_concurrency (in watch mode, plus one per pypsrp host: each has a waiting poll parked
    # in a thread), leaves the engine's default executor alone; the asyncio client's logons
    # (pyspnego blocks) run in it too.
    watching = sum(1 for b in backends.values() if b == "pypsrp") if cfg.mode == "watch" else 0
    executor = ThreadPoolExecutor(
        cfg.max_concurrency + watching + 8, thread_name_prefix="async_jobs-psrp"
    )
    http = None
    if "aio" in backends.values():
        from .transports.aio_http import HttpClient

        http = HttpClient(executor=executor)
    slots = [
        HostSlot(
            name=h.name,
            async_dir=h.async_dir,
            transport=make_transport(h, cfg, executor, http, backend=backends.get(h.name)),
            tracker=HostTracker(h.name, only=cfg.jids, lost_after_ms=lost_after_ms),
        )
        for h in cfg.hosts
    ]
    if checkpoint.persistent:
        _keep_shells(slots, checkpoint)
    timing = Timing(
        interval=cfg.interval,
        jitter=cfg.jitter,
        max_concurrency=cfg.max_concurrency,
        poll_timeout=cfg.poll_timeout,
        backoff_max=cfg.backoff_max,
        auth_backoff=cfg.auth_backoff,
        # a file larger than this is summarised from a bounded read: never less than an event holds
        max_bytes=max(1024 * 1024, 4 * cfg.max_output_bytes),
        max_answer_bytes=cfg.max_answer_bytes,
        watch_wait=cfg.watch_wait if cfg.mode == "watch" else None,
    )
    if cfg.shard is not None:
        LOGGER.info(
            "shard %s: %d of the %d hosts are this source's (rendezvous hashing on the name)",
            cfg.shard,
            len(slots),
            cfg.hosts_total,
        )
    cadence = (
        f"with waiting polls (up to {cfg.watch_wait:g} s each)"
        if cfg.mode == "watch"
        else f"every {cfg.interval:.1f} s"
    )
    LOGGER.info(
        "watching %d hosts %s (at most %d at once); emitting %s%s%s",
        len(slots),
        cadence,
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
        if http is not None:
            await asyncio.shield(http.close())


def _keep_shells(slots: list[HostSlot], checkpoint: Checkpoint) -> None:
    """Hand each host's transport the shells the last run left there (a killed source deletes
    none, and each restart would add one towards MaxShellsPerUser), and record in the
    checkpoint the shells each one has open from now on."""
    left = checkpoint.shells()
    for slot in slots:
        if isinstance(slot.transport, PsrpTransportCore):
            slot.transport.watch_shells(
                left.pop(slot.name, frozenset()),
                functools.partial(checkpoint.set_shells, slot.name),
            )
    for host in left:  # not watched any more: nothing will delete them, they idle out
        checkpoint.set_shells(host, frozenset())


def _backends(cfg: SourceConfig) -> dict[str, str]:
    """Each PSRP host's client (``psrp_backend``), logged once as a count per client and why."""
    backends: dict[str, str] = {}
    why: Counter[tuple[str, str]] = Counter()
    for host in cfg.hosts:
        if host.connection == "psrp":
            backend, reason = psrp_backend(host, cfg)
            backends[host.name] = backend
            why[(backend, reason)] += 1
    if cfg.mode == "watch" and why:
        LOGGER.info(
            "watch mode PSRP clients: %s",
            "; ".join(
                f"{count} hosts on {'asyncio' if backend == 'aio' else 'pypsrp threads'}"
                + ("" if backend == "aio" else f" ({reason})")
                for (backend, reason), count in sorted(why.items())
            ),
        )
    return backends


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
