"""Auth settings the simulated host's Negotiate and Kerberos need from the source: the SPN host
name override (inventory and source argument) and when pypsrp seals messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from winasync_eda.config import parse_args
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
from winasync_eda.transports.base import AuthenticationFailed
from winasync_eda.transports.psrp import _classify


def test_negotiate_hostname_override_from_the_inventory(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  hosts:\n    win01:\n      ansible_host: 127.0.0.1\n"
        "      ansible_user: ansible@WINSIM.TEST\n      ansible_psrp_auth: kerberos\n"
        "      ansible_psrp_protocol: http\n"
        "      ansible_psrp_negotiate_hostname_override: win01.winsim.test\n",
        encoding="utf-8",
    )
    (host,) = parse_args({"inventory": str(inventory)}).hosts
    assert (host.auth, host.negotiate_hostname_override) == ("kerberos", "win01.winsim.test")


def test_negotiate_hostname_override_as_a_source_argument() -> None:
    (host,) = parse_args(
        {
            "hosts": [{"name": "win01", "address": "127.0.0.1"}],
            "auth": "kerberos",
            "negotiate_hostname_override": "win01.winsim.test",
        }
    ).hosts
    assert host.negotiate_hostname_override == "win01.winsim.test"


def test_wsman_gets_the_override_only_for_negotiate_kinds() -> None:
    kerberos = HostSettings(
        "win01",
        address="127.0.0.1",
        auth="kerberos",
        protocol="http",
        username="u@WINSIM.TEST",
        password=Secret("p"),
        negotiate_hostname_override="win01.winsim.test",
    )
    assert kerberos.wsman_kwargs()["negotiate_hostname_override"] == "win01.winsim.test"
    basic = HostSettings(
        "win01",
        address="127.0.0.1",
        auth="basic",
        username="u",
        password=Secret("p"),
        negotiate_hostname_override="win01.winsim.test",
    )
    assert "negotiate_hostname_override" not in basic.wsman_kwargs()


def test_which_settings_seal_messages() -> None:
    login: dict[str, Any] = {"username": "u", "password": Secret("p")}
    assert HostSettings("h", protocol="http", auth="negotiate", **login).seals_messages
    assert not HostSettings("h", protocol="https", auth="negotiate", **login).seals_messages
    ntlm = HostSettings("h", protocol="https", auth="ntlm", encryption="always", **login)
    assert ntlm.seals_messages
    basic = HostSettings(
        "h",
        protocol="http",
        auth="basic",
        username="u",
        password=Secret("p"),
        encryption="never",
    )
    assert not basic.seals_messages


def test_a_kerberos_refusal_is_an_authentication_failure() -> None:
    """A wrong password never reaches the host with Kerberos: the KDC refuses it, and the
    error comes from krb5 or gssapi, not as a 401. It must still get auth_backoff."""
    for module in ("krb5._exceptions", "gssapi.raw.misc", "spnego.exceptions"):
        error_type = type("Refused", (Exception,), {"__module__": module})
        kind, cls = _classify(error_type("Preauthentication failed"))
        assert (kind, cls) == ("negotiate error", AuthenticationFailed), module
