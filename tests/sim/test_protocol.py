"""The simulated host's WS-Management/PSRP layer against the real pypsrp client (and ansible's
psrp connection plugin), with a stub executor that echoes what it was asked to do."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import (
    AuthenticationError,
    InvalidPSRPOperation,
    WinRMTransportError,
    WSManFaultError,
)
from pypsrp.host import PSHost, PSHostUserInterface
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from harness.sim_thread import SimServerThread, client_for
from tests.waiting import wait_until
from winsim.api import PipelineRequest, PipelineResult
from winsim.counters import ActionCounts
from winsim.faults import FaultKind, FaultPlan
from winsim.server import HostEndpoint, SimServer
from winsim.tls import CertificateAuthority
from winsim.wsman import ERROR_SHELL_NOT_FOUND

pytestmark = pytest.mark.sim

USER = "ansible"
PASSWORD = "Sim-Passw0rd!"
# short client timeouts keep fault tests fast; operation timeout < read timeout (pypsrp rule)
FAST: dict[str, Any] = {"operation_timeout": 2, "read_timeout": 5, "connection_timeout": 5}


@dataclass
class StubHost:
    """What the executor saw, for assertions; the real host is winsim.host.SimHost."""

    requests: list[PipelineRequest] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


async def stub_executor(sim_host: Any, request: PipelineRequest) -> PipelineResult:
    """Echo the request; parameters Errors / Fail / Exit / Hold / Raise shape the result."""
    host: StubHost = sim_host
    host.requests.append(request)
    named = request.first.named() if request.commands else {}
    if "Hold" in named:
        host.running.set()
        # a threading.Event: the test thread releases it; polling keeps the task cancellable
        while not host.release.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    if "Raise" in named:
        raise RuntimeError(named["Raise"])
    echo = {
        "commands": [
            {"text": c.text, "is_script": c.is_script, "parameters": c.parameters}
            for c in request.commands
        ],
        "input": request.input,
    }
    result = PipelineResult(output=[json.dumps(echo, default=_bytes_as_json)])
    result.errors.extend(named.get("Errors", []))
    if "Fail" in named:
        result.errors.append(named["Fail"])
        result.failed = True
    if "Exit" in named:
        result.exit_code = int(named["Exit"])
    marker = request.first.text.split("\n", 1)[0] if request.commands else ""
    if marker.startswith("stub-exit "):
        result.exit_code = int(marker.split()[1])
    return result


def _bytes_as_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.decode()}
    raise TypeError(type(value).__name__)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(stub_executor) as server:
        yield server


_names = iter(range(1_000_000))


def _add(sim: SimServerThread, *, https: bool = False) -> Iterator[HostEndpoint]:
    endpoint = sim.add_host(
        f"win{next(_names):03d}", StubHost(), username=USER, password=PASSWORD, https=https
    )
    yield endpoint
    sim.remove_host(endpoint.name)


@pytest.fixture
def endpoint(sim: SimServerThread) -> Iterator[HostEndpoint]:
    yield from _add(sim)


@pytest.fixture
def https_endpoint(sim: SimServerThread) -> Iterator[HostEndpoint]:
    yield from _add(sim, https=True)


def _client(sim: SimServerThread, endpoint: HostEndpoint, **kwargs: Any) -> WSMan:
    options: dict[str, Any] = {**FAST, **kwargs}
    return client_for(endpoint, USER, PASSWORD, ca_bundle=sim.ca_bundle, **options)


def _echo(ps: PowerShell, output: list[Any]) -> dict[str, Any]:
    assert len(output) == 1, output
    parsed: dict[str, Any] = json.loads(output[0])
    return parsed


def _error_messages(ps: PowerShell) -> list[str]:
    return [str(e) for e in ps.streams.error]


# --- pools and pipelines -------------------------------------------------------------------


def test_pool_runs_parameterised_pipelines_and_is_reused(
    sim: SimServerThread, endpoint: HostEndpoint
) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        assert endpoint.open_shells == 1
        for i in range(3):
            ps = PowerShell(pool)
            ps.add_script("# winasync-eda-poll v1\nparam($AsyncDir)")
            ps.add_parameter("AsyncDir", "%USERPROFILE%\\.ansible_async")
            ps.add_parameter("Known", {"j1.2": "12:345"})
            ps.add_parameter("Pids", [4, 5])
            ps.add_parameter("MaxBytes", 1000 + i)
            ps.add_parameter("Switch", True)
            ps.add_argument("positional")
            echo = _echo(ps, ps.invoke())
            assert not ps.had_errors
            assert ps.state == PSInvocationState.COMPLETED
            assert echo["commands"] == [
                {
                    "text": "# winasync-eda-poll v1\nparam($AsyncDir)",
                    "is_script": True,
                    "parameters": [
                        ["AsyncDir", "%USERPROFILE%\\.ansible_async"],
                        ["Known", {"j1.2": "12:345"}],
                        ["Pids", [4, 5]],
                        ["MaxBytes", 1000 + i],
                        ["Switch", True],
                        [None, "positional"],
                    ],
                }
            ]
            assert echo["input"] == []
        assert endpoint.open_shells == 1
    assert endpoint.open_shells == 0
    assert endpoint.counters.get("Create").requests == 1
    assert endpoint.counters.get("Command").requests == 3
    assert endpoint.counters.get("Delete").requests == 1


def test_executor_gets_plain_python_values(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Item").add_parameter("Path", "C:\\x").add_parameter("Depth", 2)
        # pypsrp sends each item of a list as one input object (ansible does so); its hints
        # only say Iterator
        ps.invoke(input=["a"])  # type: ignore[arg-type]
    request = endpoint.host.requests[-1]
    command = request.first
    assert command.text == "Get-Item"
    assert not command.is_script
    assert command.named() == {"Path": "C:\\x", "Depth": 2}
    assert type(command.named()["Path"]) is str
    assert type(command.named()["Depth"]) is int
    assert request.input == ["a"]
    assert type(request.input[0]) is str


VALUES = [
    "",
    "a\nb\tc\r\n",
    "literal _x000A_ and _x",
    "é 漢 😀",
    0,
    -5,
    2**40,
    True,
    False,
    None,
    1.5,
    [],
    [1, ["x", None]],
    {"k": {"n": [True]}},
    b"\x00\x01",  # byte arrays take psrpcore's slower general path
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_parameter_values_arrive_as_sent(
    sim: SimServerThread, endpoint: HostEndpoint, value: Any
) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        ps = PowerShell(pool)
        ps.add_script("x").add_parameter("Value", value).add_argument(value)
        ps.invoke()
    assert endpoint.host.requests[-1].first.parameters == [("Value", value), (None, value)]


def _held_pipeline(pool: RunspacePool, endpoint: HostEndpoint) -> PowerShell:
    """A pipeline the stub keeps running (``Hold``) until ``endpoint.host.release`` is set."""
    ps = PowerShell(pool)
    ps.add_script("x").add_parameter("Hold", True)
    ps.begin_invoke()
    wait_until(endpoint.host.running.is_set, 10, "the pipeline to start")
    return ps


def test_receive_long_polls_until_the_pipeline_ends(
    sim: SimServerThread, endpoint: HostEndpoint
) -> None:
    with RunspacePool(_client(sim, endpoint, operation_timeout=1, read_timeout=4)) as pool:
        ps = _held_pipeline(pool, endpoint)
        # nothing to say within the operation timeout: pypsrp swallows the timeout fault
        ps.poll_invoke()
        assert ps.state == PSInvocationState.RUNNING
        assert ps.output == []
        endpoint.host.release.set()
        while ps.state == PSInvocationState.RUNNING:
            ps.poll_invoke()
        assert ps.state == PSInvocationState.COMPLETED
        assert len(ps.output) == 1


def test_pipeline_input_runs_at_end_of_input(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    # like ansible's exec payload, but larger than one 500 KiB envelope: several Sends
    big = "x" * 1000
    lines = ['{"name":"exec_wrapper"}', "\0\0\0\0", *([big] * 700)]
    with RunspacePool(_client(sim, endpoint)) as pool:
        ps = PowerShell(pool)
        ps.add_script("bootstrap_wrapper.ps1")
        echo = _echo(ps, ps.invoke(input=lines))  # type: ignore[arg-type]
    assert echo["input"] == lines
    assert len(endpoint.host.requests) == 1
    assert endpoint.counters.get("Send").requests >= 2


def test_error_stream_is_not_a_failed_pipeline(
    sim: SimServerThread, endpoint: HostEndpoint
) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        ps = PowerShell(pool)
        ps.add_script("x").add_parameter("Errors", ["first problem", "second problem"])
        output = ps.invoke()
        assert len(output) == 1
        assert not ps.had_errors
        assert ps.state == PSInvocationState.COMPLETED
        assert _error_messages(ps) == ["first problem", "second problem"]

        failed = PowerShell(pool)
        failed.add_script("x").add_parameter("Errors", ["warned"]).add_parameter("Fail", "boom")
        failed.invoke()
        assert failed.had_errors
        assert failed.state == PSInvocationState.FAILED
        assert _error_messages(failed) == ["warned", "boom"]

        crashed = PowerShell(pool)
        crashed.add_script("x").add_parameter("Raise", "executor bug")
        crashed.invoke()
        assert crashed.had_errors
        assert _error_messages(crashed) == ["simulated host error: RuntimeError: executor bug"]


def test_set_should_exit_reaches_the_client_host(
    sim: SimServerThread, endpoint: HostEndpoint
) -> None:
    # the host object ansible's psrp connection uses to read rc
    # exactly as ansible builds it (pypsrp's hints do not allow its None arguments)
    ui = PSHostUserInterface()
    host = PSHost(None, None, False, "Ansible PSRP Host", None, ui, None)  # type: ignore[arg-type]
    with RunspacePool(_client(sim, endpoint), host=host) as pool:
        ps = PowerShell(pool)
        ps.add_script("x").add_parameter("Exit", 7)
        ps.invoke()
        assert host.rc == 7
        host.rc = 0
        plain = PowerShell(pool)
        plain.add_script("x")
        plain.invoke()
        assert host.rc == 0


def test_stop_a_running_pipeline_keeps_the_pool_usable(
    sim: SimServerThread, endpoint: HostEndpoint
) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        ps = _held_pipeline(pool, endpoint)
        ps.stop()
        assert ps.state == PSInvocationState.STOPPED
        # ansible stops its previous, already completed pipeline the same way
        done = PowerShell(pool)
        done.add_script("x")
        done.invoke()
        done.state = PSInvocationState.RUNNING
        done.stop()
        again = PowerShell(pool)
        again.add_script("x")
        assert len(again.invoke()) == 1
        assert pool.is_alive()


def test_closed_pipeline_is_forgotten(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        ps = PowerShell(pool)
        ps.add_script("x")
        ps.invoke()
        ps.close()
        assert endpoint.counters.get("Signal").requests == 1
        with pytest.raises(WSManFaultError):
            pool._receive(ps.id)


# --- transport and authentication ------------------------------------------------------------


def test_https_with_validation_against_the_generated_ca(
    sim: SimServerThread, https_endpoint: HostEndpoint
) -> None:
    assert https_endpoint.url.startswith("https://127.0.0.1:")
    with RunspacePool(_client(sim, https_endpoint)) as pool:
        ps = PowerShell(pool)
        ps.add_script("x").add_parameter("A", "b")
        assert _echo(ps, ps.invoke())["commands"][0]["parameters"] == [["A", "b"]]
    assert https_endpoint.open_shells == 0


def test_https_validation_fails_against_another_ca(
    sim: SimServerThread, https_endpoint: HostEndpoint, tmp_path: Any
) -> None:
    other = CertificateAuthority("another CA").write_bundle(tmp_path / "other.pem")
    wsman = client_for(https_endpoint, USER, PASSWORD, ca_bundle=other, **FAST)
    with pytest.raises(requests.exceptions.SSLError):
        RunspacePool(wsman).open()
    assert https_endpoint.open_shells == 0


def test_wrong_password_is_401(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    wsman = client_for(endpoint, USER, "wrong", **FAST)
    with pytest.raises(AuthenticationError) as caught:
        RunspacePool(wsman).open()
    assert "wrong" not in str(caught.value)
    create = endpoint.counters.get("Create")
    assert (create.requests, create.bytes_out) == (1, 0)
    assert create.bytes_in > 0
    assert endpoint.open_shells == 0


def test_hosts_are_separate(sim: SimServerThread) -> None:
    a_iter, b_iter = _add(sim), _add(sim)
    a, b = next(a_iter), next(b_iter)
    try:
        assert a.port != b.port
        with RunspacePool(_client(sim, a)):
            assert (a.open_shells, b.open_shells) == (1, 0)
        assert b.counters.requests == 0
        assert a.host is not b.host
    finally:
        for it in (a_iter, b_iter):
            next(it, None)


# --- faults --------------------------------------------------------------------------------


def test_refuse_once_then_recover(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    endpoint.faults.inject(FaultKind.REFUSE, count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        RunspacePool(_client(sim, endpoint)).open()
    assert endpoint.faults.hits(FaultKind.REFUSE) == 1
    with RunspacePool(_client(sim, endpoint)):
        assert endpoint.open_shells == 1


def test_refuse_until_cleared_stops_listening(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        endpoint.faults.inject(FaultKind.REFUSE)
        assert not endpoint.listening
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((endpoint.address, endpoint.port), timeout=5).close()
        # the pool's kept-alive connection is cut too
        ps = PowerShell(pool)
        ps.add_script("x")
        with pytest.raises(requests.exceptions.ConnectionError):
            ps.invoke()
        endpoint.faults.clear()
        assert endpoint.listening
        again = PowerShell(pool)
        again.add_script("x")
        assert len(again.invoke()) == 1


def test_unauthorized_fault(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    endpoint.faults.inject(FaultKind.UNAUTHORIZED, count=1)
    with pytest.raises(AuthenticationError):
        RunspacePool(_client(sim, endpoint)).open()


def test_wsman_fault(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    endpoint.faults.inject(FaultKind.WSMAN_FAULT, count=1, code=0x803381A6, message="quota")
    with pytest.raises(WSManFaultError) as caught:
        RunspacePool(_client(sim, endpoint)).open()
    assert caught.value.code == 0x803381A6
    assert caught.value.reason == "quota"
    assert caught.value.machine == endpoint.name


def test_http_error_without_soap(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    endpoint.faults.inject(FaultKind.HTTP_ERROR, count=1, status=502, message="bad gateway")
    with pytest.raises(WinRMTransportError) as caught:
        RunspacePool(_client(sim, endpoint)).open()
    assert caught.value.code == 502


def test_delayed_reply_is_a_read_timeout(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    endpoint.faults.inject(FaultKind.DELAY, count=1, actions={"Create"}, delay=60)
    wsman = _client(sim, endpoint, operation_timeout=1, read_timeout=2)
    with pytest.raises(requests.exceptions.ReadTimeout):
        RunspacePool(wsman).open()
    # the client hung up: the server drops the request (counted, never carried out)
    wait_until(lambda: endpoint.counters.get("Create").requests == 1, 10, "the hang-up")
    assert endpoint.open_shells == 0
    with RunspacePool(_client(sim, endpoint)):
        assert endpoint.open_shells == 1


def test_connection_dropped_mid_reply(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        endpoint.faults.inject(FaultKind.DROP, count=1, actions={"Command"})
        ps = PowerShell(pool)
        ps.add_script("x")
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            ps.invoke()
        assert endpoint.faults.hits(FaultKind.DROP) == 1


def _open_pool_then_fault(
    sim: SimServerThread, endpoint: HostEndpoint, kind: FaultKind
) -> tuple[RunspacePool, PowerShell]:
    """An opened pool whose next request meets the fault ``kind``, and a pipeline to invoke."""
    pool = RunspacePool(_client(sim, endpoint))
    pool.open()
    endpoint.faults.inject(kind, count=1)
    ps = PowerShell(pool)
    ps.add_script("x")
    return pool, ps


def test_lost_shell_is_a_wsman_fault(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    pool, ps = _open_pool_then_fault(sim, endpoint, FaultKind.SHELL_LOST)
    with pytest.raises(WSManFaultError) as caught:
        ps.invoke()
    assert caught.value.code == ERROR_SHELL_NOT_FOUND
    assert endpoint.open_shells == 0
    assert not pool.is_alive()
    with RunspacePool(_client(sim, endpoint)):
        assert endpoint.open_shells == 1


def test_broken_pool(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    pool, ps = _open_pool_then_fault(sim, endpoint, FaultKind.POOL_BROKEN)
    with pytest.raises(InvalidPSRPOperation, match="broken"):
        ps.invoke()
    assert endpoint.open_shells == 0
    pool.close()  # a broken pool closes without a request
    assert endpoint.counters.get("Delete").requests == 0


def test_flapping_per_request(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    endpoint.faults.inject(FaultKind.FLAP, count=4)
    wsman = _client(sim, endpoint)
    outcomes = []
    for _ in range(4):
        try:
            wsman.get_server_config()
            outcomes.append("up")
        except requests.exceptions.ConnectionError:
            outcomes.append("down")
    assert outcomes == ["down", "up", "down", "up"]
    assert endpoint.faults.active() == []


def test_flapping_per_time_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("winsim.faults.time.monotonic", lambda: now[0])
    plan = FaultPlan()
    plan.inject(FaultKind.FLAP, period=10)
    seen = []
    for t in (100.0, 105.0, 111.0, 119.0, 121.0):
        now[0] = t
        seen.append(plan.take("Receive", True) is not None)
    assert seen == [True, True, False, False, True]


def test_fault_filters_and_counts() -> None:
    plan = FaultPlan()
    plan.inject(FaultKind.WSMAN_FAULT, count=2, actions={"Command"})
    plan.inject(FaultKind.SHELL_LOST)
    assert plan.take("Create", False) is None
    fault = plan.take("Command", True)
    assert fault is not None
    assert fault.kind == FaultKind.WSMAN_FAULT
    assert plan.take("Command", True) is not None
    lost = plan.take("Command", True)
    assert lost is not None
    assert lost.kind == FaultKind.SHELL_LOST
    assert plan.hits() == 3
    plan.clear(FaultKind.SHELL_LOST)
    assert plan.active() == []
    with pytest.raises(ValueError, match="count"):
        plan.inject(FaultKind.REFUSE, count=0)


# --- counters ------------------------------------------------------------------------------


def test_counters_count_and_reset(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    with RunspacePool(_client(sim, endpoint)) as pool:
        for _ in range(2):
            ps = PowerShell(pool)
            ps.add_script("x")
            ps.invoke()
    counts = endpoint.counters.by_action()
    assert set(counts) == {"Create", "Receive", "Command", "Delete"}
    assert counts["Receive"].requests >= 3
    total = endpoint.counters.total()
    assert total.requests == sum(c.requests for c in counts.values())
    assert total.bytes_in > 0
    assert total.bytes_out > 0
    endpoint.counters.reset()
    assert endpoint.counters.total() == ActionCounts()


# --- ansible's psrp connection plugin ------------------------------------------------------


def test_ansible_psrp_connection_plugin(sim: SimServerThread, endpoint: HostEndpoint) -> None:
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader

    connection = connection_loader.get("psrp", PlayContext(), None)
    connection.set_options(
        direct={
            "remote_addr": endpoint.address,
            "port": endpoint.port,
            "protocol": "http",
            "remote_user": USER,
            "remote_password": PASSWORD,
            "auth": "basic",
            "message_encryption": "never",
            "operation_timeout": 2,
            "read_timeout": 5,
        }
    )
    try:
        # a module run: the bootstrap script as -EncodedCommand, the exec payload as input lines
        script = base64.b64encode("stub-exit 4".encode("utf-16-le")).decode()
        payload = b'{"name":"exec_wrapper"}\n\0\0\0\0\n{"scripts":{}}'
        rc, stdout, stderr = connection.exec_command(
            f"powershell.exe -NoProfile -NonInteractive -EncodedCommand {script}", in_data=payload
        )
        assert rc == 4
        echo = json.loads(stdout)
        assert echo["input"] == ['{"name":"exec_wrapper"}', "\0\0\0\0", '{"scripts":{}}']
        assert echo["commands"][0]["text"] == "stub-exit 4"
        assert stderr == b""
        # a raw command: the script gets "exit $LASTEXITCODE", input lines stay bytes
        rc, stdout, _ = connection.exec_command("stub-exit 0", in_data=b"line0\nline1")
        assert rc == 0
        echo = json.loads(stdout)
        assert echo["commands"][0]["text"] == "stub-exit 0\nexit $LASTEXITCODE"
        assert echo["input"] == [{"bytes": "line0"}, {"bytes": "line1"}]
        assert endpoint.open_shells == 1
    finally:
        connection.close()
    assert endpoint.open_shells == 0


# --- the asyncio API, on the test's own loop ---------------------------------------------------


async def test_sim_server_on_the_running_loop() -> None:
    async with SimServer(stub_executor) as server:
        endpoint = await server.add_host("onloop", StubHost(), username=USER, password=PASSWORD)

        def run_one() -> list[Any]:
            with RunspacePool(client_for(endpoint, USER, PASSWORD, **FAST)) as pool:
                ps = PowerShell(pool)
                ps.add_script("x")
                return ps.invoke()

        assert len(await asyncio.to_thread(run_one)) == 1
        # from the loop itself a REFUSE fault cannot block: the port closes soon after
        endpoint.faults.inject(FaultKind.REFUSE)
        deadline = asyncio.get_running_loop().time() + 10
        while endpoint.listening:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(requests.exceptions.ConnectionError):
            await asyncio.to_thread(run_one)
        assert endpoint.open_shells == 0
