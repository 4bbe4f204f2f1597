"""PsrpTransport through the pypsrp objects it wraps (WSMan, RunspacePool, PowerShell), faked.

No network here: the fakes play a host that answers, fails or hangs at a chosen step.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import (
    AuthenticationError,
    InvalidPSRPOperation,
    WinRMTransportError,
    WSManFaultError,
)
from spnego.exceptions import NoCredentialError
from winasync_eda.transports import poll_wire, psrp
from winasync_eda.transports.base import (
    AuthenticationFailed,
    FileEntry,
    FileKey,
    HostUnsupported,
    PollRequest,
    Snapshot,
    TransportError,
)
from winasync_eda.transports.psrp import PsrpTransport

from tests.unit.fakes import HOST, PASSWORD, settings
from tests.waiting import async_wait_until

DEADLINE_S = 60.0
POLL_PS1 = Path(psrp.__file__).with_name("poll.ps1")

RAW = b'\xef\xbb\xbf{"started":1,"finished":1,"msg":"d\xe9j\xe0"}\r\n'
ANSWER = {
    "v": 1,
    "dir": "C:\\Users\\ansible\\.ansible_async",
    "exists": True,
    "now_ms": 1795886497000,
    "boot_ms": 1795800000000,
    "files": [
        {
            "name": "j1.2",
            "size": len(RAW),
            "mtime_ms": 1795886490000,
            "ctime_ms": 1795886400000,
            "content": base64.b64encode(RAW).decode(),
            "summary": None,
            "error": None,
        },
        {
            "name": "j22.33",
            "size": 99999999,
            "mtime_ms": 1795886491000,
            "ctime_ms": 1795886401000,
            "content": None,
            "summary": {
                "started": 1,
                "finished": 1,
                "failed": True,
                "rc": 3,
                "msg": "boom",
                "changed": False,
                "ansible_async_watchdog_pid": 5678,
                "stdout": "x" * 10,
                "stderr": "",
            },
            "error": None,
        },
        {
            "name": "j4.5",
            "size": 12,
            "mtime_ms": 1795886492000,
            "ctime_ms": None,
            "content": None,
            "summary": None,
            "error": "The process cannot access the file because it is being used",
        },
    ],
    "gone": ["j3.4"],
    "procs": {"1234": 1795886400000, "5678": None, "91011": -1},
}


def answer(**changes: Any) -> list[object]:
    return [json.dumps({**ANSWER, **changes})]


@dataclass
class Step:
    """What the fake host does with one pipeline."""

    output: list[object] = field(default_factory=answer)
    fail_at: str | None = None  # "begin" | "poll" | "close"
    exc: Exception | None = None
    had_errors: bool = False
    errors: list[str] = field(default_factory=list)
    running_forever: bool = False
    block: threading.Event | None = None


@dataclass
class FakeHost:
    steps: deque[Step] = field(default_factory=deque)  # for the poll pipelines
    define_steps: deque[Step] = field(default_factory=deque)  # for the define pipelines
    open_errors: deque[Exception] = field(default_factory=deque)
    pool_close_error: Exception | None = None
    delete_errors: deque[Exception] = field(default_factory=deque)
    # what reached the host, in order: ("delete", shell id), ("open", shell id)
    log: list[tuple[str, str | None]] = field(default_factory=list)
    wsmans: list[FakeWSMan] = field(default_factory=list)
    pools: list[FakePool] = field(default_factory=list)
    pipelines: list[FakePowerShell] = field(default_factory=list)  # the poll pipelines
    defines: list[FakePowerShell] = field(default_factory=list)  # the define pipelines

    def next_step(self) -> Step:
        return self.steps.popleft() if self.steps else Step()

    def next_define_step(self) -> Step:
        return self.define_steps.popleft() if self.define_steps else Step(output=[])


class FakeWSMan:
    def __init__(self, host: FakeHost, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.closed = 0
        self.host = host
        host.wsmans.append(self)

    def close(self) -> None:
        self.closed += 1

    def delete(self, resource_uri: str, selector_set: Any = None) -> None:
        assert resource_uri == FakeShell.resource_uri
        self.host.log.append(("delete", {n: v for n, v, unused in selector_set.values}["ShellId"]))
        if self.host.delete_errors:
            raise self.host.delete_errors.popleft()


class FakeShell:
    """The WinRS shell under a pool: open on the host until a Delete succeeds."""

    resource_uri = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"

    def __init__(self) -> None:
        self.id: str | None = None
        self.opened = False


class FakePool:
    def __init__(self, host: FakeHost, connection: FakeWSMan, **kwargs: Any) -> None:
        self.host = host
        self.connection = connection
        self.kwargs = kwargs
        self.opened = 0
        self.closed = 0
        self.shell = FakeShell()
        host.pools.append(self)

    def open(self) -> None:
        self.opened += 1
        if self.host.open_errors:
            raise self.host.open_errors.popleft()
        self.shell.id, self.shell.opened = f"SHELL-{len(self.host.pools)}", True
        self.host.log.append(("open", self.shell.id))

    def close(self) -> None:
        self.closed += 1
        if self.host.pool_close_error is not None:
            raise self.host.pool_close_error
        self.shell.opened = False


class FakeStreams:
    def __init__(self) -> None:
        self.error: list[str] = []


class FakePowerShell:
    def __init__(self, host: FakeHost, pool: FakePool) -> None:
        self.host = host
        self.pool = pool
        self.scripts: list[tuple[str, bool | None]] = []
        self.cmdlets: list[tuple[str, bool | None]] = []
        self.parameters: list[tuple[str, object]] = []
        self.state = PSInvocationState.NOT_STARTED
        self.had_errors = False
        self.streams = FakeStreams()
        self.output: list[object] = []
        self.step = Step()
        self.stopped = 0
        self.closed = 0
        self.timeouts: list[int | None] = []

    @property
    def is_define(self) -> bool:
        return bool(self.scripts) and self.scripts[0][0].startswith(poll_wire.DEFINE_MARKER + "\n")

    def add_script(self, script: str, use_local_scope: bool | None = None) -> FakePowerShell:
        self.scripts.append((script, use_local_scope))
        return self

    def add_cmdlet(self, cmdlet: str, use_local_scope: bool | None = None) -> FakePowerShell:
        self.cmdlets.append((cmdlet, use_local_scope))
        return self

    def add_parameter(self, name: str, value: object = None) -> FakePowerShell:
        self.parameters.append((name, value))
        return self

    def begin_invoke(self) -> None:
        if self.is_define:
            self.host.defines.append(self)
            self.step = self.host.next_define_step()
        else:
            self.host.pipelines.append(self)
            self.step = self.host.next_step()
        if self.step.fail_at == "begin":
            assert self.step.exc is not None
            raise self.step.exc
        self.state = PSInvocationState.RUNNING

    def poll_invoke(self, timeout: int | None = None) -> None:
        self.timeouts.append(timeout)
        step = self.step
        if step.block is not None:
            assert step.block.wait(30), "the test never released the blocked pipeline"
        if step.fail_at == "poll":
            assert step.exc is not None
            raise step.exc
        if step.running_forever:
            time.sleep(0.005)  # a server that answers "still running" to every Receive
            return
        self.output = list(step.output)
        self.streams.error = list(step.errors)
        self.had_errors = step.had_errors
        self.state = PSInvocationState.FAILED if step.had_errors else PSInvocationState.COMPLETED

    def stop(self) -> None:
        self.stopped += 1
        self.state = PSInvocationState.STOPPED

    def close(self) -> None:
        self.closed += 1
        if self.step.fail_at == "close":
            assert self.step.exc is not None
            raise self.step.exc


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr(psrp, "WSMan", functools.partial(FakeWSMan, fake))
    monkeypatch.setattr(psrp, "RunspacePool", functools.partial(FakePool, fake))
    monkeypatch.setattr(psrp, "PowerShell", functools.partial(FakePowerShell, fake))
    return fake


@pytest.fixture
async def transport(host: FakeHost) -> AsyncIterator[PsrpTransport]:
    del host  # the fakes must be in place before any pool is built
    value = PsrpTransport(settings(), DEADLINE_S)
    yield value
    await value.close()


REQUEST = PollRequest(
    async_dir="%USERPROFILE%\\.ansible_async",
    known={"j1.2": FileKey(123, 1795886490000), "j3.4": FileKey(0, 17)},
    pids=[1234, 5678],
    only=["j1.2", "j3.4"],
    max_bytes=4096,
)


def assert_no_password(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    forms = [PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD)]
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    for form in forms:
        for text in texts:
            assert form not in text


# ---- one pool with the poll defined once, one pipeline per poll ----


async def test_one_pool_is_reused_and_each_poll_is_one_pipeline(
    host: FakeHost, transport: PsrpTransport
) -> None:
    for _ in range(3):
        await transport.poll(REQUEST)
    assert len(host.wsmans) == 1
    assert len(host.pools) == 1
    assert host.pools[0].opened == 1
    assert host.pools[0].closed == 0
    # one runspace, so the function defined in it is there for every pipeline
    assert host.pools[0].kwargs == {"min_runspaces": 1, "max_runspaces": 1}
    (define,) = host.defines
    assert define.pool is host.pools[0]
    assert define.cmdlets == []
    assert define.parameters == []
    assert define.closed == 1
    assert len(host.pipelines) == 3
    for ps in host.pipelines:
        assert ps.pool is host.pools[0]
        assert ps.scripts == []
        assert ps.cmdlets == [("Invoke-WinasyncPoll", None)]
        assert ps.closed == 1  # the command is terminated, not left open on the server


async def test_the_define_pipeline_wraps_poll_ps1_unchanged_in_a_global_function(
    host: FakeHost, transport: PsrpTransport
) -> None:
    await transport.poll(REQUEST)
    ((script, _),) = host.defines[0].scripts
    poll_ps1 = POLL_PS1.read_text(encoding="utf-8")
    assert poll_ps1.startswith("# winasync-eda-poll v1\n")
    assert script == (
        "# winasync-eda-poll-define v1\n"
        "function global:Invoke-WinasyncPoll {\n" + poll_ps1 + "\n}\n"
    )


async def test_a_pool_reopened_after_an_error_defines_the_poll_again(
    host: FakeHost, transport: PsrpTransport
) -> None:
    await transport.poll(REQUEST)
    # a server that reset the runspace forgot the function: the call fails
    missing = "The term 'Invoke-WinasyncPoll' is not recognized as the name of a cmdlet"
    host.steps.append(Step(had_errors=True, errors=[missing]))
    with pytest.raises(TransportError, match="pipeline failed: The term 'Invoke-WinasyncPoll'"):
        await transport.poll(REQUEST)
    assert host.pools[0].closed == 1
    await transport.poll(REQUEST)
    assert len(host.pools) == 2
    assert [d.pool for d in host.defines] == host.pools
    assert [ps.pool for ps in host.pipelines] == [host.pools[0], host.pools[0], host.pools[1]]


@pytest.mark.parametrize(
    "step",
    [
        Step(output=[], had_errors=True, errors=["At line:1 char:1"]),
        Step(output=[], fail_at="poll", exc=requests.exceptions.ReadTimeout("slow")),
        Step(output=[], fail_at="close", exc=requests.exceptions.ConnectionError("reset")),
    ],
)
async def test_a_failed_define_fails_the_poll_and_the_next_poll_starts_over(
    host: FakeHost, transport: PsrpTransport, step: Step
) -> None:
    host.define_steps.append(step)
    with pytest.raises(TransportError, match=f"^{HOST}: "):
        await transport.poll(REQUEST)
    assert host.pipelines == []  # no poll on a pool without the function
    assert host.pools[0].closed == 1
    snapshot = await transport.poll(REQUEST)
    assert snapshot.exists
    assert len(host.pools) == 2
    assert len(host.defines) == 2
    assert host.pipelines[0].pool is host.pools[1]


async def test_a_define_past_the_deadline_is_stopped(host: FakeHost) -> None:
    transport = PsrpTransport(settings(), 0.3)
    host.define_steps.append(Step(output=[], running_forever=True))
    with pytest.raises(TransportError, match=f"^{HOST}: deadline"):
        await transport.poll(REQUEST)
    assert host.defines[0].stopped == 1
    assert host.pipelines == []
    assert host.pools[0].closed == 1


async def test_an_older_pypsrp_without_close_stops_the_finished_pipeline(
    host: FakeHost, transport: PsrpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(FakePowerShell, "close")
    await transport.poll(REQUEST)
    await transport.poll(REQUEST)
    assert [ps.stopped for ps in host.pipelines] == [1, 1]
    assert len(host.pools) == 1


async def test_the_pipeline_calls_the_function_with_six_string_parameters(
    host: FakeHost, transport: PsrpTransport
) -> None:
    await transport.poll(REQUEST)
    (ps,) = host.pipelines
    assert ps.cmdlets == [("Invoke-WinasyncPoll", None)]
    assert ps.parameters == [
        ("AsyncDir", "%USERPROFILE%\\.ansible_async"),
        ("Known", '{"j1.2":"123:1795886490000","j3.4":"0:17"}'),
        ("Pids", "[1234,5678]"),
        ("Only", '["j1.2","j3.4"]'),
        ("MaxBytes", "4096"),
        ("MaxAnswer", str(4 * 1024 * 1024)),
    ]
    assert all(isinstance(value, str) for _, value in ps.parameters)
    assert json.loads(str(dict(ps.parameters)["Known"])) == {
        "j1.2": "123:1795886490000",
        "j3.4": "0:17",
    }


async def test_empty_request_sends_empty_json(host: FakeHost, transport: PsrpTransport) -> None:
    await transport.poll(PollRequest(async_dir="D:\\jobs"))
    assert dict(host.pipelines[0].parameters) == {
        "AsyncDir": "D:\\jobs",
        "Known": "{}",
        "Pids": "[]",
        "Only": "[]",
        "MaxBytes": str(1024 * 1024),
        "MaxAnswer": str(4 * 1024 * 1024),
    }


async def test_a_waiting_request_sends_wait_and_seen(
    host: FakeHost, transport: PsrpTransport
) -> None:
    await transport.poll(
        PollRequest(async_dir="D:\\jobs", pids=[7, 9], wait_s=50.25, seen_procs={7: 1795, 9: None})
    )
    sent = dict(host.pipelines[0].parameters)
    assert (sent["Wait"], sent["Seen"]) == ("50.250", '{"7":1795,"9":null}')


async def test_wsman_gets_the_settings_and_the_revealed_password(host: FakeHost) -> None:
    transport = PsrpTransport(
        settings(protocol="http", auth="ntlm", operation_timeout=5), DEADLINE_S
    )
    await transport.poll(REQUEST)
    kwargs = host.wsmans[0].kwargs
    assert kwargs["server"] == "win01.example.com"
    assert kwargs["port"] == 5985
    assert kwargs["ssl"] is False
    assert kwargs["auth"] == "ntlm"
    assert kwargs["username"] == "ansible"
    assert kwargs["password"] == PASSWORD
    assert kwargs["operation_timeout"] == 5
    assert kwargs["encryption"] == "auto"
    assert host.pools[0].connection is host.wsmans[0]
    # no Receive asks for longer than the operation timeout
    assert host.pipelines[0].timeouts == [5]


# ---- the answer ----


async def test_a_realistic_answer_becomes_a_snapshot(transport: PsrpTransport) -> None:
    snapshot = await transport.poll(REQUEST)
    summary = ANSWER["files"][1]["summary"]  # type: ignore[index]
    assert snapshot == Snapshot(
        results_dir="C:\\Users\\ansible\\.ansible_async",
        exists=True,
        now_ms=1795886497000,
        boot_ms=1795800000000,
        changed=[
            FileEntry("j1.2", len(RAW), 1795886490000, 1795886400000, content=RAW),
            FileEntry("j22.33", 99999999, 1795886491000, 1795886401000, summary=summary),
            FileEntry(
                "j4.5",
                12,
                1795886492000,
                None,
                error="The process cannot access the file because it is being used",
            ),
        ],
        gone=["j3.4"],
        procs={1234: 1795886400000, 5678: None, 91011: -1},
    )
    assert snapshot.changed[0].content == RAW  # bytes exactly: BOM, ANSI byte, CRLF


async def test_a_missing_dir_and_an_unknown_boot_time(
    host: FakeHost, transport: PsrpTransport
) -> None:
    host.steps.append(Step(output=answer(exists=False, boot_ms=None, files=[], gone=[], procs={})))
    snapshot = await transport.poll(REQUEST)
    assert snapshot.exists is False
    assert snapshot.boot_ms is None
    assert list(snapshot.changed) == []
    assert dict(snapshot.procs) == {}


BAD_ANSWERS: list[list[object]] = [
    [],
    ["not json"],
    [json.dumps(ANSWER), json.dumps(ANSWER)],
    [42],
    [json.dumps([ANSWER])],
    answer(v=2),
    answer(files={}),
    answer(gone="j3.4"),
    answer(procs=[]),
    answer(procs={"abc": 1}),
    answer(procs={"1": "soon"}),
    answer(now_ms="1795886497000"),
    answer(exists=1),
    answer(files=[{**ANSWER["files"][0], "content": "%%%not base64"}]),  # type: ignore[index]
    answer(files=[{**ANSWER["files"][0], "name": "..\\evil"}]),  # type: ignore[index]
    answer(files=[{**ANSWER["files"][0], "size": True}]),  # type: ignore[index]
    answer(files=[{**ANSWER["files"][0], "summary": "x"}]),  # type: ignore[index]
]


@pytest.mark.parametrize("output", BAD_ANSWERS)
async def test_a_bad_answer_is_a_transport_error_and_the_pool_is_rebuilt(
    host: FakeHost, transport: PsrpTransport, output: list[object]
) -> None:
    host.steps.append(Step(output=output))
    with pytest.raises(TransportError, match=f"^{HOST}: bad answer") as info:
        await transport.poll(REQUEST)
    assert not isinstance(info.value, AuthenticationFailed)
    assert host.pools[0].closed == 1
    await transport.poll(REQUEST)
    assert len(host.pools) == 2


# ---- failures ----


def failures() -> list[tuple[Exception, type[TransportError], str]]:
    url = f"https://ansible:{quote(PASSWORD, safe='')}@win01:5986/wsman"
    return [
        (
            requests.exceptions.ConnectionError(f"Max retries exceeded with url {url} {PASSWORD}"),
            TransportError,
            "connection error",
        ),
        (
            requests.exceptions.ReadTimeout(f"read timed out {PASSWORD}"),
            TransportError,
            "read timeout",
        ),
        (requests.exceptions.ConnectTimeout(f"connect {url}"), TransportError, "connect timeout"),
        (
            requests.exceptions.SSLError(f"certificate verify failed {PASSWORD}"),
            TransportError,
            "TLS",
        ),
        (
            WinRMTransportError("http", 500, f"<body>{PASSWORD}</body>"),
            TransportError,
            "HTTP error",
        ),
        (
            WSManFaultError(
                2150858843, "win01", f"The shell was not found {PASSWORD}", None, None, None
            ),
            TransportError,
            "WSMan fault",
        ),
        (InvalidPSRPOperation(f"pool broken {PASSWORD}"), TransportError, "PSRP error"),
        (
            AuthenticationError(f"Failed to authenticate the user ansible {PASSWORD}"),
            AuthenticationFailed,
            "authentication failed",
        ),
        (
            NoCredentialError(context_msg=f"no ticket for ansible {PASSWORD}"),
            AuthenticationFailed,
            "negotiate error",
        ),
        (RuntimeError(f"a bug with {PASSWORD} in it"), TransportError, "unexpected RuntimeError"),
    ]


@pytest.mark.parametrize("where", ["open", "begin", "poll"])
@pytest.mark.parametrize(("exc", "kind", "label"), failures())
async def test_every_failure_is_translated_scrubbed_and_the_pool_rebuilt(
    host: FakeHost,
    transport: PsrpTransport,
    caplog: pytest.LogCaptureFixture,
    where: str,
    exc: Exception,
    kind: type[TransportError],
    label: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    await transport.poll(REQUEST)  # a working pool first
    if where == "open":
        # the pool must be rebuilt for open to fail: break it with a first failure
        host.steps.append(Step(fail_at="poll", exc=InvalidPSRPOperation("broken")))
        with pytest.raises(TransportError):
            await transport.poll(REQUEST)
        host.open_errors.append(exc)
    else:
        host.steps.append(Step(fail_at=where, exc=exc))
    with pytest.raises(TransportError) as info:
        await transport.poll(REQUEST)
    assert type(info.value) is kind
    assert str(info.value).startswith(f"{HOST}: {label}")
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    assert_no_password(info.value, caplog)
    failed_pool, failed_wsman = host.pools[-1], host.wsmans[-1]
    # the failed pool is deleted (best effort) and forgotten; after a refused logon it is only
    # forgotten: a Delete would be one more refused logon for lockout policies to count
    assert failed_pool.closed == (0 if kind is AuthenticationFailed else 1)
    assert failed_wsman.closed == 1  # the local HTTP session only
    snapshot = await transport.poll(REQUEST)
    assert snapshot.exists
    assert host.pools[-1] is not failed_pool
    assert host.wsmans[-1] is not failed_wsman
    assert (host.pools[-1].opened, host.pools[-1].closed) == (1, 0)
    assert_no_password(info.value, caplog)


async def test_had_errors_is_a_failed_poll(host: FakeHost, transport: PsrpTransport) -> None:
    host.steps.append(Step(had_errors=True, errors=["Access to the path is denied."]))
    with pytest.raises(TransportError, match="pipeline failed: Access to the path is denied"):
        await transport.poll(REQUEST)
    assert host.pools[0].closed == 1
    await transport.poll(REQUEST)
    assert len(host.pools) == 2


async def test_an_error_record_without_had_errors_is_a_failed_poll(
    host: FakeHost, transport: PsrpTransport
) -> None:
    host.steps.append(Step(errors=["first", "second"]))
    with pytest.raises(TransportError, match=r"pipeline failed: first \(and 1 more\)"):
        await transport.poll(REQUEST)


async def test_had_errors_without_a_record_is_a_failed_poll(
    host: FakeHost, transport: PsrpTransport
) -> None:
    host.steps.append(Step(had_errors=True))
    with pytest.raises(TransportError, match="pipeline failed"):
        await transport.poll(REQUEST)


async def test_a_failed_pipeline_close_keeps_the_answer_but_drops_the_pool(
    host: FakeHost, transport: PsrpTransport
) -> None:
    host.steps.append(Step(fail_at="close", exc=requests.exceptions.ConnectionError("reset")))
    snapshot = await transport.poll(REQUEST)
    assert snapshot.gone == ["j3.4"]
    assert host.pools[0].closed == 1
    await transport.poll(REQUEST)
    assert len(host.pools) == 2


async def test_cleanup_errors_never_escape(
    host: FakeHost, transport: PsrpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host.pool_close_error = requests.exceptions.ConnectionError(f"gone {PASSWORD}")
    host.steps.append(Step(fail_at="poll", exc=requests.exceptions.ReadTimeout("slow")))
    with pytest.raises(TransportError, match="read timeout") as info:
        await transport.poll(REQUEST)
    await transport.poll(REQUEST)
    await transport.close()
    assert host.pools[-1].closed == 1
    assert_no_password(info.value, caplog)


# ---- shells a killed run left (the checkpoint names them) ----


async def test_shells_a_killed_run_left_are_deleted_before_the_first_pool(
    host: FakeHost, transport: PsrpTransport
) -> None:
    reports: list[frozenset[str]] = []
    transport.watch_shells({"OLD-1", "OLD-2"}, reports.append)
    # OLD-1 idled out already: the host refuses its Delete, which counts as done
    host.delete_errors.append(
        WSManFaultError(2150858843, "win01", "The shell was not found", None, None, None)
    )
    await transport.poll(REQUEST)
    assert host.log == [("delete", "OLD-1"), ("delete", "OLD-2"), ("open", "SHELL-1")]
    await async_wait_until(lambda: reports[-1] == {"SHELL-1"}, 5, "the new shell reported")
    assert reports[0] == {"OLD-1", "OLD-2"}
    await transport.poll(REQUEST)
    assert host.log[-1] == ("open", "SHELL-1")  # deleted once, at the first contact
    await transport.close()
    await async_wait_until(lambda: reports[-1] == set(), 5, "the closed pool forgotten")


async def test_a_host_that_does_not_answer_the_delete_keeps_the_old_shells(
    host: FakeHost, transport: PsrpTransport
) -> None:
    reports: list[frozenset[str]] = []
    transport.watch_shells({"OLD-1"}, reports.append)
    host.delete_errors.append(requests.exceptions.ConnectionError("refused"))
    # the poll fails as the Create would have: no pool opened on a host that did not answer
    with pytest.raises(TransportError, match="connection error"):
        await transport.poll(REQUEST)
    assert host.log == [("delete", "OLD-1")]
    await transport.poll(REQUEST)
    assert host.log == [("delete", "OLD-1"), ("delete", "OLD-1"), ("open", "SHELL-1")]
    await async_wait_until(lambda: reports[-1] == {"SHELL-1"}, 5, "only the new shell left")


# ---- deadline ----


async def test_deadline_expiry_stops_the_pipeline(host: FakeHost) -> None:
    transport = PsrpTransport(settings(), 0.3)
    host.steps.append(Step(running_forever=True))
    with pytest.raises(TransportError, match=f"^{HOST}: deadline"):
        await transport.poll(REQUEST)
    (ps,) = host.pipelines
    assert ps.stopped == 1
    assert all(t is not None and t >= 1 for t in ps.timeouts)
    assert host.pools[0].closed == 1
    await transport.poll(REQUEST)
    assert len(host.pools) == 2


async def test_a_stuck_thread_does_not_hold_the_poll_past_its_deadline(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psrp, "_GRACE_S", 0.05)
    transport = PsrpTransport(settings(), 0.2)
    release = threading.Event()
    host.steps.append(Step(block=release))
    with pytest.raises(TransportError, match="deadline: no answer"):
        await transport.poll(REQUEST)
    # one thread per host: the next poll does not start a second one on the same pool
    with pytest.raises(TransportError, match="previous call has not ended"):
        await transport.poll(REQUEST)
    assert len(host.pipelines) == 1
    release.set()
    # the thread ends past its deadline: its late answer is dropped, and so is the pool
    await async_wait_until(lambda: not transport.busy, 10, "the transport to settle")
    assert host.pools[0].closed == 1
    assert host.pipelines[0].stopped == 0  # it had completed by then: nothing to stop
    snapshot = await transport.poll(REQUEST)
    assert snapshot.exists


async def test_a_cancelled_poll_keeps_the_host_locked_until_its_thread_ends(
    host: FakeHost, transport: PsrpTransport
) -> None:
    release = threading.Event()
    host.steps.append(Step(block=release))
    task = asyncio.create_task(transport.poll(REQUEST))
    await async_wait_until(
        lambda: len(host.pipelines) == 1 and bool(host.pipelines[0].timeouts),
        10,
        "the transport to settle",
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert transport.busy
    assert len(host.pipelines) == 1
    release.set()
    await async_wait_until(lambda: not transport.busy, 10, "the transport to settle")
    await transport.poll(REQUEST)
    assert len(host.pipelines) == 2
    assert len(host.pools) == 1  # the pipeline completed in time: the pool is still good


# ---- close ----


async def test_close_is_idempotent_and_closes_the_pool(
    host: FakeHost, transport: PsrpTransport
) -> None:
    await transport.poll(REQUEST)
    await transport.close()
    await transport.close()
    assert host.pools[0].closed == 1
    assert host.wsmans[0].closed == 1
    with pytest.raises(TransportError, match="closed"):
        await transport.poll(REQUEST)
    assert len(host.pools) == 1


async def test_close_before_any_poll_and_after_an_error(host: FakeHost) -> None:
    never_used = PsrpTransport(settings(), DEADLINE_S)
    await never_used.close()
    assert host.pools == []
    failed = PsrpTransport(settings(), DEADLINE_S)
    host.open_errors.append(requests.exceptions.ConnectionError("refused"))
    with pytest.raises(TransportError):
        await failed.poll(REQUEST)
    await failed.close()
    assert [p.closed for p in host.pools] == [1]


async def test_close_logs_at_debug(
    transport: PsrpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="winasync_eda")
    await transport.poll(REQUEST)
    await transport.close()
    closing = [r for r in caplog.records if "closing" in r.getMessage()]
    assert closing
    assert {r.levelno for r in closing} == {logging.DEBUG}


async def test_close_while_a_thread_is_stuck_returns_and_the_thread_closes_the_pool(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psrp, "_GRACE_S", 0.05)
    fast = settings(connection_timeout=0.1, read_timeout=1.2, operation_timeout=1)
    transport = PsrpTransport(fast, 0.2)
    release = threading.Event()
    host.steps.append(Step(block=release))
    with pytest.raises(TransportError, match="deadline"):
        await transport.poll(REQUEST)
    await transport.close()  # returns although the thread still holds the pool
    assert host.pools[0].closed == 0
    release.set()
    await async_wait_until(lambda: host.pools[0].closed == 1, 10, "the transport to settle")


async def test_a_deployed_script_is_run_by_path_and_never_defined(host: FakeHost) -> None:
    path = "C:\\ProgramData\\winasync\\poll.ps1"
    transport = PsrpTransport(settings(), DEADLINE_S, poll_script=path)
    try:
        await transport.poll(REQUEST)
        await transport.poll(REQUEST)
    finally:
        await transport.close()
    assert host.defines == []
    assert [ps.cmdlets for ps in host.pipelines] == [[(path, None)], [(path, None)]]
    # a plain poll sends neither Wait nor Seen: an older deployed copy keeps working
    assert [name for name, _ in host.pipelines[0].parameters] == list(poll_wire.PARAMETER_NAMES[:6])


async def test_a_constrained_language_host_is_unsupported_with_its_reason(
    host: FakeHost, transport: PsrpTransport
) -> None:
    reason = "the session runs in ConstrainedLanguage (App Control or AppLocker): deploy ..."
    host.steps.append(
        Step(had_errors=True, errors=[poll_wire.UNSUPPORTED_PREFIX + reason], output=[])
    )
    with pytest.raises(HostUnsupported) as caught:
        await transport.poll(REQUEST)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{HOST}: unsupported: {reason}"
    # any other failed pipeline stays an ordinary failed poll
    host.steps.append(Step(had_errors=True, errors=["boom"], output=[]))
    with pytest.raises(TransportError) as other:
        await transport.poll(REQUEST)
    assert not isinstance(other.value, HostUnsupported)
