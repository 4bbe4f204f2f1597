"""Legacy (2.15-2.18) job files are written in the host's ANSI code page: the host reports it and
the source decodes with it (it decoded every host as cp1252)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sim_thread import SimServerThread
from tests.sim.source_on_sim import running_source, source_args
from tests.waiting import async_wait_until
from winsim.host import SimHost

pytestmark = pytest.mark.sim
PASSWORD = "Cp-Passw0rd!"


@pytest.mark.parametrize(
    ("codepage", "text"), [(1251, "Привет, мир"), (932, "こんにちは世界"), (1252, "café crème")]
)
async def test_a_legacy_file_decodes_with_the_hosts_code_page(
    sim: SimServerThread, tmp_path: Path, codepage: int, text: str
) -> None:
    host = SimHost(f"cp{codepage}", tmp_path)
    host.ansi_codepage = codepage
    host.attach_loop(sim.loop)
    ep = sim.add_host(f"codepage-{codepage}", host, username="ansible", password=PASSWORD)
    jid = sim.call(_start(host, text))
    async with running_source(sim, ep, source_args(ep, host.name, PASSWORD)) as events:
        await async_wait_until(lambda: events.with_status("finished"), 20, "the finished event")
    data = host.jobs[jid].path.read_bytes()
    assert text.encode(f"cp{codepage}") in data  # written as 5.1's Set-Content writes it
    (event,) = events.with_status("finished")
    assert event["stdout"] == text


async def _start(host: SimHost, text: str) -> str:
    return host.start_job("finished", 0.3, stdout=text, generation="2.18")
