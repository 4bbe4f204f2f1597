"""The source's arguments: defaults, per-host precedence, and one clear line per bad argument."""

from __future__ import annotations

import asyncio
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.config import ConfigError, SourceConfig, parse_args
from winasync_eda.model import DEFAULT_EMIT, Status
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings

SECRET = "Sup3r-Secret-Pa55"
BASE: dict[str, Any] = {"hosts": ["win01"], "username": "ansible", "password": SECRET}


def args_with(**changes: Any) -> dict[str, Any]:
    args = dict(BASE)
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return args


def error_of(args: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_args(args)
    return str(info.value)


def only_host(config: SourceConfig) -> HostSettings:
    (host,) = config.hosts
    return host


# --- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_args(BASE)
    assert config.jids is None
    assert config.interval == 15.0
    assert config.jitter == 0.1
    assert config.emit == DEFAULT_EMIT
    assert config.state_file is None
    assert config.redeliver_after is None
    assert config.lost_after is None
    assert config.max_output_bytes == 65536
    assert config.host_events is False
    assert config.feedback is False
    assert config.feedback_queue is None
    assert config.max_concurrency == 32
    assert config.poll_timeout == 60.0
    assert config.backoff_max == 300.0
    assert config.auth_backoff == 900.0

    host = only_host(config)
    assert host == HostSettings(
        name="win01",
        connection="psrp",
        async_dir="%USERPROFILE%\\.ansible_async",
        address="win01",
        port=None,
        protocol="https",
        username="ansible",
        password=Secret(SECRET),
        auth="negotiate",
        cert_validation=True,
        encryption="auto",
        path="wsman",
        connection_timeout=30.0,
        read_timeout=30.0,
        operation_timeout=20.0,
        certificate_pem=None,
        certificate_key_pem=None,
    )


def test_every_source_argument(tmp_path: Path) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    config = parse_args(
        args_with(
            jids=["j687253281342.17218", " j1.2 "],
            interval="2.5",
            jitter=0,
            emit=["running", "FINISHED", "vanished"],
            state_file=str(tmp_path / "state.json"),
            redeliver_after="600",
            lost_after=86400,
            max_output_bytes="4096",
            host_events="yes",
            feedback=True,
            eda_feedback_queue=queue,
            max_concurrency="4",
            poll_timeout=30,
            backoff_max=120.0,
            auth_backoff=0,
        )
    )
    assert config.jids == frozenset({"j687253281342.17218", "j1.2"})
    assert config.interval == 2.5
    assert config.jitter == 0.0
    assert config.emit == frozenset({Status.RUNNING, Status.FINISHED, Status.VANISHED})
    assert config.state_file == tmp_path / "state.json"
    assert (config.redeliver_after, config.lost_after) == (600.0, 86400.0)
    assert config.max_output_bytes == 4096
    assert config.host_events is True
    assert config.feedback is True
    assert config.feedback_queue is queue
    assert config.max_concurrency == 4
    assert (config.poll_timeout, config.backoff_max, config.auth_backoff) == (30, 120, 0)


def test_state_file_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_args(args_with(state_file="~/s.json")).state_file == tmp_path / "s.json"


def test_injected_keys_are_ignored() -> None:
    config = parse_args(args_with(eda_feedback_queue=asyncio.Queue(), eda_something_new=1))
    assert config.feedback is False
    assert config.feedback_queue is None  # feedback is off: the queue is not used


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", True), ("On", True), ("1", True), ("no", False), ("false", False), ("off", False)],
)
def test_ansible_booleans(text: str, expected: bool) -> None:
    assert parse_args(args_with(host_events=text)).host_events is expected


def test_empty_emit_is_fine_with_host_events() -> None:
    assert parse_args(args_with(emit=[], host_events=True)).emit == frozenset()


# --- hosts --------------------------------------------------------------------------------


