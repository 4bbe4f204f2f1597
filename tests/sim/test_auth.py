"""Authentication as WinRM does it, against the real pypsrp client: Negotiate (NTLM) with message
encryption over HTTP and channel binding over HTTPS, Basic, client certificates; per-host users;
refusals (wrong password, unencrypted body, missing or wrong binding); HTTP.sys's idle close."""

from __future__ import annotations

import base64
import concurrent.futures
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import spnego
from pypsrp.exceptions import AuthenticationError, WinRMTransportError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan
from spnego.channel_bindings import GssChannelBindings

from harness.sim_thread import SimServerThread
from tests.waiting import wait_until
from winsim.api import PipelineRequest, PipelineResult
from winsim.auth.accounts import Accounts
from winsim.auth.bindings import end_point_data
from winsim.faults import FaultKind
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim

USER = "ansible"
PASSWORD = "Auth-Passw0rd-never-logged"
FAST: dict[str, Any] = {"operation_timeout": 2, "read_timeout": 5, "connection_timeout": 5}
SOAP = b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>'


async def echo(host: Any, request: PipelineRequest) -> PipelineResult:
    return PipelineResult(output=[f"ran on {host}"])


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(echo, idle_close_s=1.0) as server:
        yield server


_names = iter(range(10_000))


@pytest.fixture
def add(sim: SimServerThread) -> Iterator[Any]:
    added: list[str] = []

    def add_host(auth: str = "negotiate", https: bool = False, **options: Any) -> HostEndpoint:
        name = f"win{next(_names):04d}"
        options.setdefault("username", USER)
        options.setdefault("password", PASSWORD)
        ep = sim.add_host(name, name, https=https, auth=auth, **options)
        added.append(name)
        return ep

    yield add_host
    for name in added:
        sim.remove_host(name)


def wsman(sim: SimServerThread, ep: HostEndpoint, auth: str, **kwargs: Any) -> WSMan:
    options: dict[str, Any] = {
        "port": ep.port,
        "username": USER,
        "password": PASSWORD,
        "auth": auth,
        "ssl": ep.https,
        "cert_validation": str(sim.ca_bundle) if ep.https else False,
        "no_proxy": True,
        **FAST,
    }
    options.update(kwargs)
    return WSMan(ep.address, **options)


def run_once(client: WSMan) -> list[Any]:
    with RunspacePool(client) as pool:
        ps = PowerShell(pool)
        ps.add_script("whoami")
        return list(ps.invoke())


@pytest.mark.parametrize("https", [False, True], ids=["http-encrypted", "https-bound"])
@pytest.mark.parametrize("auth", ["negotiate", "ntlm"])
def test_negotiate_runs_pipelines(sim: SimServerThread, add: Any, auth: str, https: bool) -> None:
    ep = add(https=https)
    assert run_once(wsman(sim, ep, auth)) == [f"ran on {ep.name}"]
    by_action = ep.counters.by_action()
    # one logon for the connection: negotiate, challenge, authenticate (over HTTPS the first
    # leg is the Create itself, refused until the client logs on)
    assert by_action["Auth"].requests == (1 if https else 3)
    assert by_action["Create"].requests == (2 if https else 1)
    assert ep.counters.auth_failures == 0


def test_http_bodies_are_sealed_both_ways(sim: SimServerThread, add: Any) -> None:
    ep = add()
    client = wsman(sim, ep, "negotiate")
    run_once(client)
    transport = client.transport
    assert transport.wrap_required and transport.encryption is not None
    # what crossed the wire was sealed: no SOAP text in the request bodies pypsrp sent
    assert ep.counters.get("Create").bytes_in > 0


def test_unencrypted_body_over_http_is_refused(sim: SimServerThread, add: Any) -> None:
    ep = add()
    # pypsrp sends plaintext SOAP after an NTLM logon when told never to encrypt
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, ep, "ntlm", encryption="never"))
    assert ep.open_shells == 0


def test_basic_is_refused_by_a_negotiate_host(sim: SimServerThread, add: Any) -> None:
    ep = add(https=True)
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, ep, "basic"))


@pytest.mark.parametrize(
    "auth", ["negotiate", "ntlm", "basic", "certificate"], ids=lambda a: f"client-{a}"
)
def test_a_wrong_password_is_a_401(sim: SimServerThread, add: Any, auth: str) -> None:
    host_auth = {"ntlm": "negotiate"}.get(auth, auth)
    ep = add(auth=host_auth, https=True)
    extra: dict[str, Any] = {"password": "Wrong-Passw0rd"}
    if auth == "certificate":
        # a certificate from the host's CA, but for a user the host does not map
        extra = certificate_files(sim, ep, "stranger@localhost")
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, ep, auth, **extra))
    assert ep.counters.auth_failures >= 1
    assert ep.open_shells == 0


