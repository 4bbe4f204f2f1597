"""Hosts in Constrained Language Mode (App Control for Business, AppLocker): the poll says so
first, the source reports the host `unsupported` once and asks again rarely; a signed copy of the
script deployed on the host and run by path works there."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.transports import poll_wire

from harness.sim_thread import SimServerThread
from tests.sim.poll_params import poll_params
from tests.sim.source_on_sim import SourceEvents, running_source, source_args
from tests.waiting import async_wait_until
from winsim.api import Command, PipelineRequest
from winsim.host import SIGNATURE_BLOCK, SimHost
from winsim.scripts import poll as twin
from winsim.scripts.dispatch import execute
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim
PASSWORD = "Clm-Passw0rd!"
DEPLOYED = r"C:\ProgramData\winasync\poll.ps1"
PARAMS = poll_params({"max_bytes": 1_048_576})
CLM_ERROR = twin.UNSUPPORTED.format(mode="ConstrainedLanguage")


def deploy(host: SimHost, *, signed: bool) -> None:
    """What playbooks/deploy_poll_script.yml copies, then what Set-AuthenticodeSignature adds."""
    local = host.to_local(DEPLOYED)
    assert local is not None
    local.parent.mkdir(parents=True, exist_ok=True)
    text = poll_wire.POLL_SCRIPT
    if signed:
        text += f"\r\n{SIGNATURE_BLOCK}\r\n# MIIF...\r\n# SIG # End signature block\r\n"
    local.write_text(text, encoding="utf-8")


async def call(host: SimHost, text: str) -> Any:
    return await execute(host, PipelineRequest([Command(text, False, PARAMS)]))


async def test_the_poll_fails_first_with_the_language_mode(tmp_path: Path) -> None:
    host = SimHost("win01", tmp_path)
    host.language_mode = "ConstrainedLanguage"
    define = await execute(host, PipelineRequest([Command(poll_wire.DEFINE_SCRIPT, True)]))
    assert not define.failed  # defining a function is allowed in ConstrainedLanguage
    result = await call(host, poll_wire.FUNCTION)
    assert result.failed and result.errors == [CLM_ERROR]
    assert poll_wire.unsupported_reason(result.errors[0]) == CLM_ERROR.split("unsupported: ")[1]
    missing = await call(host, DEPLOYED)
    assert missing.failed and "is not recognized" in missing.errors[0]
    deploy(host, signed=False)  # an unsigned file runs in the session's mode
    assert (await call(host, DEPLOYED)).errors == [CLM_ERROR]
    deploy(host, signed=True)
    signed = await call(host, DEPLOYED)
    assert not signed.failed and signed.output and '"v":1' in signed.output[0]
    host.language_mode = "FullLanguage"
    assert not (await call(host, poll_wire.FUNCTION)).failed


@contextlib.asynccontextmanager
async def source(
    sim: SimServerThread, host: SimHost, **extra: Any
) -> AsyncIterator[tuple[SourceEvents, HostEndpoint]]:
    name = f"clm-{host.name}-{time.monotonic_ns()}"
    ep = sim.add_host(name, host, username="ansible", password=PASSWORD)
    args = source_args(
        ep, host.name, PASSWORD, interval=0.2, backoff_max=0.4, host_events=True, **extra
    )
    async with running_source(sim, ep, args) as events:
        yield events, ep


async def test_a_constrained_host_is_reported_unsupported_once_and_left_alone(
    sim: SimServerThread, tmp_path: Path
) -> None:
    """Old behaviour: the script failed at its first method call on every poll, at the backoff
    rate, forever, reported as an unreachable host."""
    host = SimHost("win01", tmp_path)
    host.language_mode = "ConstrainedLanguage"
    host.attach_loop(sim.loop)
    async with source(sim, host) as (events, ep):
        await async_wait_until(events.drain, 20, "a host event")
        commands = ep.counters.by_action()["Command"].requests
        # at backoff_max 0.4 s this would be about ten more polls
        with contextlib.suppress(AssertionError):
            await async_wait_until(lambda: events.drain()[1:], 4, "no second event")
        assert ep.counters.by_action()["Command"].requests == commands
    (event,) = [e["async_host"] for e in events]
    assert event["status"] == "unsupported"
    assert "ConstrainedLanguage" in event["error"] and "poll_script" in event["error"]


async def test_a_signed_deployed_script_run_by_path_reads_a_constrained_host(
    sim: SimServerThread, tmp_path: Path
) -> None:
    host = SimHost("win02", tmp_path)
    host.language_mode = "ConstrainedLanguage"
    host.attach_loop(sim.loop)
    deploy(host, signed=True)
    jid = sim.call(_start(host))
    async with source(sim, host, poll_script=DEPLOYED) as (events, _):
        await async_wait_until(events.drain, 20, "the finished event")
    (event,) = events
    assert event["async_job"]["jid"] == jid
    assert event["async_job"]["status"] == "finished"


async def _start(host: SimHost) -> str:
    return host.start_job("finished", 0.2)