def test_host_mapping_with_every_key(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    host = only_host(
        parse_args(
            {
                "hosts": [
                    {
                        "name": "web",
                        "address": "192.0.2.7",
                        "port": "5990",
                        "protocol": "HTTPS",
                        "username": "me",
                        "password": SECRET,
                        "auth": "NTLM",
                        "cert_validation": str(ca),
                        "async_dir": "D:\\jobs",
                        "connection": "psrp",
                        "path": "/wsman-custom",
                        "connection_timeout": "5",
                        "read_timeout": 40,
                        "operation_timeout": 35.5,
                    }
                ]
            }
        )
    )
    assert (host.name, host.address, host.port, host.protocol) == (
        "web",
        "192.0.2.7",
        5990,
        "https",
    )
    assert (host.username, host.password, host.auth) == ("me", Secret(SECRET), "ntlm")
    assert host.cert_validation == str(ca)
    assert (host.async_dir, host.path) == ("D:\\jobs", "wsman-custom")
    assert (host.connection_timeout, host.read_timeout, host.operation_timeout) == (5, 40, 35.5)


def test_source_defaults_apply_and_host_values_win() -> None:
    config = parse_args(
        {
            "hosts": ["a", {"name": "b", "username": "b-user", "port": 5999, "auth": "credssp"}],
            "username": "everyone",
            "password": SECRET,
            "auth": "ntlm",
            "port": 6000,
            "cert_validation": "ignore",
            "async_dir": "C:\\async",
            "path": "other",
            "operation_timeout": 5,
        }
    )
    a, b = config.hosts
    assert (a.username, a.port, a.auth) == ("everyone", 6000, "ntlm")
    assert (b.username, b.port, b.auth) == ("b-user", 5999, "credssp")
    for host in (a, b):
        assert host.password == Secret(SECRET)
        assert host.cert_validation is False
        assert (host.async_dir, host.path, host.operation_timeout) == ("C:\\async", "other", 5)


def test_port_and_protocol_follow_ansibles_psrp_rule() -> None:
    def host(**item: Any) -> HostSettings:
        return only_host(parse_args(args_with(hosts=[{"name": "h", **item}])))

    assert (host().port, host().protocol) == (None, "https")
    assert (host(port=5985).port, host(port=5985).protocol) == (5985, "http")
    assert host(port=5986).protocol == "https"
    assert host(port=8080).protocol == "https"
    assert (host(protocol="http").port, host(protocol="http").protocol) == (None, "http")
    assert host(port=5985, protocol="https").protocol == "https"


def test_basic_over_http_only_when_both_asked_for() -> None:
    explicit = only_host(parse_args(args_with(protocol="http", auth="basic")))
    assert (explicit.protocol, explicit.auth, explicit.encryption) == ("http", "basic", "never")

    # the source-level protocol and a per-host auth count as asked for too
    mixed = only_host(
        parse_args(args_with(protocol="http", hosts=[{"name": "h", "auth": "basic"}]))
    )
    assert mixed.encryption == "never"

    over_https = only_host(parse_args(args_with(auth="basic")))
    assert (over_https.protocol, over_https.encryption) == ("https", "auto")

    ntlm_over_http = only_host(parse_args(args_with(protocol="http", auth="ntlm")))
    assert ntlm_over_http.encryption == "auto"

    message = error_of(args_with(port=5985, auth="basic"))
    assert message.startswith("async_jobs: hosts[0] ('win01'): basic auth over http")
    assert "protocol: http" in message


def test_kerberos_needs_no_password() -> None:
    host = only_host(parse_args({"hosts": ["dc01"], "auth": "kerberos"}))
    assert (host.auth, host.username, host.password) == ("kerberos", None, None)


def test_certificate_auth(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    host = only_host(
        parse_args(
            {
                "hosts": ["h"],
                "auth": "certificate",
                "certificate_pem": str(cert),
                "certificate_key_pem": str(key),
            }
        )
    )
    assert (host.auth, host.certificate_pem, host.certificate_key_pem) == (
        "certificate",
        str(cert),
        str(key),
    )
    assert host.password is None

    missing_key = {"hosts": ["h"], "auth": "certificate", "certificate_pem": str(cert)}
    assert "needs certificate_key_pem" in error_of(missing_key)
    gone = {**missing_key, "certificate_key_pem": str(tmp_path / "gone.pem")}
    assert "certificate_key_pem" in error_of(gone)
    assert "does not exist" in error_of(gone)
    over_http = {**gone, "certificate_key_pem": str(key), "protocol": "http"}
    assert "needs protocol https" in error_of(over_http)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("false", False),
        ("yes", True),
        ("ignore", False),
        ("validate", True),
    ],
)
def test_cert_validation_values(value: Any, expected: bool) -> None:
    assert only_host(parse_args(args_with(cert_validation=value))).cert_validation is expected


