"""The asyncio PSRP client over Negotiate (NTLM) against the simulated host: message encryption
over HTTP, channel binding over HTTPS, a logon per TCP connection that is made again (with a
fresh context, and bodies sealed for it) when the host closes the connection, as HTTP.sys does
after an idle keep-alive, and a wrong password told as pypsrp tells it, without the password."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import spnego
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
from winasync_eda.transports.aio_http import HttpClient
from winasync_eda.transports.aio_psrp import AioPsrpTransport
from winasync_eda.transports.base import AuthenticationFailed, PollRequest, TransportError
from winasync_eda.transports.psrp import PsrpTransport

from harness.sim_thread import SimServerThread
from tests.secret_scan import assert_not_shown
from tests.sim.test_aio_psrp import (
    first_answers,
    host_settings,
    kind,
    transports,
    waiting_poll,
)
from tests.waiting import async_wait_until
from winsim.auth.negotiate import NegotiateGate
from winsim.faults import LOGON, FaultKind
from winsim.host import SimHost
from winsim.scripts.dispatch import execute
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim
PASSWORD = "Neg-S3cret-never-logged"
ASYNC_DIR = r"%USERPROFILE%\.ansible_async"
# HTTP.sys closes an idle keep-alive connection after 120 s; here at once
IDLE_CLOSE_S = 0.6
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def no_default_realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A krb5.conf without a default realm. pyspnego's negotiate tries Kerberos before NTLM, for
    the default realm of the machine's krb5.conf (here Debian's, ATHENA.MIT.EDU, whose KDCs do
    not answer): that cost 0 to 5.1 s per logon (5 s in about 1 of 40), and a Delete aside,
    which logs on first, then missed its 5 s cleanup timeout. These tests time the client, not
    that realm; close() ending a poll whatever a logon costs is tested on its own below."""
    conf = tmp_path_factory.mktemp("krb5") / "krb5.conf"
    conf.write_text("[libdefaults]\n\tdns_lookup_kdc = false\n\tdns_lookup_realm = false\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRB5_CONFIG", str(conf))
        yield


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(execute, idle_close_s=IDLE_CLOSE_S) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.close()


def add_host(sim: SimServerThread, tmp_path: Path, *, https: bool) -> HostEndpoint:
    name = f"neg{next(_names)}"
    simhost = SimHost("win01", tmp_path / name)
    simhost.attach_loop(sim.loop)
    return sim.add_host(
        name, simhost, username="ansible", password=PASSWORD, https=https, auth="negotiate"
    )


@pytest.fixture(params=[False, True], ids=["http-encrypted", "https-bound"])
def ep(
    request: pytest.FixtureRequest, sim: SimServerThread, tmp_path: Path
) -> Iterator[HostEndpoint]:
    ep = add_host(sim, tmp_path, https=request.param)
    yield ep
    ep.faults.clear()
    sim.remove_host(ep.name)


def settings(sim: SimServerThread, ep: HostEndpoint, **overrides: Any) -> HostSettings:
    return host_settings(sim, ep, **{**wire(ep), **overrides})


def wire(ep: HostEndpoint) -> dict[str, Any]:
    """Negotiate, over the host's protocol, with this module's password."""
    protocol = "https" if ep.https else "http"
    return {"auth": "negotiate", "protocol": protocol, "password": Secret(PASSWORD)}


async def finished_job(ep: HostEndpoint, stdout: str = "done") -> str:
    simhost: SimHost = ep.host
    jid = simhost.start_job("finished", 0.05, stdout=stdout)
    await async_wait_until(simhost.jobs[jid].ended.is_set, 10, "the job's end")
    return jid


