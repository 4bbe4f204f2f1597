"""A Receive that the client gave up on is sent again with the same MessageID, and must get the
same reply: the `Fragment Id: 3 != Expected Fragment Id: 0` of a large answer after a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pypsrp.powershell import PowerShell, RunspacePool

from harness.sim_thread import SimServerThread, client_for
from winsim import psrp_session
from winsim.api import PipelineRequest, PipelineResult

pytestmark = pytest.mark.sim

USER = "ansible"
PASSWORD = "Resend-Passw0rd!"
BIG = "x" * (600 * 1024)  # six Receive replies at pypsrp's 150 KB envelope


async def big_answer(sim_host: Any, request: PipelineRequest) -> PipelineResult:
    return PipelineResult(output=[BIG])


@pytest.fixture
def sim() -> Iterator[SimServerThread]:
    with SimServerThread(big_answer) as server:
        yield server


def test_a_receive_sent_again_gets_the_same_data(
    sim: SimServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stalls (as it did serialising a 160 MB answer) after it took the first reply's
    fragments: pypsrp's read times out and it sends the same Receive again. Old behaviour: the
    second Receive got the next fragments, and pypsrp failed with `Fragment Fragment Id: 3 !=
    Expected Fragment Id: 0`."""
    endpoint = sim.add_host("win01", object(), username=USER, password=PASSWORD)
    real_take = psrp_session.PsrpShell._take
    stalled: list[int] = []

    def stalling_take(self: psrp_session.PsrpShell, pipeline_id: Any, limit: int) -> bytes:
        data = real_take(self, pipeline_id, limit)
        if data and pipeline_id is not None and not stalled:
            stalled.append(len(data))
            time.sleep(3.5)  # blocks the server's loop past the client's read timeout (1 + 2 s)
        return data

    monkeypatch.setattr(psrp_session.PsrpShell, "_take", stalling_take)
    wsman = client_for(
        endpoint, USER, PASSWORD, operation_timeout=1, read_timeout=3, reconnection_backoff=0.1
    )
    with RunspacePool(wsman) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Big")
        ps.begin_invoke()
        ps.end_invoke()
        assert not ps.had_errors
        assert ps.output == [BIG]
    assert stalled, "the stall never happened: the test proves nothing"