def test_cert_validation_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ca.pem").write_text("ca")
    host = only_host(parse_args(args_with(cert_validation="~/ca.pem")))
    assert host.cert_validation == str(tmp_path / "ca.pem")
    message = error_of(args_with(cert_validation=str(tmp_path / "missing.pem")))
    assert message.startswith("async_jobs: cert_validation: CA bundle ")
    assert "does not exist" in message


def test_local_connection_needs_no_credentials() -> None:
    host = only_host(parse_args({"hosts": [{"name": "me", "connection": "local"}]}))
    assert (host.connection, host.async_dir, host.address) == ("local", "~/.ansible_async", "me")
    custom = parse_args({"hosts": ["me"], "connection": "local", "async_dir": "/var/tmp/a"})
    assert only_host(custom).async_dir == "/var/tmp/a"


def test_winrm_connection_means_psrp() -> None:
    assert only_host(parse_args(args_with(connection="winrm"))).connection == "psrp"


def test_wsman_path_loses_leading_slash() -> None:
    assert only_host(parse_args(args_with(path="/wsman"))).path == "wsman"


def test_empty_password_counts_as_missing() -> None:
    message = error_of(args_with(password=""))
    assert message.startswith("async_jobs: hosts[0] ('win01'): auth 'negotiate' needs a password")


def test_secret_password_is_accepted() -> None:
    assert only_host(parse_args(args_with(password=Secret(SECRET)))).password == Secret(SECRET)


def test_source_arguments_are_not_templated() -> None:
    template = "{{ lookup('env', 'HOME') }}"
    host = only_host(parse_args(args_with(password=template, username=template)))
    assert host.password == Secret(template)
    assert host.username == template


# --- bad arguments: one line naming the argument, never the password -----------------------