def test_a_user_of_one_host_is_not_let_into_another(sim: SimServerThread, add: Any) -> None:
    first = add(users={"alice": "Alice-Passw0rd"})
    second = add(password="Other-Passw0rd")
    assert run_once(wsman(sim, first, "ntlm", username="alice", password="Alice-Passw0rd"))
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, second, "ntlm", username="alice", password="Alice-Passw0rd"))
    # the same name with the other host's password
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, second, "ntlm"))
    assert run_once(wsman(sim, second, "ntlm", password="Other-Passw0rd"))
    # MACHINE\user names the same local user; another machine's name does not
    assert run_once(
        wsman(sim, first, "ntlm", username=f"{first.name}\\alice", password="Alice-Passw0rd")
    )
    with pytest.raises(AuthenticationError):
        run_once(
            wsman(sim, first, "ntlm", username=f"{second.name}\\alice", password="Alice-Passw0rd")
        )


def _handshake(ep: HostEndpoint, ca: Path, bindings: GssChannelBindings | None) -> int:
    """An NTLM logon with these channel bindings over a raw HTTPS session; the final status."""
    session = requests.Session()
    session.verify = str(ca)
    session.trust_env = False
    client = spnego.client(USER, PASSWORD, protocol="ntlm", channel_bindings=bindings)
    token = client.step()
    while True:
        assert token is not None
        response = session.post(
            ep.url,
            data=SOAP,
            headers={
                "Authorization": "Negotiate " + base64.b64encode(token).decode(),
                "Content-Type": "application/soap+xml;charset=UTF-8",
            },
        )
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.startswith("Negotiate "):
            return response.status_code
        token = client.step(base64.b64decode(challenge.split(" ", 1)[1]))


def test_https_checks_the_channel_binding(sim: SimServerThread, add: Any) -> None:
    ep = add(https=True)
    served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((ep.address, ep.port)))
    right = GssChannelBindings(application_data=end_point_data(served))
    wrong = GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x01" * 32)
    # logged on: the empty envelope then gets the WS-Management fault of a bad request
    assert _handshake(ep, sim.ca_bundle, right) == 500
    assert ep.counters.auth_failures == 0
    assert _handshake(ep, sim.ca_bundle, wrong) == 401
    assert _handshake(ep, sim.ca_bundle, None) == 401
    # pypsrp told not to send the binding is refused too (CbtHardeningLevel Strict)
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, ep, "ntlm", negotiate_send_cbt=False))
    assert ep.open_shells == 0


def certificate_files(sim: SimServerThread, ep: HostEndpoint, upn: str) -> dict[str, str]:
    cert_pem, key_pem = sim.server.ca.issue_client(upn)
    directory = Path(sim.ca_bundle).parent
    cert_file = directory / f"{ep.name}-{upn}.pem"
    key_file = directory / f"{ep.name}-{upn}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return {"certificate_pem": str(cert_file), "certificate_key_pem": str(key_file)}


def test_client_certificate_maps_to_a_user_of_that_host(sim: SimServerThread, add: Any) -> None:
    ep = add(auth="certificate", https=True)
    other = add(auth="certificate", https=True)
    ep.accounts.map_certificate("ansible@localhost", USER)
    files = certificate_files(sim, ep, "ansible@localhost")
    assert run_once(wsman(sim, ep, "certificate", **files)) == [f"ran on {ep.name}"]
    # the same certificate is not mapped on another host
    with pytest.raises(AuthenticationError):
        run_once(wsman(sim, other, "certificate", **files))


def test_certificate_without_client_authentication_usage_is_refused(
    sim: SimServerThread, add: Any, tmp_path: Path
) -> None:
    ep = add(auth="certificate", https=True)
    ep.accounts.map_certificate("ansible@localhost", USER)
    cert_pem, key_pem = sim.server.ca.issue_client("ansible@localhost", client_auth=False)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "c.key").write_bytes(key_pem)
    files = {
        "certificate_pem": str(tmp_path / "c.pem"),
        "certificate_key_pem": str(tmp_path / "c.key"),
    }
    # OpenSSL refuses the handshake (the usage is checked with the chain), or the host a 401
    with pytest.raises((AuthenticationError, requests.exceptions.ConnectionError)):
        run_once(wsman(sim, ep, "certificate", **files))
    assert ep.open_shells == 0


