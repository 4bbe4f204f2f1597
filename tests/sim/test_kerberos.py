"""Kerberos with a real KDC (MIT krb5kdc on loopback through k5test): the real pypsrp client
(pypsrp[kerberos]) gets service tickets for the simulated hosts' HTTP/<name> SPNs; the hosts
accept them through pyspnego with a keytab, with WinRM message encryption over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import spnego
from pypsrp.exceptions import AuthenticationError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
from winasync_eda.source import run
from winasync_eda.transports.aio_http import HttpClient
from winasync_eda.transports.aio_psrp import AioPsrpTransport
from winasync_eda.transports.base import AuthenticationFailed, PollRequest

from harness.sim_thread import SimServerThread
from tests.secret_scan import assert_not_shown
from tests.waiting import async_wait_until
from winsim import kdc as kdc_module
from winsim.host import SimHost
from winsim.kdc import Kdc
from winsim.scripts.dispatch import execute
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim
# the kerberos dependency group (make setup); without it the KDC tests cannot run
Krb5Error = pytest.importorskip("krb5", reason="pypsrp[kerberos] is not installed").Krb5Error

USER_PASSWORD = "Kerb-Us3r-Passw0rd-never-logged"
LOCAL_PASSWORD = "Local-Passw0rd-unused"


@pytest.fixture(scope="module")
def realm() -> Iterator[Kdc]:
    missing = kdc_module.available()
    if missing:
        pytest.skip(f"Kerberos tests need the KDC: {missing}")
    with Kdc() as kdc, kdc.in_this_process():
        kdc.add_user("ansible", USER_PASSWORD)
        kdc.add_user("alice", USER_PASSWORD)
        yield kdc


@pytest.fixture(scope="module")
def sim(realm: Kdc) -> Iterator[SimServerThread]:
    with SimServerThread(execute) as server:
        yield server


_names = iter(range(100))


@pytest.fixture
def host(realm: Kdc, sim: SimServerThread, tmp_path: Path) -> Iterator[HostEndpoint]:
    with kerberos_host(realm, sim, tmp_path) as ep:
        yield ep


@contextlib.contextmanager
def kerberos_host(
    realm: Kdc, sim: SimServerThread, tmp_path: Path, https: bool = False
) -> Iterator[HostEndpoint]:
    name = f"krb{next(_names, 0):02d}"
    sim_host = SimHost(name, tmp_path / name)
    sim_host.attach_loop(sim.loop)
    ep = sim.add_host(
        name,
        sim_host,
        username="ansible",
        password=LOCAL_PASSWORD,
        auth="kerberos",
        service_host=realm.add_service(name),
        https=https,
    )
    ep.accounts.map_principal(f"ansible@{realm.realm}", "ansible")
    try:
        yield ep
    finally:
        sim.remove_host(name)
        for job in list(sim_host.jobs.values()):
            sim_host.call(job.kill)


def client(realm: Kdc, ep: HostEndpoint, **kwargs: Any) -> WSMan:
    options: dict[str, Any] = {
        "port": ep.port,
        "username": f"ansible@{realm.realm}",
        "password": USER_PASSWORD,
        "auth": "kerberos",
        "ssl": False,
        "cert_validation": False,
        "no_proxy": True,
        "negotiate_hostname_override": ep.service_host,
        "operation_timeout": 2,
        "read_timeout": 5,
    }
    options.update(kwargs)
    return WSMan(ep.address, **options)


def whoami(wsman: WSMan) -> list[Any]:
    with RunspacePool(wsman) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Date")
        ps.invoke()
        return [ps.state]


@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])
def test_ticket_for_the_host_logs_on_with_sealed_messages(
    realm: Kdc, host: HostEndpoint, auth: str
) -> None:
    wsman = client(realm, host, auth=auth)
    whoami(wsman)
    assert host.counters.get("Create").requests == 1
    assert host.counters.auth_failures == 0
    assert wsman.transport.encryption is not None  # sealed with the Kerberos session key


def test_kerberos_over_https_with_channel_binding(
    realm: Kdc, sim: SimServerThread, tmp_path: Path
) -> None:
    with kerberos_host(realm, sim, tmp_path, https=True) as ep:
        whoami(client(realm, ep, ssl=True, cert_validation=str(sim.ca_bundle)))
        assert ep.counters.auth_failures == 0
        assert ep.counters.get("Create").requests >= 1
        # a ticket bound to another TLS channel is refused (gssapi checks the binding)
        wrong = GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x01" * 32)
        ticket = spnego.client(
            f"ansible@{realm.realm}",
            USER_PASSWORD,
            hostname=str(ep.service_host),
            service="HTTP",
            protocol="kerberos",
            channel_bindings=wrong,
        ).step()
        assert ticket is not None
        response = requests.post(
            ep.url,
            data=b"<s:Envelope/>",
            headers={"Authorization": "Negotiate " + base64.b64encode(ticket).decode()},
            verify=str(sim.ca_bundle),
            timeout=10,
        )
        assert response.status_code == 401
        assert ep.counters.auth_failures == 1


def test_a_principal_not_mapped_on_the_host_is_refused(realm: Kdc, host: HostEndpoint) -> None:
    with pytest.raises(AuthenticationError):
        whoami(client(realm, host, username=f"alice@{realm.realm}"))
    assert host.counters.auth_failures == 1


def test_a_ticket_for_another_host_is_refused(
    realm: Kdc, sim: SimServerThread, host: HostEndpoint, tmp_path: Path
) -> None:
    with kerberos_host(realm, sim, tmp_path) as other:
        # the client asks the KDC for the other host's SPN, and shows the ticket to this one
        with pytest.raises(AuthenticationError):
            whoami(client(realm, host, negotiate_hostname_override=other.service_host))
        assert host.counters.auth_failures == 1
        whoami(client(realm, other))  # the ticket is good for the host it names


def test_a_wrong_password_is_refused_by_the_kdc(realm: Kdc, host: HostEndpoint) -> None:
    with pytest.raises((SpnegoError, Krb5Error)):
        whoami(client(realm, host, password="Wrong-Passw0rd"))
    assert host.counters.get("Create").requests == 0


async def test_the_source_waits_auth_backoff_after_a_wrong_kerberos_password(
    realm: Kdc, host: HostEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The KDC refuses the password (a 401 never comes): still an authentication failure."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    args = source_args(realm, host, password="Wrong-Passw0rd", auth_backoff=3600)
    task = asyncio.create_task(run(queue, args))
    try:
        await async_wait_until(
            lambda: "authentication failed" in caplog.text or "negotiate error" in caplog.text,
            30,
            "the refused logon",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert "negotiate error" in caplog.text
    assert "Wrong-Passw0rd" not in caplog.text


def source_args(realm: Kdc, host: HostEndpoint, **more: Any) -> dict[str, Any]:
    return {
        "hosts": [
            {
                "name": host.name,
                "address": host.address,
                "port": host.port,
                "negotiate_hostname_override": host.service_host,
            }
        ],
        "username": f"ansible@{realm.realm}",
        "password": USER_PASSWORD,
        "auth": "kerberos",
        "protocol": "http",
        "interval": 0.3,
        "read_timeout": 4,
        "operation_timeout": 2,
        **more,
    }


async def test_the_source_over_kerberos(
    realm: Kdc, host: HostEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events: list[dict[str, Any]] = []
    queue: asyncio.Queue[Any] = asyncio.Queue()
    args = source_args(realm, host)
    task = asyncio.create_task(run(queue, args))
    try:
        sim_host: SimHost = host.host
        ok = sim_host.start_job("finished", 0.3)
        bad = sim_host.start_job("failed", 0.3, rc=4)

        def drained() -> bool:
            while not queue.empty():
                events.append(queue.get_nowait())
            return len(events) >= 2

        await async_wait_until(drained, 30, "two outcomes")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert {e["async_job"]["jid"]: e["async_job"]["status"] for e in events} == {
        ok: "finished",
        bad: "failed",
    }
    assert "poll failed" not in caplog.text
    keys = realm.service_keys()
    assert keys, "the keytab holds the hosts' keys"
    secrets: dict[str, str | bytes] = {"the user's password": USER_PASSWORD}
    secrets.update({f"service key {i}": key for i, key in enumerate(keys)})
    assert_not_shown([caplog.text, repr(events)], secrets)


def aio_settings(realm: Kdc, ep: HostEndpoint, sim: SimServerThread, **more: Any) -> HostSettings:
    values: dict[str, Any] = {
        "name": ep.name,
        "address": ep.address,
        "port": ep.port,
        "protocol": "https" if ep.https else "http",
        "username": f"ansible@{realm.realm}",
        "password": Secret(USER_PASSWORD),
        "auth": "kerberos",
        "cert_validation": str(sim.ca_bundle),
        "negotiate_hostname_override": ep.service_host,
        "read_timeout": 5.0,
        "operation_timeout": 2.0,
        "no_proxy": True,
        **more,
    }
    return HostSettings(**values)


@pytest.mark.parametrize("https", [False, True], ids=["http-encrypted", "https-bound"])
@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])
async def test_the_asyncio_client_over_kerberos(
    realm: Kdc,
    sim: SimServerThread,
    tmp_path: Path,
    https: bool,
    auth: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The asyncio client's channels log on with a service ticket: sealed over HTTP, with the
    channel binding over HTTPS."""
    caplog.set_level(logging.DEBUG)
    http = HttpClient()
    with kerberos_host(realm, sim, tmp_path, https=https) as ep:
        transport = AioPsrpTransport(aio_settings(realm, ep, sim, auth=auth), 10.0, http)
        try:
            sim_host: SimHost = ep.host
            jid = sim_host.start_job("finished", 0.05)
            await async_wait_until(sim_host.jobs[jid].ended.is_set, 10, "the job's end")
            snapshot = await transport.poll(PollRequest(r"%USERPROFILE%\.ansible_async"))
        finally:
            await transport.close()
            await http.close()
        assert [f.name for f in snapshot.changed] == [jid]
        assert ep.counters.auth_failures == 0
    assert "Kerberos" in caplog.text or "kerberos" in caplog.text
    assert_not_shown([caplog.text], {"the user's password": USER_PASSWORD})


async def test_the_asyncio_client_tells_a_password_the_kdc_refused_as_pypsrp(
    realm: Kdc, sim: SimServerThread, host: HostEndpoint
) -> None:
    http = HttpClient()
    settings = aio_settings(realm, host, sim, password=Secret("Wrong-Passw0rd"))
    transport = AioPsrpTransport(settings, 10.0, http)
    try:
        with pytest.raises(AuthenticationFailed, match=r"negotiate error") as failed:
            await transport.poll(PollRequest(r"%USERPROFILE%\.ansible_async"))
    finally:
        await transport.close()
        await http.close()
    assert "Wrong-Passw0rd" not in str(failed.value)
    assert host.counters.auth_failures == 0  # refused by the KDC: nothing reached the host
