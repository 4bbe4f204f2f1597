"""The source over each way Windows hosts authenticate, against simulated hosts: Negotiate (NTLM)
with message encryption over HTTP, with channel binding over HTTPS, client certificates; the
encrypted session broken by the host (HTTP.sys's idle close, a closed connection) recovered with
nothing lost; a wrong password tried only once per auth_backoff. No secret in any log line."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
from winasync_eda.transports.base import PollRequest
from winasync_eda.transports.psrp import PsrpTransport

from harness.sim_thread import SimServerThread
from tests.secret_scan import assert_not_shown, pem_body
from tests.sim.source_on_sim import source_draining_into
from tests.waiting import async_wait_until
from winsim.faults import FaultKind
from winsim.host import SimHost
from winsim.scripts.dispatch import execute
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim
PASSWORD = "Neg0tiate-Secret-never-logged"
IDLE_CLOSE_S = 0.6


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(execute, idle_close_s=IDLE_CLOSE_S) as server:
        yield server


@dataclass
class Watched:
    host: SimHost
    endpoint: HostEndpoint
    events: list[dict[str, Any]] = field(default_factory=list)

    def statuses(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self.events:
            if "async_job" in e:
                out.setdefault(e["async_job"]["jid"], []).append(e["async_job"]["status"])
        return out


_names = iter(range(10_000))


@contextlib.asynccontextmanager
async def watching(
    sim: SimServerThread,
    tmp: Path,
    *,
    auth: str,
    https: bool,
    extra_hosts: list[dict[str, Any]] | None = None,
    map_certificate: str | None = None,
    **args: Any,
) -> AsyncIterator[Watched]:
    name = f"win{next(_names, 0):02d}"
    host = SimHost(name, tmp / name)
    host.attach_loop(sim.loop)
    host_auth = {"ntlm": "negotiate"}.get(auth, auth)
    ep = sim.add_host(
        name, host, username="ansible", password=PASSWORD, https=https, auth=host_auth
    )
    if map_certificate:
        ep.accounts.map_certificate(map_certificate, "ansible")
    watched = Watched(host, ep)
    source_args: dict[str, Any] = {
        "hosts": [{"name": name, "address": ep.address, "port": ep.port}, *(extra_hosts or [])],
        "username": "ansible",
        "password": PASSWORD,
        "auth": auth,
        "protocol": "https" if https else "http",
        "interval": 0.3,
        "backoff_max": 1.0,
        "read_timeout": 4,
        "operation_timeout": 2,
        "poll_timeout": 10,
        **args,
    }
    if https:
        source_args["cert_validation"] = str(sim.ca_bundle)
    try:
        async with source_draining_into(source_args, watched.events):
            yield watched
    finally:
        ep.faults.clear()
        sim.remove_host(name)
        for job in list(host.jobs.values()):
            host.call(job.kill)


def assert_no_secret(caplog: pytest.LogCaptureFixture, events: list[dict[str, Any]]) -> None:
    # caplog holds the source's and the simulated host's log lines (one process, DEBUG)
    assert_not_shown([caplog.text, repr(events)], {"the password": PASSWORD})


@pytest.mark.parametrize(
    ("auth", "https"),
    [("negotiate", False), ("ntlm", False), ("negotiate", True)],
    ids=["negotiate-http-encrypted", "ntlm-http-encrypted", "negotiate-https-bound"],
)
async def test_every_outcome_over_negotiate(
    sim: SimServerThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    auth: str,
    https: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with watching(sim, tmp_path, auth=auth, https=https) as w:
        ok = w.host.start_job("finished", 0.3)
        bad = w.host.start_job("failed", 0.3, rc=2)
        await async_wait_until(lambda: len(w.statuses()) == 2, 30, "two outcomes")
    assert w.statuses() == {ok: ["finished"], bad: ["failed"]}
    assert w.endpoint.counters.auth_failures == 0
    assert "poll failed" not in caplog.text
    assert_no_secret(caplog, w.events)


async def test_client_certificate(
    sim: SimServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert_pem, key_pem = sim.server.ca.issue_client("ansible@localhost")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    files: dict[str, Any] = {
        "certificate_pem": str(cert_file),
        "certificate_key_pem": str(key_file),
    }
    async with watching(
        sim, tmp_path, auth="certificate", https=True, map_certificate="ansible@localhost", **files
    ) as w:
        ok = w.host.start_job("finished", 0.3)
        await async_wait_until(lambda: ok in w.statuses(), 30, "the outcome")
    assert w.statuses() == {ok: ["finished"]}
    assert "PRIVATE KEY" not in caplog.text
    assert_not_shown([caplog.text, repr(w.events)], {"the private key": pem_body(key_pem)})


@pytest.mark.parametrize("https", [False, True], ids=["http-encrypted", "https"])
async def test_closed_connection_is_recovered_in_the_poll(
    sim: SimServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture, https: bool
) -> None:
    """Over HTTP the encrypted session is rebuilt within the poll; over HTTPS pypsrp logs on
    again on the new connection by itself."""
    caplog.set_level(logging.DEBUG)
    async with watching(sim, tmp_path, auth="negotiate", https=https) as w:
        first = w.host.start_job("finished", 0.2)
        await async_wait_until(lambda: first in w.statuses(), 30, "the first outcome")
        logons = w.endpoint.counters.get("Auth").requests
        w.endpoint.faults.inject(FaultKind.CLOSE, count=1)
        second = w.host.start_job("finished", 0.2)
        await async_wait_until(lambda: second in w.statuses(), 30, "the second outcome")
        assert w.endpoint.faults.hits(FaultKind.CLOSE) == 1
        assert w.endpoint.counters.get("Auth").requests > logons  # logged on again
    assert w.statuses() == {first: ["finished"], second: ["finished"]}
    assert ("encrypted session broke" in caplog.text) is not https
    assert "poll failed" not in caplog.text
    assert_no_secret(caplog, w.events)


async def test_connections_closed_again_and_again_lose_nothing(
    sim: SimServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every reply for a while closes its connection: polls fail, the following polls rebuild
    the pool, and every outcome arrives once."""
    caplog.set_level(logging.DEBUG)
    async with watching(sim, tmp_path, auth="negotiate", https=False) as w:
        first = w.host.start_job("finished", 0.2)
        await async_wait_until(lambda: first in w.statuses(), 30, "the first outcome")
        w.endpoint.faults.inject(FaultKind.CLOSE, count=8)
        jobs = [w.host.start_job("finished", 0.2), w.host.start_job("failed", 0.4, rc=1)]
        await async_wait_until(lambda: len(w.statuses()) == 3, 30, "every outcome")
        assert w.endpoint.faults.hits(FaultKind.CLOSE) == 8
    assert w.statuses() == {first: ["finished"], jobs[0]: ["finished"], jobs[1]: ["failed"]}
    assert "poll failed" in caplog.text
    assert_no_secret(caplog, w.events)