def test_certificate_from_another_ca_is_refused(
    sim: SimServerThread, add: Any, tmp_path: Path
) -> None:
    from winsim.tls import CertificateAuthority

    ep = add(auth="certificate", https=True)
    ep.accounts.map_certificate("ansible@localhost", USER)
    cert_pem, key_pem = CertificateAuthority().issue_client("ansible@localhost")
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "c.key").write_bytes(key_pem)
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        run_once(
            wsman(
                sim,
                ep,
                "certificate",
                certificate_pem=str(tmp_path / "c.pem"),
                certificate_key_pem=str(tmp_path / "c.key"),
            )
        )


def test_idle_connection_is_closed_and_pypsrp_cannot_reauthenticate(
    sim: SimServerThread, add: Any
) -> None:
    """The limit the source works around: after the server closed the connection, pypsrp logs
    on again but sends the body sealed for the old context, and the request fails."""
    ep = add()
    client = wsman(sim, ep, "ntlm")
    pool = RunspacePool(client)
    pool.open()
    wait_until(
        lambda: sim.server.open_connections(ep.name) == 0, 10, "the idle connection to close"
    )
    ps = PowerShell(pool)
    ps.add_script("whoami")
    with pytest.raises(WinRMTransportError) as info:
        ps.invoke()
    assert info.value.code == 500


def test_close_fault_ends_the_keep_alive_connection(sim: SimServerThread, add: Any) -> None:
    ep = add()
    client = wsman(sim, ep, "ntlm")
    pool = RunspacePool(client)
    pool.open()
    ep.faults.inject(FaultKind.CLOSE, count=1)
    ps = PowerShell(pool)
    ps.add_script("whoami")
    with pytest.raises(WinRMTransportError):
        ps.invoke()  # the Command's reply closed the connection; the Receive after it fails
    assert ep.faults.hits(FaultKind.CLOSE) == 1


def test_accounts_reject_what_the_user_file_cannot_hold() -> None:
    accounts = Accounts()
    with pytest.raises(ValueError, match="password"):
        accounts.add_user("bob", "a:b")
    with pytest.raises(ValueError, match="name"):
        accounts.add_user("DOM\\bob", "x")
    accounts.add_user("Bob", "pw")
    assert accounts.check_password("BOB", "pw")
    assert not accounts.check_password("bob", "PW")
    assert accounts.local_user("bob", "win01") == "bob"
    assert accounts.local_user("WIN01\\bob", "win01") == "bob"
    assert accounts.local_user("OTHER\\bob", "win01") is None
    assert "pw" not in repr(accounts)


def test_many_hosts_on_many_loops_log_on_at_once(sim: SimServerThread, add: Any) -> None:
    """pyspnego reads NTLM users from one process-wide file: hosts of two servers (two event
    loops, two threads) with the same user name and different passwords log clients on at the
    same time, each against its own users only."""
    first = add()
    with SimServerThread(echo) as other_sim:
        second = other_sim.add_host(
            "other", "other", username=USER, password="Second-Passw0rd", auth="negotiate"
        )
        jobs = [(sim, first, PASSWORD), (other_sim, second, "Second-Passw0rd")] * 4
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            results = list(
                pool.map(lambda j: run_once(wsman(j[0], j[1], "ntlm", password=j[2])), jobs)
            )
        assert results == [[f"ran on {first.name}"], ["ran on other"]] * 4
        with pytest.raises(AuthenticationError):
            run_once(wsman(other_sim, second, "ntlm"))  # the first host's password
    assert first.counters.auth_failures == 0


def test_serve_defaults_to_negotiate() -> None:
    from winsim.cli import build_parser

    args = build_parser().parse_args(["serve", "--state", "/tmp/unused"])
    assert (args.auth, args.https, args.idle_close) == ("negotiate", False, 120.0)


@pytest.mark.parametrize(
    "header",
    ["Negotiate " + base64.b64encode(b"\x60\x03garbage").decode(), "Negotiate ###", "NTLM abc"],
    ids=["bad-token", "not-base64", "other-scheme"],
)
def test_a_bad_token_is_a_401_never_a_crash(sim: SimServerThread, add: Any, header: str) -> None:
    ep = add()
    response = requests.post(
        ep.url,
        data=b"",
        headers={"Authorization": header},
        timeout=10,
        proxies={"http": "", "https": ""},
    )
    assert response.status_code == 401
    assert "Negotiate" in response.headers.get("WWW-Authenticate", "")