ERROR_CASES: list[tuple[dict[str, Any], str]] = [
    (args_with(intervall=3), "async_jobs: intervall: unknown argument (did you mean 'interval'?)"),
    (args_with(passwd=SECRET), "async_jobs: passwd: unknown argument"),
    (args_with(hosts=None), "async_jobs: hosts: no host to watch"),
    (args_with(hosts=[]), "async_jobs: hosts: no host to watch"),
    (args_with(hosts="win01"), "async_jobs: hosts: must be a list"),
    (args_with(hosts=[3]), "async_jobs: hosts[0]: must be a host name or a mapping"),
    (args_with(hosts=[{"address": "x"}]), "async_jobs: hosts[0]: needs a name"),
    (args_with(hosts=[""]), "async_jobs: hosts[0].name: must be a non-empty string"),
    (
        args_with(hosts=[{"name": "a", "pasword": SECRET}]),
        "async_jobs: hosts[0]: unknown key 'pasword'",
    ),
    (args_with(hosts=["a", "b", "a"]), "async_jobs: hosts[2]: duplicate host name 'a'"),
    (
        args_with(hosts=["a", {"name": "b", "auth": "foo"}]),
        "async_jobs: hosts[1].auth: unknown auth 'foo' (expected one of: basic, certificate, credssp, "
        "kerberos, negotiate, ntlm)",
    ),
    (args_with(auth="foo"), "async_jobs: auth: unknown auth 'foo'"),
    (args_with(protocol="ftp"), "async_jobs: protocol: unknown protocol 'ftp'"),
    (args_with(hosts=[{"name": "a", "protocol": "ftp"}]), "async_jobs: hosts[0].protocol: unknown"),
    (args_with(port="x"), "async_jobs: port: must be an integer from 1 to 65535, got 'x'"),
    (args_with(port=0), "async_jobs: port: must be an integer from 1 to 65535"),
    (args_with(port=70000), "async_jobs: port: must be an integer from 1 to 65535"),
    (args_with(port=True), "async_jobs: port: must be an integer"),
    (args_with(port=5985.5), "async_jobs: port: must be an integer"),
    (
        args_with(hosts=[{"name": "a", "port": "x"}]),
        "async_jobs: hosts[0].port: must be an integer",
    ),
    (args_with(connection="ssh"), "async_jobs: connection: unknown connection 'ssh'"),
    (args_with(username=5), "async_jobs: username: must be a non-empty string"),
    (args_with(password=1234), "async_jobs: password: must be a string, not int (quote it)"),
    (
        args_with(hosts=[{"name": "a", "password": ["x"]}]),
        "async_jobs: hosts[0].password: must be a string",
    ),
    (args_with(password=None), "async_jobs: hosts[0] ('win01'): auth 'negotiate' needs a password"),
    (args_with(username=None), "async_jobs: hosts[0] ('win01'): auth 'negotiate' needs a username"),
    (
        {
            "hosts": [
                {"name": "a", "username": "u", "password": SECRET},
                {"name": "b", "username": "u"},
            ]
        },
        "async_jobs: hosts[1] ('b'): auth 'negotiate' needs a password (set hosts[1].password or password)",
    ),
    (args_with(auth="basic", port=5985), "async_jobs: hosts[0] ('win01'): basic auth over http"),
    (
        args_with(auth="ntlm", password=None),
        "async_jobs: hosts[0] ('win01'): auth 'ntlm' needs a password",
    ),
    (
        args_with(auth="credssp", password=None),
        "async_jobs: hosts[0] ('win01'): auth 'credssp' needs",
    ),
    (args_with(auth="basic", password=None), "async_jobs: hosts[0] ('win01'): auth 'basic' needs"),
    (
        args_with(auth="certificate"),
        "async_jobs: hosts[0] ('win01'): auth 'certificate' needs certificate_pem",
    ),
    (
        args_with(cert_validation="/no/such/ca.pem"),
        "async_jobs: cert_validation: CA bundle '/no/such/ca.pem'",
    ),
    (args_with(cert_validation=3), "async_jobs: cert_validation: must be true, false or the path"),
    (
        args_with(read_timeout=10),
        "async_jobs: read_timeout: read_timeout (10) must be greater than",
    ),
    (args_with(operation_timeout=30), "async_jobs: hosts[0] ('win01'): read_timeout (30) must be"),
    (
        args_with(connection_timeout=0),
        "async_jobs: connection_timeout: must be a number of seconds > 0",
    ),
    (args_with(path="/"), "async_jobs: path: must name the WSMan path"),
    (args_with(interval="abc"), "async_jobs: interval: must be a number, got 'abc'"),
    (args_with(interval=0), "async_jobs: interval: must be a number of seconds > 0"),
    (args_with(interval=-1), "async_jobs: interval: must be a number of seconds > 0"),
    (args_with(interval=float("nan")), "async_jobs: interval: must be a finite number"),
    (args_with(interval="inf"), "async_jobs: interval: must be a finite number"),
    (args_with(interval=True), "async_jobs: interval: must be a number"),
    (args_with(interval=[1]), "async_jobs: interval: must be a number"),
    (args_with(jitter=1), "async_jobs: jitter: must be a fraction of interval in [0, 1)"),
    (args_with(jitter=-0.1), "async_jobs: jitter: must be a fraction"),
    (args_with(jitter="x"), "async_jobs: jitter: must be a number"),
    (args_with(emit="finished"), "async_jobs: emit: must be a list of statuses"),
    (
        args_with(emit=["finished", "done"]),
        "async_jobs: emit[1]: unknown status 'done' (expected one of:",
    ),
    (args_with(emit=[1]), "async_jobs: emit[0]: must be a string"),
    (args_with(emit=[]), "async_jobs: emit: is empty and host_events is off"),
    (args_with(jids="j1.2"), "async_jobs: jids: must be a list of job ids"),
    (args_with(jids=["123.45"]), "async_jobs: jids[0]: '123.45' is not an async job id"),
    (args_with(jids=["j1.2", "j1"]), "async_jobs: jids[1]: 'j1' is not an async job id"),
    (args_with(jids=[]), "async_jobs: jids: is empty"),
    (args_with(state_file=3), "async_jobs: state_file: must be a non-empty string"),
    (args_with(state_file="/"), "async_jobs: state_file: '/' is a directory"),
    (args_with(redeliver_after=0), "async_jobs: redeliver_after: must be a number of seconds > 0"),
    (args_with(lost_after="soon"), "async_jobs: lost_after: must be a number"),
    (args_with(max_output_bytes=100), "async_jobs: max_output_bytes: must be an integer >= 256"),
    (args_with(max_output_bytes="lots"), "async_jobs: max_output_bytes: must be an integer >= 256"),
    (args_with(max_output_bytes=1024.5), "async_jobs: max_output_bytes: must be an integer"),
    (args_with(host_events="maybe"), "async_jobs: host_events: must be true or false, got 'maybe'"),
    (args_with(host_events=2), "async_jobs: host_events: must be true or false"),
    (args_with(feedback="sure"), "async_jobs: feedback: must be true or false"),
    (
        args_with(feedback=True),
        "async_jobs: feedback: is true but ansible-rulebook gave no feedback queue",
    ),
    (args_with(max_concurrency=0), "async_jobs: max_concurrency: must be an integer >= 1"),
    (args_with(poll_timeout=0), "async_jobs: poll_timeout: must be a number of seconds > 0"),
    (args_with(backoff_max="-5"), "async_jobs: backoff_max: must be a number of seconds > 0"),
    (args_with(auth_backoff=-1), "async_jobs: auth_backoff: must be a number of seconds >= 0"),
    (args_with(limit="win*"), "async_jobs: limit: needs inventory"),
]


