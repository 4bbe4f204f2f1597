"""Hosts from an Ansible inventory: read, limited and templated by ansible-core itself."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.config import ConfigError, SourceConfig, parse_args
from winasync_eda.inventory import load_hosts
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings

from tests.paths import REPO

DATA = Path(__file__).resolve().parent.parent / "data" / "inventories"
INI = str(DATA / "ini" / "hosts.ini")
YAML = str(DATA / "yaml" / "inventory.yml")
PASSWORD = "Inv3ntory-Pa55word!"


@pytest.fixture(autouse=True)
def _password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINASYNC_TEST_PASSWORD", PASSWORD)


def by_name(config: SourceConfig) -> dict[str, HostSettings]:
    return {host.name: host for host in config.hosts}


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def write_w1(path: Path, variables: str) -> str:
    """A YAML inventory of one host, ``w1``, with ``variables`` (YAML, one a line)."""
    return write(
        path, "all:\n  hosts:\n    w1:\n" + textwrap.indent(textwrap.dedent(variables), " " * 6)
    )


def error_of(args: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_args(args)
    return str(info.value)


# --- INI with group_vars and host_vars ----------------------------------------------------


def test_ini_with_group_vars_host_vars_and_env_lookup() -> None:
    hosts = by_name(parse_args({"inventory": INI, "limit": "windows"}))
    assert list(hosts) == ["win01", "win02", "win03"]

    win01 = hosts["win01"]
    assert win01.connection == "psrp"
    assert win01.address == "192.0.2.11"
    assert win01.username == "ansible"
    # group_vars' "{{ lookup('env', ...) }}" was templated by ansible
    assert win01.password == Secret(PASSWORD)
    assert win01.cert_validation is False  # ansible_psrp_cert_validation: ignore
    assert (win01.port, win01.protocol, win01.auth) == (None, "https", "negotiate")

    win02 = hosts["win02"]
    # ansible's psrp rule: port 5985 and no protocol means http
    assert (win02.port, win02.protocol, win02.auth) == (5985, "http", "ntlm")
    assert win02.encryption == "auto"

    win03 = hosts["win03"]
    assert win03.address == "win03"  # no ansible_host: the inventory name
    assert (win03.protocol, win03.auth, win03.encryption) == ("http", "basic", "never")
    assert (win03.read_timeout, win03.operation_timeout) == (45.0, 30.0)


def test_ini_local_host_and_limit_exclusion() -> None:
    hosts = by_name(parse_args({"inventory": INI, "limit": "all:!linux"}))
    assert set(hosts) == {"win01", "win02", "win03", "localhost"}
    local = hosts["localhost"]
    assert local.connection == "local"
    assert local.async_dir == "~/.ansible_async"
    assert local.password is None


def test_unsupported_connection_names_host_and_connection() -> None:
    message = error_of({"inventory": INI})
    assert message.startswith(
        "async_jobs: inventory host 'lin01': ansible_connection 'ssh' is not supported"
    )
    assert "limit" in message


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("win01", ["win01"]),
        ("win01,win03", ["win01", "win03"]),
        ("win01:win02", ["win01", "win02"]),
        ("windows:&dc", ["win03"]),
        ("windows:!dc", ["win01", "win02"]),
        ("windows[0:1]", ["win01", "win02"]),
        ("~win0[23]", ["win02", "win03"]),
        ("windows[0]", ["win01"]),
        ("win*", ["win01", "win02", "win03"]),
    ],
)
def test_limit_patterns_as_ansible(limit: str, expected: list[str]) -> None:
    config = parse_args({"inventory": INI, "limit": limit})
    assert sorted(host.name for host in config.hosts) == expected


def test_limit_from_file(tmp_path: Path) -> None:
    retry = write(tmp_path / "hosts.retry", "win02\nwin03\n")
    config = parse_args({"inventory": INI, "limit": f"@{retry}"})
    assert [host.name for host in config.hosts] == ["win02", "win03"]


def test_limit_matching_nothing_names_limit() -> None:
    message = error_of({"inventory": INI, "limit": "nosuchhost"})
    assert message.startswith("async_jobs: limit: ")
    assert "nosuchhost" in message


def test_limit_file_missing_names_limit(tmp_path: Path) -> None:
    message = error_of({"inventory": INI, "limit": f"@{tmp_path / 'missing.retry'}"})
    assert message.startswith("async_jobs: limit: ")


def test_limit_of_wrong_type() -> None:
    assert error_of({"inventory": INI, "limit": 3}).startswith("async_jobs: limit: ")


# --- YAML with a group_vars directory -----------------------------------------------------


def test_yaml_with_group_vars_directory_and_templating() -> None:
    hosts = by_name(parse_args({"inventory": YAML}))
    assert list(hosts) == ["win11", "win12", "win13", "control01"]

    win11 = hosts["win11"]
    assert win11.address == "win11.example.test"
    # a template referring to another variable, then the env lookup
    assert win11.username == "svc-ansible@EXAMPLE.TEST"
    assert win11.password == Secret(PASSWORD)
    assert win11.async_dir == "C:\\ProgramData\\async"

    win12 = hosts["win12"]  # host's ansible_connection: winrm wins over the group's psrp
    assert win12.connection == "psrp"
    assert win12.auth == "ntlm"  # first of ansible_winrm_transport
    assert (win12.port, win12.protocol) == (5985, "http")
    assert win12.cert_validation is False
    assert win12.path == "wsman"
    assert win12.password == Secret(PASSWORD)

    win13 = hosts["win13"]
    assert (win13.port, win13.protocol) == (5986, "https")  # templated to an int
    assert win13.path == "custom"
    assert win13.async_dir == "D:\\async"  # host var wins over group var

    control = hosts["control01"]
    assert (control.connection, control.async_dir) == ("local", "/var/tmp/async")


def test_inventory_directory_of_sources(tmp_path: Path) -> None:
    write(tmp_path / "inv" / "a.ini", "[win]\nwa ansible_user=u ansible_password=p1\n")
    write(
        tmp_path / "inv" / "b.yml",
        """\
        all:
          hosts:
            wb: {ansible_user: u, ansible_password: p2}
        """,
    )
    config = parse_args({"inventory": str(tmp_path / "inv")})
    assert sorted(host.name for host in config.hosts) == ["wa", "wb"]


def test_unparsable_file_in_a_directory_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="winasync_eda.inventory")
    write(tmp_path / "inv" / "a.ini", "[win]\nwa ansible_user=u ansible_password=p1\n")
    broken = write(tmp_path / "inv" / "broken.yml", "all:\n  hosts:\n    x: y: z\n")
    config = parse_args({"inventory": str(tmp_path / "inv")})
    assert [host.name for host in config.hosts] == ["wa"]
    assert broken in caplog.text


def test_inventory_as_list_of_sources(tmp_path: Path) -> None:
    other = write(tmp_path / "other.ini", "extra ansible_user=u ansible_password=p\n")
    config = parse_args({"inventory": [INI, other], "limit": "win01:extra"})
    assert sorted(host.name for host in config.hosts) == ["extra", "win01"]


# --- precedence: host values win, source-level values fill -------------------------------


def test_inventory_values_win_and_source_values_fill(tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.ini",
        """\
        [win]
        w1 ansible_user=inv-user ansible_port=5999 ansible_psrp_auth=ntlm
        w2
        """,
    )
    args = {
        "inventory": inventory,
        "username": "src-user",
        "password": "src-password",
        "port": 6000,
        "auth": "credssp",
        "cert_validation": False,
        "async_dir": "E:\\jobs",
    }
    hosts = by_name(parse_args(args))
    w1, w2 = hosts["w1"], hosts["w2"]
    assert (w1.username, w1.port, w1.auth) == ("inv-user", 5999, "ntlm")
    assert (w2.username, w2.port, w2.auth) == ("src-user", 6000, "credssp")
    for host in (w1, w2):
        assert host.password == Secret("src-password")
        assert host.cert_validation is False
        assert host.async_dir == "E:\\jobs"


def test_source_connection_default_chooses_the_variables(tmp_path: Path) -> None:
    inventory = write_w1(
        tmp_path / "hosts.yml",
        """\
        ansible_user: u
        ansible_password: p
        ansible_winrm_scheme: http
        ansible_winrm_transport: ntlm
        ansible_psrp_protocol: https
        """,
    )
    as_winrm = parse_args({"inventory": inventory, "connection": "winrm"}).hosts[0]
    assert (as_winrm.connection, as_winrm.protocol, as_winrm.auth) == ("psrp", "http", "ntlm")
    as_psrp = parse_args({"inventory": inventory}).hosts[0]
    assert (as_psrp.protocol, as_psrp.auth) == ("https", "negotiate")


def test_inventory_and_hosts_together_and_duplicates(tmp_path: Path) -> None:
    config = parse_args(
        {
            "inventory": INI,
            "limit": "win01",
            "hosts": [{"name": "extra", "connection": "local"}],
        }
    )
    assert [host.name for host in config.hosts] == ["extra", "win01"]

    message = error_of(
        {"inventory": INI, "limit": "win01", "hosts": [{"name": "win01", "connection": "local"}]}
    )
    assert message.startswith("async_jobs: inventory host 'win01': duplicate host name 'win01'")


# --- variables that map ------------------------------------------------------------------


def test_psrp_variables(tmp_path: Path) -> None:
    ca = write(tmp_path / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    cert = write(tmp_path / "client.pem", "cert\n")
    key = write(tmp_path / "client.key", "key\n")
    inventory = write(
        tmp_path / "hosts.yml",
        f"""\
        all:
          vars:
            ansible_connection: ansible.builtin.psrp
          hosts:
            w1:
              ansible_host: 192.0.2.1
              ansible_psrp_host: 192.0.2.99
              ansible_user: ignored
              ansible_psrp_user: psrp-user
              ansible_winrm_password: pw
              ansible_psrp_port: "5990"
              ansible_psrp_protocol: https
              ansible_psrp_ca_cert: {ca}
              ansible_psrp_connection_timeout: 11
              ansible_psrp_read_timeout: 33
              ansible_psrp_operation_timeout: 22
            w2:
              ansible_psrp_auth: certificate
              ansible_psrp_certificate_pem: {cert}
              ansible_psrp_certificate_key_pem: {key}
              ansible_psrp_cert_validation: ignore
              ansible_psrp_cert_trust_path: {ca}
            w3:
              ansible_psrp_auth: kerberos
              ansible_psrp_cert_validation: validate
              ansible_psrp_cert_trust_path: {ca}
            w4:
              ansible_user: u
              ansible_password: generic
              ansible_psrp_password: specific
        """,
    )
    hosts = by_name(parse_args({"inventory": inventory}))
    w1 = hosts["w1"]
    assert (w1.address, w1.username, w1.port) == ("192.0.2.99", "psrp-user", 5990)
    assert w1.password == Secret("pw")
    assert w1.cert_validation == ca
    assert (w1.connection_timeout, w1.read_timeout, w1.operation_timeout) == (11, 33, 22)
    w2 = hosts["w2"]
    assert (w2.auth, w2.certificate_pem, w2.certificate_key_pem) == ("certificate", cert, key)
    assert w2.cert_validation is False  # "ignore" wins over a CA path, as in ansible
    w3 = hosts["w3"]
    assert (w3.auth, w3.username, w3.password, w3.cert_validation) == ("kerberos", None, None, ca)
    assert hosts["w4"].password == Secret("specific")


def test_winrm_variables(tmp_path: Path) -> None:
    ca = write(tmp_path / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    inventory = write(
        tmp_path / "hosts.yml",
        f"""\
        all:
          vars:
            ansible_connection: winrm
          hosts:
            w1:
              ansible_winrm_host: 192.0.2.5
              ansible_winrm_user: wuser
              ansible_winrm_pass: wpass
              ansible_winrm_port: 5986
              ansible_winrm_transport: "credssp, ntlm"
              ansible_winrm_ca_trust_path: {ca}
              ansible_winrm_server_cert_validation: validate
              ansible_winrm_connection_timeout: 12
              ansible_winrm_read_timeout_sec: 40
              ansible_winrm_operation_timeout_sec: 35
            w2:
              ansible_user: u
              ansible_password: p
              ansible_port: 5985
              ansible_winrm_transport: plaintext
            w3:
              ansible_user: u
              ansible_password: p
              ansible_winrm_transport: [ssl]
        """,
    )
    hosts = by_name(parse_args({"inventory": inventory}))
    w1 = hosts["w1"]
    assert (w1.address, w1.username, w1.port, w1.auth) == ("192.0.2.5", "wuser", 5986, "credssp")
    assert w1.password == Secret("wpass")
    assert w1.cert_validation == ca
    assert (w1.connection_timeout, w1.read_timeout, w1.operation_timeout) == (12, 40, 35)
    # pywinrm's plaintext transport is basic over http, asked for: no message encryption
    w2 = hosts["w2"]
    assert (w2.protocol, w2.auth, w2.encryption) == ("http", "basic", "never")
    w3 = hosts["w3"]  # ssl: basic over https
    assert (w3.protocol, w3.auth, w3.encryption) == ("https", "basic", "auto")


def test_psrp_message_encryption_never_allows_basic_on_port_5985(tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.ini",
        """\
        w1 ansible_user=u ansible_password=p ansible_port=5985 ansible_psrp_auth=basic
        w2 ansible_user=u ansible_password=p ansible_port=5985 ansible_psrp_auth=basic ansible_psrp_message_encryption=never
        """,
    )
    message = error_of({"inventory": inventory, "limit": "w1"})
    assert message.startswith("async_jobs: inventory host 'w1': basic auth over http")
    w2 = parse_args({"inventory": inventory, "limit": "w2"}).hosts[0]
    assert (w2.protocol, w2.auth, w2.encryption) == ("http", "basic", "never")


def test_bad_inventory_value_names_host_and_variable(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "w1 ansible_port=port ansible_user=u\n")
    message = error_of({"inventory": inventory, "password": "x"})
    assert message.startswith("async_jobs: inventory host 'w1': ansible_port: ")

    inventory = write(tmp_path / "auth.ini", "w1 ansible_psrp_auth=foo\n")
    message = error_of({"inventory": inventory})
    assert message.startswith("async_jobs: inventory host 'w1': ansible_psrp_auth: unknown auth")

    inventory = write(tmp_path / "ca.ini", "w1 ansible_psrp_ca_cert=/no/such/ca.pem\n")
    message = error_of({"inventory": inventory, "username": "u", "password": "p"})
    assert message.startswith("async_jobs: inventory host 'w1': ansible_psrp_ca_cert: CA bundle")


def test_missing_credentials_name_the_inventory_variable(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "w1 ansible_user=u\n")
    message = error_of({"inventory": inventory})
    assert message.startswith("async_jobs: inventory host 'w1': auth 'negotiate' needs a password")
    assert "ansible_password" in message

    inventory = write(tmp_path / "nouser.ini", "w1 ansible_password=p\n")
    assert "needs a username" in error_of({"inventory": inventory})


def test_unset_env_lookup_reads_as_missing_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WINASYNC_TEST_PASSWORD")
    message = error_of({"inventory": INI, "limit": "win01"})
    assert message.startswith(
        "async_jobs: inventory host 'win01': auth 'negotiate' needs a password"
    )


def test_template_error_names_host_and_variable(tmp_path: Path) -> None:
    inventory = write_w1(
        tmp_path / "hosts.yml",
        """\
        ansible_user: "{{ no_such_variable }}"
        """,
    )
    message = error_of({"inventory": inventory})
    assert message.startswith("async_jobs: inventory host 'w1': ansible_user: cannot be templated")
    assert "no_such_variable" in message


# --- unreadable / unparsable ---------------------------------------------------------------


def test_missing_inventory_names_inventory(tmp_path: Path) -> None:
    message = error_of({"inventory": str(tmp_path / "nope.ini")})
    assert message.startswith("async_jobs: inventory: ")
    assert "does not exist" in message


def test_unreadable_inventory_names_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = write(tmp_path / "hosts.ini", "w1\n")
    # root reads any file, so stand in for the permission check
    monkeypatch.setattr("winasync_eda.inventory.os.access", lambda path, mode: False)
    message = error_of({"inventory": inventory})
    assert message.startswith("async_jobs: inventory: ")
    assert "not readable" in message


def test_unparsable_inventory_names_inventory_without_content(tmp_path: Path) -> None:
    inventory = write_w1(
        tmp_path / "broken.yml",
        f"""\
        ansible_password: {PASSWORD}: oops
        """,
    )
    message = error_of({"inventory": inventory})
    assert message.startswith("async_jobs: inventory: ansible cannot parse")
    assert PASSWORD not in message


def test_empty_inventory(tmp_path: Path) -> None:
    inventory = write(tmp_path / "empty.ini", "# nothing\n")
    assert error_of({"inventory": inventory}) == "async_jobs: inventory: has no hosts"


def test_inventory_of_wrong_type() -> None:
    assert error_of({"inventory": 42}).startswith("async_jobs: inventory: ")
    assert error_of({"inventory": []}).startswith("async_jobs: inventory: ")


# --- secrets -------------------------------------------------------------------------------


def test_inventory_password_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    literal = "L1teral-Inventory-Secret"
    cases = [
        # a broken template on the same INI line as a literal password
        f'w1 ansible_password={literal} ansible_user="{{{{ undefined_thing }}}}"\n',
        # a password that is itself a broken template (its text is scrubbed)
        f'w1 ansible_user=u ansible_password="{literal}{{{{ nope"\n',
        # a bad value next to the password
        f"w1 ansible_password={literal} ansible_user=u ansible_port=xyz\n",
        f"w1 ansible_password={literal} ansible_user=u ansible_psrp_auth=bogus\n",
        f"w1 ansible_password={literal} ansible_user=u ansible_connection=ssh\n",
        f"w1 ansible_password={literal} ansible_port=5985 ansible_psrp_auth=basic\n",
    ]
    for index, text in enumerate(cases):
        inventory = write(tmp_path / f"case{index}.ini", text)
        with pytest.raises(ConfigError) as info:
            parse_args({"inventory": inventory})
        shown = "".join(traceback.format_exception(info.value))
        assert literal not in shown, text
        assert literal not in repr(info.value)
    assert literal not in caplog.text

    config = parse_args({"inventory": INI, "limit": "windows"})
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config.hosts)
    assert PASSWORD not in caplog.text


def test_load_hosts_reports_where_each_value_came_from() -> None:
    (host,) = load_hosts([INI], "win02", "psrp")
    assert host.name == "win02"
    assert host.settings["port"].var == "ansible_port"
    assert host.settings["port"].value == 5985
    assert host.settings["auth"].var == "ansible_psrp_auth"
    assert isinstance(host.settings["password"].value, Secret)
    assert "message_encryption" not in host.settings


# --- process-wide ansible state: run in a fresh interpreter --------------------------------


def run_fresh(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """ansible's vault context and collection loader are set once per process."""
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "extensions" / "eda"), str(REPO)])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_vault_encrypted_password_with_configured_vault_password_file(tmp_path: Path) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(b"vault-pass"))])
    encrypted = vault.encrypt("Vaulted-Secret-1").decode()
    lines = "\n".join("        " + line for line in encrypted.splitlines())
    inventory = write(
        tmp_path / "hosts.yml",
        "all:\n  hosts:\n    w1:\n      ansible_user: u\n      ansible_password: !vault |\n"
        + lines
        + "\n",
    )
    password_file = write(tmp_path / "vault.txt", "vault-pass\n")
    result = run_fresh(
        f"""
        from winasync_eda.config import parse_args
        host = parse_args({{"inventory": {inventory!r}}}).hosts[0]
        print("OK" if host.password.reveal() == "Vaulted-Secret-1" else "WRONG")
        """,
        {"ANSIBLE_VAULT_PASSWORD_FILE": password_file},
    )
    assert result.stdout.strip() == "OK", result.stderr
    assert "Vaulted-Secret-1" not in result.stderr


def test_lookup_from_a_collection(tmp_path: Path) -> None:
    plugin = tmp_path / "ansible_collections" / "testns" / "creds" / "plugins" / "lookup"
    write(tmp_path / "ansible_collections" / "testns" / "creds" / "galaxy.yml", "x: 1\n")
    write(
        plugin / "vault_pw.py",
        """\
        from ansible.plugins.lookup import LookupBase

        class LookupModule(LookupBase):
            def run(self, terms, variables=None, **kwargs):
                return ["from-collection-" + term for term in terms]
        """,
    )
    inventory = write_w1(
        tmp_path / "hosts.yml",
        """\
        ansible_user: u
        ansible_password: "{{ lookup('testns.creds.vault_pw', 'w1') }}"
        """,
    )
    result = run_fresh(
        f"""
        from winasync_eda.config import parse_args
        host = parse_args({{"inventory": {inventory!r}}}).hosts[0]
        print(host.password.reveal())
        """,
        {"ANSIBLE_COLLECTIONS_PATH": str(tmp_path)},
    )
    assert result.stdout.strip() == "from-collection-w1", result.stderr
