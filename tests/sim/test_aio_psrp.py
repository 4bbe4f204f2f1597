"""The asyncio PSRP client (watch mode's backend for Basic and certificate auth) against the
simulated host, with real aiohttp and psrpcore: the same answers and the same failure kinds
as pypsrp's ``PsrpTransport`` for every fault, no shell left behind, and a cancel or close
that ends a waiting pipeline at once."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pypsrp.powershell import RunspacePool
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
from winasync_eda.transports.aio_http import HttpClient
from winasync_eda.transports.aio_psrp import AioPsrpTransport
from winasync_eda.transports.base import (
    AuthenticationFailed,
    PollRequest,
    Snapshot,
    Transport,
    TransportError,
)
from winasync_eda.transports.psrp import PsrpTransport

from harness.sim_thread import SimServerThread, client_for
from tests.waiting import async_wait_until
from winsim.host import SimHost
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim
PASSWORD = "Aio-S3cret-never-logged"
ASYNC_DIR = r"%USERPROFILE%\.ansible_async"
_names = itertools.count()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.close()


@pytest.fixture
def ep(sim: SimServerThread, tmp_path: Path) -> Iterator[HostEndpoint]:
    """A simulated host of its own (``ep.host``), over HTTPS with the sim's CA."""
    name = f"aio{next(_names)}"
    simhost = SimHost("win01", tmp_path / name)
    simhost.attach_loop(sim.loop)
    ep = sim.add_host(name, simhost, username="ansible", password=PASSWORD, https=True)
    yield ep
    ep.faults.clear()
    sim.remove_host(name)
    for job in list(simhost.jobs.values()):
        simhost.call(job.kill)


def host_settings(sim: SimServerThread, ep: HostEndpoint, **overrides: Any) -> HostSettings:
    values: dict[str, Any] = {
        "name": "win01",
        "address": ep.address,
        "port": ep.port,
        "protocol": "https",
        "username": "ansible",
        "password": Secret(PASSWORD),
        "auth": "basic",
        "cert_validation": str(sim.ca_bundle),
        "connection_timeout": 2.0,
        "read_timeout": 4.0,
        "operation_timeout": 2.0,
        "no_proxy": True,
        **overrides,
    }
    return HostSettings(**values)


def transports(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient, **overrides: Any
) -> dict[str, Transport]:
    settings = host_settings(sim, ep, **overrides)
    return {
        "aio": AioPsrpTransport(settings, 8.0, http, idle_timeout=120),
        "pypsrp": PsrpTransport(settings, 8.0, idle_timeout=120),
    }


async def first_answers(clients: dict[str, Transport]) -> dict[str, Snapshot]:
    """Each client's answer to one poll; each closed after it."""
    answers = {}
    for name, transport in clients.items():
        try:
            answers[name] = await transport.poll(PollRequest(ASYNC_DIR))
        finally:
            await transport.close()
    return answers


async def outcome(transport: Transport, request: PollRequest) -> Snapshot | TransportError:
    try:
        return await transport.poll(request)
    except TransportError as exc:
        return exc


def kind(error: TransportError) -> str:
    """'win01: connection error: ...' -> 'connection error'"""
    return str(error).split(": ")[1]


