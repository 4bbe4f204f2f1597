"""HostSettings: the defaults, the ports, and the rules that refuse a host at start."""

from __future__ import annotations

from typing import Any

import pytest
from winasync_eda.settings import HostSettings, SettingsError
from winasync_eda.transports.psrp import PsrpTransport

from tests.unit.fakes import HOST, PASSWORD, settings


def test_settings_repr_hides_the_password_and_the_proxy() -> None:
    value = settings(proxy=f"http://user:{PASSWORD}@proxy:3128")
    assert PASSWORD not in repr(value)
    assert PASSWORD not in str(value)
    assert "proxy:3128" not in repr(value)
    assert repr(PsrpTransport(value, 60)) == f"PsrpTransport('{HOST}')"


def test_settings_defaults_and_ports() -> None:
    value = settings()
    assert (value.protocol, value.auth, value.encryption, value.path) == (
        "https",
        "negotiate",
        "auto",
        "wsman",
    )
    assert value.cert_validation is True
    assert value.effective_port == 5986
    assert settings(protocol="http").effective_port == 5985
    assert settings(port=15986).effective_port == 15986
    assert (
        settings(cert_validation="/etc/ca.pem").wsman_kwargs()["cert_validation"] == "/etc/ca.pem"
    )


def test_unset_address_protocol_and_async_dir_are_filled_in() -> None:
    psrp = HostSettings(name="h", auth="kerberos")
    assert (psrp.address, psrp.protocol, psrp.async_dir) == (
        "h",
        "https",
        "%USERPROFILE%\\.ansible_async",
    )
    assert HostSettings(name="h", port=5985, auth="kerberos").protocol == "http"
    local = HostSettings(name="me", connection="local")
    assert local.async_dir == "~/.ansible_async"


def test_operation_timeout_goes_to_wsman_in_whole_seconds() -> None:
    assert settings(operation_timeout=20.7).wsman_kwargs()["operation_timeout"] == 20
    assert settings(operation_timeout=0.5, read_timeout=1).wsman_kwargs()["operation_timeout"] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "ftp"},
        {"auth": "digest"},
        {"encryption": "never"},  # https
        {"encryption": "never", "protocol": "http"},  # negotiate
        {"protocol": "http", "auth": "basic"},  # basic over http needs encryption never
        {"auth": "certificate"},  # no certificate files
        {"auth": "basic", "password": None},
        {"auth": "negotiate", "password": None},
        {"auth": "ntlm", "username": None},
        {"read_timeout": 20, "operation_timeout": 20},
        {"port": 70000},
        {"address": ""},
        {"connection": "ssh"},
    ],
)
def test_bad_settings_are_refused_at_construction(changes: dict[str, Any]) -> None:
    with pytest.raises(SettingsError, match=HOST) as info:
        settings(**changes)
    assert PASSWORD not in str(info.value)
    assert "\n" not in str(info.value)


def test_a_refusal_names_the_setting_at_fault() -> None:
    with pytest.raises(SettingsError) as info:
        settings(password=None)
    assert (info.value.key, info.value.problem) == ("password", "auth 'negotiate' needs a password")
    with pytest.raises(SettingsError) as info:
        settings(read_timeout=10)
    assert info.value.key == "read_timeout"
    assert info.value.problem == "read_timeout (10) must be greater than operation_timeout (20)"


def test_kerberos_and_local_hosts_need_no_password() -> None:
    assert settings(auth="kerberos", username=None, password=None).auth == "kerberos"
    assert HostSettings(name="me", connection="local").password is None


def test_never_encrypting_is_allowed_for_basic_over_http_only() -> None:
    value = settings(protocol="http", auth="basic", encryption="never")
    assert value.wsman_kwargs()["encryption"] == "never"
    cert = settings(auth="certificate", certificate_pem="/c.pem", certificate_key_pem="/k.pem")
    assert cert.wsman_kwargs()["certificate_key_pem"] == "/k.pem"


def test_a_transport_refuses_a_deadline_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match=HOST):
        PsrpTransport(settings(), 0)
