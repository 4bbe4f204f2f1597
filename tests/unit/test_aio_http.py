"""The asyncio client's HTTP side without a network: which hosts it takes, the URL, the auth
header, TLS validation from ``cert_validation``, and the proxy rules requests (pypsrp) follows."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.transports.aio_http import CERTIFICATE_AUTH, HttpClient, supports

from tests.unit.fakes import PASSWORD, settings
from winsim.tls import CertificateAuthority


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"auth": "basic", "protocol": "https"}, None),
        ({"auth": "basic", "protocol": "http", "encryption": "never"}, None),
        ({"auth": "ntlm", "no_proxy": True}, None),
        ({"auth": "negotiate", "encryption": "always", "no_proxy": True}, None),
        ({"auth": "negotiate", "protocol": "https", "no_proxy": True}, None),
        ({"auth": "kerberos", "no_proxy": True}, None),
        # a Negotiate channel connects straight to the host
        ({"auth": "negotiate", "proxy": "http://proxy:3128"}, "auth 'negotiate' through a proxy"),
        ({"auth": "credssp"}, "auth 'credssp'"),
    ],
)
def test_supports_every_auth_but_credssp(changes: dict[str, Any], refused: str | None) -> None:
    assert supports(settings(**changes)) == refused


def test_basic_auth_header_url_and_validation_on_by_default() -> None:
    endpoint = HttpClient().endpoint(settings(auth="basic", port=5986, no_proxy=True))
    assert endpoint.url == "https://win01.example.com:5986/wsman"
    token = endpoint.headers["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(token).decode() == f"ansible:{PASSWORD}"
    assert isinstance(endpoint.ssl, ssl.SSLContext)
    assert endpoint.ssl.verify_mode == ssl.CERT_REQUIRED
    assert endpoint.ssl.check_hostname
    # the headers hold the password: never in the endpoint's repr
    assert PASSWORD not in repr(endpoint) and token not in repr(endpoint)


def test_plain_http_has_no_tls_and_an_ipv6_address_is_bracketed() -> None:
    endpoint = HttpClient().endpoint(
        settings(
            auth="basic", protocol="http", encryption="never", address="::1", port=5985, path="x"
        )
    )
    assert endpoint.url == "http://[::1]:5985/x"
    assert endpoint.ssl is False


def test_validation_off_and_a_ca_file_and_one_context_per_setting(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    bundle = tmp_path / "ca.pem"
    ca.write_bundle(bundle)
    client = HttpClient()
    off = client.endpoint(settings(auth="basic", cert_validation=False)).ssl
    assert isinstance(off, ssl.SSLContext) and off.verify_mode == ssl.CERT_NONE
    first = client.endpoint(settings(auth="basic", cert_validation=str(bundle))).ssl
    second = client.endpoint(settings(auth="basic", cert_validation=str(bundle), name="w2")).ssl
    assert first is second  # 2,000 hosts, one context
    assert isinstance(first, ssl.SSLContext) and first.verify_mode == ssl.CERT_REQUIRED
    assert len(first.get_ca_certs()) == 1


def test_certificate_auth_sends_the_mutual_profile_and_loads_the_key(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_pem, key_pem = ca.issue(("ansible",))
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    endpoint = HttpClient().endpoint(
        settings(
            auth="certificate",
            username=None,
            password=None,
            certificate_pem=str(cert),
            certificate_key_pem=str(key),
        )
    )
    assert endpoint.headers["Authorization"] == CERTIFICATE_AUTH
    assert isinstance(endpoint.ssl, ssl.SSLContext)


def test_proxies_as_requests_takes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "skip.example")
    client = HttpClient()
    assert client.endpoint(settings(auth="basic")).proxy == "http://proxy.example:3128"
    assert client.endpoint(settings(auth="basic", no_proxy=True)).proxy is None
    assert client.endpoint(settings(auth="basic", address="skip.example")).proxy is None
    own = settings(auth="basic", proxy="http://own.example:8080")
    assert client.endpoint(own).proxy == "http://own.example:8080"