async def test_interval_longer_than_the_idle_close(
    sim: SimServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP.sys closes the connection between two polls (120 s on Windows, 0.6 s here)."""
    caplog.set_level(logging.DEBUG)
    interval = IDLE_CLOSE_S * 2.5
    async with watching(sim, tmp_path, auth="negotiate", https=False, interval=interval) as w:
        jids = []
        for _attempt in range(3):
            jids.append(w.host.start_job("finished", 0.1))
            await async_wait_until(lambda: jids[-1] in w.statuses(), 30, "the outcome")
    assert w.statuses() == {jid: ["finished"] for jid in jids}
    assert caplog.text.count("encrypted session broke") >= 2
    assert "poll failed" not in caplog.text


@pytest.mark.parametrize(("auth", "https"), [("negotiate", False), ("basic", True)])
async def test_wrong_password_is_tried_once_per_auth_backoff(
    sim: SimServerThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    auth: str,
    https: bool,
) -> None:
    """Lockout policies count failed logons: one per auth_backoff, while a healthy host next
    to it is polled again and again."""
    healthy = SimHost("healthy", tmp_path / "healthy")
    healthy.attach_loop(sim.loop)
    name = f"healthy{next(_names):02d}"
    good = sim.add_host(
        name, healthy, username="ansible", password=PASSWORD, https=https, auth=auth
    )
    try:
        spec = {"name": name, "address": good.address, "port": good.port, "password": PASSWORD}
        async with watching(
            sim,
            tmp_path,
            auth=auth,
            https=https,
            password="Wrong-Passw0rd",
            auth_backoff=3600,
            extra_hosts=[spec],
        ) as w:
            await async_wait_until(lambda: w.endpoint.counters.auth_failures >= 1, 30, "a logon")
            polls = good.counters.get("Command").requests
            await async_wait_until(
                lambda: good.counters.get("Command").requests >= polls + 10, 30, "10 more polls"
            )
        assert w.endpoint.counters.auth_failures == 1
        assert good.counters.auth_failures == 0
    finally:
        sim.remove_host(name)
    assert_not_shown(
        [caplog.text], {"the wrong password": "Wrong-Passw0rd", "the password": PASSWORD}
    )


async def test_an_idle_encrypted_session_is_replaced_before_the_poll(
    sim: SimServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle longer than sealed_idle_s (100 s by default, under HTTP.sys's 120 s): the pool is
    replaced without a request that would fail, and the old shell is deleted afterwards."""
    caplog.set_level(logging.DEBUG)
    host = SimHost("idle", tmp_path / "idle")
    host.attach_loop(sim.loop)
    ep = sim.add_host("idle", host, username="ansible", password=PASSWORD, auth="negotiate")
    settings = HostSettings(
        "idle",
        address=ep.address,
        port=ep.port,
        protocol="http",
        username="ansible",
        password=Secret(PASSWORD),
        auth="negotiate",
        operation_timeout=2,
        read_timeout=4,
        sealed_idle_s=IDLE_CLOSE_S / 2,
    )
    transport = PsrpTransport(settings, 30.0)
    request = PollRequest(async_dir="%USERPROFILE%\\.ansible_async")
    try:
        await transport.poll(request)
        await async_wait_until(lambda: sim.server.open_connections("idle") == 0, 10, "the close")
        snapshot = await transport.poll(request)
        assert snapshot.exists is False
        await transport.poll(request)  # the old shell is deleted by now
        assert ep.open_shells == 1
    finally:
        await transport.close()
        sim.remove_host("idle")
    assert "the encrypted session was idle" in caplog.text
    assert "broke" not in caplog.text
    assert "Failed to parse WSManFault" not in caplog.text  # no request failed
    assert ep.counters.get("Delete").requests >= 1