async def test_the_same_answer_as_pypsrp(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    jid = await finished_job(ep, "héllo")
    answers = await first_answers(transports(sim, ep, http, **wire(ep)))
    assert answers["aio"].changed == answers["pypsrp"].changed
    assert [f.name for f in answers["aio"].changed] == [jid]
    await async_wait_until(lambda: ep.open_shells == 0, 10, "no shell left")


async def test_a_connection_the_host_closed_is_logged_on_again_and_nothing_is_lost(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    """HTTP.sys closes an idle connection; pypsrp then resends a body sealed for the old
    logon and fails (winrm-facts.md). Here the next poll logs on again and reuses the pool."""
    transport = AioPsrpTransport(settings(sim, ep), 8.0, http, idle_timeout=120)
    try:
        first = await finished_job(ep, "one")
        assert [f.name for f in (await transport.poll(PollRequest(ASYNC_DIR))).changed] == [first]
        channel = transport.channel
        assert channel is not None and channel.logons == 1
        await async_wait_until(lambda: not channel.connected, 10, "the host's idle close")
        second = await finished_job(ep, "two")
        snapshot = await transport.poll(PollRequest(ASYNC_DIR))
        assert second in [f.name for f in snapshot.changed]
        assert channel.logons == 2
        # the same shell: no pool was rebuilt
        assert ep.counters.get("Create").requests == 1
    finally:
        await transport.close()
    await async_wait_until(lambda: ep.open_shells == 0, 10, "no shell left")


async def test_a_close_fault_after_a_reply_costs_a_new_logon_not_a_poll(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    transport = AioPsrpTransport(settings(sim, ep), 8.0, http, idle_timeout=120)
    try:
        await transport.poll(PollRequest(ASYNC_DIR))
        # the host closes the connection right after each of the next three replies
        ep.faults.inject(FaultKind.CLOSE, count=3)
        jid = await finished_job(ep)
        snapshot = await transport.poll(PollRequest(ASYNC_DIR))
        assert jid in [f.name for f in snapshot.changed]
        channel = transport.channel
        assert channel is not None and channel.logons >= 3
        assert ep.faults.hits(FaultKind.CLOSE) == 3
        assert ep.counters.get("Create").requests == 1
    finally:
        await transport.close()
    await async_wait_until(lambda: ep.open_shells == 0, 10, "no shell left")


async def test_a_wrong_password_fails_as_pypsrp_says_and_never_shows_it(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-Passw0rd-never-shown"
    host = settings(sim, ep, password=Secret(wrong))
    caplog.set_level(logging.DEBUG)
    failures = {}
    for name, transport in (
        ("aio", AioPsrpTransport(host, 8.0, http, idle_timeout=120)),
        ("pypsrp", PsrpTransport(host, 8.0, idle_timeout=120)),
    ):
        with pytest.raises(AuthenticationFailed) as failed:
            await transport.poll(PollRequest(ASYNC_DIR))
        await transport.close()
        failures[name] = str(failed.value)
    assert (
        failures["aio"]
        == failures["pypsrp"]
        == ("win01: authentication failed: the host refused the credentials")
    )
    assert ep.counters.auth_failures == 2
    assert_not_shown(
        [*failures.values(), caplog.text], {"password": wrong, "host password": PASSWORD}
    )


async def test_cancelling_a_waiting_poll_then_closing_deletes_on_a_connection_of_its_own(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    transport, waiting = await waiting_poll(sim, ep, http, **wire(ep))
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await transport.close()
    await async_wait_until(lambda: ep.host.waiting_polls == 0, 5, "the pipeline ended")
    assert ep.open_shells == 0
    assert ep.counters.get("Delete").requests == 1


async def test_close_ends_a_poll_that_still_waits(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    transport, waiting = await waiting_poll(sim, ep, http, **wire(ep))
    await transport.close()
    assert isinstance(await asyncio.wait_for(waiting, 5), TransportError)
    assert ep.host.waiting_polls == 0
    assert ep.open_shells == 0
    # the poll's connection is closed once the poll let go of it
    assert transport.channel is None


async def test_close_ends_the_poll_even_when_the_delete_cannot(
    sim: SimServerThread, ep: HostEndpoint, http: HttpClient
) -> None:
    """The Delete that ends the pipeline logs on first, on a connection of its own; whatever
    that costs (a KDC that does not answer; here a host that holds the Delete past the cleanup
    timeout), the waiting poll ends at once, as closed."""
    transport, waiting = await waiting_poll(sim, ep, http, **wire(ep))
    ep.faults.inject(FaultKind.DELAY, actions={"Delete"}, delay=30.0, count=1)
    closing = asyncio.create_task(transport.close())
    done, _pending = await asyncio.wait(
        {waiting, closing}, timeout=20, return_when=asyncio.FIRST_COMPLETED
    )
    assert done == {waiting}  # before the Delete gave up
    failed = waiting.result()
    assert isinstance(failed, TransportError)
    assert kind(failed) == "closed"
    await closing
    assert transport.channel is None
    assert ep.faults.hits(FaultKind.DELAY) == 1


@pytest.mark.parametrize("own_pool", [True, False], ids=["source-pool", "no-pool-given"])
async def test_the_logons_build_their_contexts_on_the_given_threads_not_the_loops(
    sim: SimServerThread, ep: HostEndpoint, monkeypatch: pytest.MonkeyPatch, own_pool: bool
) -> None:
    """pyspnego blocks (Kerberos may ask a KDC): its contexts are built on the source's thread
    pool, or without one on the client's own, never on the engine loop's default executor."""
    threads: list[str] = []
    build = spnego.client

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return build(*args, **kwargs)

    monkeypatch.setattr(spnego, "client", spy)  # aio_negotiate calls spnego.client
    pool = ThreadPoolExecutor(2, thread_name_prefix="source-pool") if own_pool else None
    http = HttpClient(executor=pool)
    try:
        transport = AioPsrpTransport(settings(sim, ep), 8.0, http, idle_timeout=120)
        await transport.poll(PollRequest(ASYNC_DIR))
        await transport.close()  # its Delete logs on, on a connection of its own
    finally:
        await http.close()
    prefix = "source-pool" if own_pool else "winasync-logon"
    assert len(threads) >= 2
    assert all(name.startswith(prefix) for name in threads), threads
    if pool is not None:
        # the client's close leaves the source's pool to the source
        assert pool.submit(threading.current_thread).result() is not None
        pool.shutdown()


@pytest.mark.parametrize(
    "fault", [FaultKind.DROP, FaultKind.CLOSE], ids=["dropped-unanswered", "answered-then-closed"]
)
async def test_a_logon_the_host_cuts_off_is_made_again_and_the_poll_succeeds(
    sim: SimServerThread,
    ep: HostEndpoint,
    http: HttpClient,
    caplog: pytest.LogCaptureFixture,
    fault: FaultKind,
) -> None:
    """The host drops the connection at the first Negotiate leg, or answers it (a 401 with its
    challenge) and closes: the client logs on again, with a fresh context, on a new connection;
    the poll answers, the finished job in it, and the password shows nowhere."""
    caplog.set_level(logging.DEBUG)
    jid = await finished_job(ep)
    ep.faults.inject(fault, actions={LOGON}, count=1)
    transport = AioPsrpTransport(settings(sim, ep), 8.0, http, idle_timeout=120)
    try:
        snapshot = await transport.poll(PollRequest(ASYNC_DIR))
        assert [f.name for f in snapshot.changed] == [jid]
        assert ep.faults.hits(fault) == 1
        channel = transport.channel
        assert channel is not None and channel.logons >= 2
        assert ep.counters.get("Create").requests == 1
        assert ep.counters.auth_failures == 0
    finally:
        await transport.close()
    await async_wait_until(lambda: ep.open_shells == 0, 10, "no shell left")
    assert_not_shown([caplog.text], {"host password": PASSWORD})


async def test_encryption_always_seals_inside_tls_as_pypsrp_does(
    sim: SimServerThread, tmp_path: Path, http: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``encryption: always`` over HTTPS: bodies sealed with the logon's keys inside TLS, the
    logon still bound to the certificate, as pypsrp does it; Windows (and the sim) accept it."""
    sealed: list[int] = []
    seal_reply = NegotiateGate.seal_reply

    def spy(gate: NegotiateGate, conn: Any, body: bytes) -> tuple[str, bytes]:
        sealed.append(len(body))
        return seal_reply(gate, conn, body)

    monkeypatch.setattr(NegotiateGate, "seal_reply", spy)
    ep = add_host(sim, tmp_path, https=True)
    try:
        jid = await finished_job(ep, "sealed")
        clients = transports(sim, ep, http, **wire(ep), encryption="always")
        answers = {}
        for name, transport in clients.items():
            before = ep.counters.requests - ep.counters.get(LOGON).requests
            sealed.clear()
            answers[name] = (await first_answers({name: transport}))[name]
            requests = ep.counters.requests - ep.counters.get(LOGON).requests - before
            # every request of the client was sealed, so every reply was
            assert len(sealed) == requests > 0, name
        assert answers["aio"].changed == answers["pypsrp"].changed
        assert [f.name for f in answers["aio"].changed] == [jid]
        assert ep.open_shells == 0
    finally:
        sim.remove_host(ep.name)