@pytest.mark.parametrize(("args", "expected"), ERROR_CASES, ids=[c[1][:60] for c in ERROR_CASES])
def test_bad_argument_is_one_line_naming_it(args: dict[str, Any], expected: str) -> None:
    message = error_of(args)
    assert message.startswith(expected)
    assert "\n" not in message


def test_empty_path_is_unset() -> None:
    assert only_host(parse_args(args_with(path=""))).path == "wsman"


def test_feedback_explains_persistence() -> None:
    message = error_of(args_with(feedback="true"))
    assert "--persistence-id" in message
    assert "feedback: false" in message


def test_args_must_be_a_mapping() -> None:
    assert error_of(["hosts"]) == "async_jobs: arguments must be a mapping"


def test_numbers_as_strings_are_accepted() -> None:
    config = parse_args(args_with(interval="15", jitter="0.25", port=" 5986 ", max_concurrency="8"))
    assert (config.interval, config.jitter, config.max_concurrency) == (15.0, 0.25, 8)
    assert only_host(config).port == 5986


def test_secret_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    leaking_cases = [args for args, _ in ERROR_CASES if SECRET in repr(args)]
    assert len(leaking_cases) > 50  # most cases carry the password
    # and a few where the password sits next to the bad value
    leaking_cases += [
        {"hosts": [{"name": SECRET, "password": SECRET}]},
        {"hosts": [{"name": "a", "password": SECRET, "username": "u", "auth": SECRET}]},
        args_with(username=SECRET * 2, port=SECRET),
        args_with(**{SECRET: 1}),
    ]
    for args in leaking_cases:
        with pytest.raises(ConfigError) as info:
            parse_args(args)
        shown = "".join(traceback.format_exception(info.value))
        assert SECRET not in shown, args
        assert SECRET not in repr(info.value)

    config = parse_args(BASE)
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert SECRET not in repr(config.hosts[0])
    assert f"{config.hosts[0].password}" == "Secret('********')"
    assert SECRET not in caplog.text