async def test_the_same_answer_as_pypsrp(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    simhost: SimHost = ep.host
    jid = simhost.start_job("finished", 0.1, stdout="héllo")
    ended = simhost.jobs[jid].ended
    await async_wait_until(ended.is_set, 10, "the job's end")
    answers = await first_answers(transports(sim, ep, http))
    assert answers["aio"].changed == answers["pypsrp"].changed
    assert [f.name for f in answers["aio"].changed] == [jid]
    assert ep.open_shells == 0
    assert ep.service.idle_timeouts() == []


@pytest.mark.parametrize(
    ("fault", "options", "expected"),
    [
        ("refuse", {}, "connection error"),
        ("unauthorized", {}, "authentication failed"),
        ("wsman_fault", {"actions": {"Command"}}, "WSMan fault"),
        ("http_error", {"actions": {"Receive"}}, "HTTP error"),
        ("http_error", {"actions": {"Create"}, "status": 503}, "HTTP error"),
        ("shell_lost", {"actions": {"Command"}}, "WSMan fault"),
        ("delay", {"actions": {"Command"}, "delay": 6.0}, "read timeout"),
        ("drop", {"actions": {"Receive"}}, "HTTP error"),
    ],
)
async def test_a_fault_fails_the_poll_as_pypsrp_does_and_the_next_poll_recovers(
    sim: SimServerThread,
    ep: HostEndpoint,
    http: HttpClient,
    fault: str,
    options: dict[str, Any],
    expected: str,
) -> None:
    request = PollRequest(ASYNC_DIR)
    for name, transport in transports(sim, ep, http).items():
        try:
            if "Create" not in options.get("actions", ()):
                await transport.poll(request)  # the pool is open: a fault mid-life
            ep.faults.inject(fault, count=1, **options)
            failed = await outcome(transport, request)
            ep.faults.clear()
            assert isinstance(failed, TransportError), name
            assert kind(failed) == expected, (name, str(failed))
            assert isinstance(failed, AuthenticationFailed) == (fault == "unauthorized"), name
            assert PASSWORD not in str(failed)
            # the scheduler asks again: the host answers, and one shell is left on it
            assert isinstance(await outcome(transport, request), Snapshot), name
            await async_wait_until(lambda: ep.open_shells == 1, 10, f"{name}: one shell")
        finally:
            ep.faults.clear()
            await transport.close()
        await async_wait_until(lambda: ep.open_shells == 0, 10, f"{name}: shells closed")


async def test_a_broken_pool_fails_the_poll_and_a_new_pool_follows(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    transport = transports(sim, ep, http)["aio"]
    try:
        await transport.poll(PollRequest(ASYNC_DIR))
        ep.faults.inject("pool_broken", count=1)
        failed = await outcome(transport, PollRequest(ASYNC_DIR))
        assert isinstance(failed, TransportError)
        assert kind(failed) == "PSRP error"
        assert isinstance(await transport.poll(PollRequest(ASYNC_DIR)), Snapshot)
        assert ep.open_shells == 1
    finally:
        await transport.close()


async def test_tls_validation_is_on_by_default(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    # the sim's CA is in no default bundle: both clients refuse the host's certificate
    for name, transport in transports(sim, ep, http, cert_validation=True).items():
        try:
            failed = await outcome(transport, PollRequest(ASYNC_DIR))
        finally:
            await transport.close()
        assert isinstance(failed, TransportError), name
        assert kind(failed) == "TLS error", (name, str(failed))
    assert ep.counters.get("Create").requests == 0


async def waiting_poll(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient, **overrides: Any
) -> tuple[AioPsrpTransport, asyncio.Task[Snapshot | TransportError]]:
    """A transport whose poll waits on the host (50 s; its Receive parked for 55 s)."""
    settings = host_settings(sim, ep, operation_timeout=55.0, read_timeout=60.0, **overrides)
    transport = AioPsrpTransport(settings, 10.0, http, idle_timeout=120)
    waiting = asyncio.create_task(outcome(transport, PollRequest(ASYNC_DIR, wait_s=50.0)))
    await async_wait_until(lambda: ep.host.waiting_polls == 1, 20, "a waiting pipeline")
    return transport, waiting


async def test_cancelling_a_waiting_poll_then_closing_ends_its_pipeline_at_once(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    transport, waiting = await waiting_poll(sim, ep, http)
    started = time.monotonic()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await transport.close()
    await async_wait_until(lambda: ep.host.waiting_polls == 0, 5, "the pipeline ended")
    assert ep.open_shells == 0
    assert time.monotonic() - started < 5
    assert ep.counters.get("Delete").requests == 1


async def test_close_ends_a_poll_that_still_waits(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    transport, waiting = await waiting_poll(sim, ep, http)
    await transport.close()
    # the Delete ended the pipeline, and so the parked Receive: the poll fails at once
    failed = await asyncio.wait_for(waiting, 5)
    assert isinstance(failed, TransportError)
    assert ep.host.waiting_polls == 0
    assert ep.open_shells == 0


@pytest.mark.parametrize("client", ["aio", "pypsrp"])
async def test_the_shells_a_killed_run_left_are_deleted_and_no_other(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient, client: str
) -> None:
    """The checkpoint names the shells of the run before: the first contact deletes them by
    ShellId (one the host no longer knows counts as deleted), and leaves the shells of other
    tools on the same account alone."""

    def open_pool() -> RunspacePool:
        pool = RunspacePool(client_for(ep, "ansible", PASSWORD, ca_bundle=sim.ca_bundle))
        pool.open()
        return pool

    other = await asyncio.to_thread(open_pool)  # another tool's
    left = await asyncio.to_thread(open_pool)  # the killed run's (it is never closed)
    other_id, left_id = str(other.shell.id).upper(), str(left.shell.id).upper()
    gone_id = str(uuid.uuid4()).upper()  # idled out since
    transport = transports(sim, ep, http)[client]
    assert isinstance(transport, AioPsrpTransport | PsrpTransport)
    reports: list[frozenset[str]] = []
    try:
        transport.watch_shells({left_id, gone_id}, reports.append)
        await async_wait_until(lambda: reports == [{left_id, gone_id}], 5, "the old shells")
        await transport.poll(PollRequest(ASYNC_DIR))
        shells = set(ep.service.shell_ids())
        assert left_id not in shells
        assert other_id in shells
        (new_id,) = shells - {other_id}
        await async_wait_until(lambda: reports[-1] == {new_id}, 5, "only the new shell")
    finally:
        await transport.close()
        await asyncio.to_thread(other.close)
    await async_wait_until(lambda: reports[-1] == set(), 5, "the closed pool forgotten")
    assert ep.open_shells == 0
