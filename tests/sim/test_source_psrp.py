"""The source's PSRP backend against simulated hosts: the real pypsrp client over HTTPS with
certificate validation on, every status of the contract, faults and recovery."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.sim_thread import SimServerThread
from tests.sim.source_on_sim import source_draining_into
from tests.waiting import async_wait_until
from winsim.host import SimHost
from winsim.server import HostEndpoint

pytestmark = pytest.mark.sim
PASSWORD = "S3cret-Pa55-never-logged"


@dataclass
class Watched:
    """Simulated hosts and the events the source emitted for them."""

    sim: SimServerThread
    hosts: dict[str, SimHost]
    endpoints: dict[str, HostEndpoint]
    events: list[dict[str, Any]] = field(default_factory=list)

    def jobs(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for e in self.events:
            if "async_job" in e:
                j = e["async_job"]
                out.setdefault((j["host"], j["jid"]), []).append(j["status"])
        return out

    def status_of(self, host: str, jid: str) -> list[str]:
        return self.jobs().get((host, jid), [])


_counter = iter(range(10_000))


@contextlib.asynccontextmanager
async def watching(
    sim: SimServerThread,
    tmp: Path,
    names: list[str],
    *,
    auth: str = "basic",
    https: bool = True,
    **args: Any,
) -> AsyncIterator[Watched]:
    """The source watching simulated hosts; ``auth`` ``negotiate`` or ``ntlm``: the hosts
    take Negotiate, sealed over HTTP (``https`` False) or bound over HTTPS."""
    hosts: dict[str, SimHost] = {}
    endpoints: dict[str, HostEndpoint] = {}
    specs = []
    for base in names:
        name = f"{base}-{next(_counter)}"
        host = SimHost(base, tmp / name)
        host.attach_loop(sim.loop)
        host_auth = "negotiate" if auth == "ntlm" else auth
        ep = sim.add_host(
            name, host, username="ansible", password=PASSWORD, https=https, auth=host_auth
        )
        hosts[base], endpoints[base] = host, ep
        specs.append({"name": base, "address": ep.address, "port": ep.port})
    watched = Watched(sim, hosts, endpoints)
    source_args = {
        "hosts": specs,
        "username": "ansible",
        "password": PASSWORD,
        "auth": auth,
        "protocol": "https" if https else "http",
        "cert_validation": str(sim.ca_bundle),
        "interval": 0.3,
        "backoff_max": 1.0,
        "read_timeout": 4,
        "operation_timeout": 2,
        "poll_timeout": 10,
        **args,
    }
    try:
        async with source_draining_into(source_args, watched.events):
            yield watched
    finally:
        for base, ep in endpoints.items():
            ep.faults.clear()
            sim.remove_host(ep.name)
            host = hosts[base]
            for job in list(host.jobs.values()):
                host.call(job.kill)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("generation", ["2.18", "2.19-ps51", "2.19-pwsh7"])
async def test_every_outcome_of_each_generation(
    sim: SimServerThread, tmp_path: Path, generation: str
) -> None:
    async with watching(sim, tmp_path, ["win01"]) as w:
        h = w.hosts["win01"]
        ok = h.start_job("finished", 0.3, stdout="héllo wörld", generation=generation)
        bad = h.start_job("failed", 0.3, rc=3, generation=generation)
        slow = h.start_job("timed_out", 0.3, generation=generation)
        orphan = h.start_job("orphaned", 0.3, generation=generation)
        await async_wait_until(lambda: len(w.jobs()) == 4, 30, "four outcomes")
    assert w.status_of("win01", ok) == ["finished"]
    assert w.status_of("win01", bad) == ["failed"]
    assert w.status_of("win01", slow) == ["timed_out"]
    assert w.status_of("win01", orphan) == ["lost"]
    by_jid = {e["async_job"]["jid"]: e["async_job"] for e in w.events}
    assert by_jid[ok]["stdout"].startswith("héllo wörld")
    assert by_jid[bad]["rc"] == 3
    assert by_jid[ok]["results_file"] == f"C:\\Users\\ansible\\.ansible_async\\{ok}"
    assert by_jid[ok]["async_dir"] == "%USERPROFILE%\\.ansible_async"
    assert "watchdog" in by_jid[orphan]["msg"]


async def test_reboot_makes_running_jobs_lost(sim: SimServerThread, tmp_path: Path) -> None:
    async with watching(sim, tmp_path, ["win01"]) as w:
        h = w.hosts["win01"]
        jid = h.start_job("finished", 600)
        await async_wait_until(lambda: w.endpoints["win01"].counters.requests > 6, 20, "polls")
        h.reboot()
        await async_wait_until(
            lambda: w.status_of("win01", jid) == ["lost"], 30, "lost after reboot"
        )
    event = next(e["async_job"] for e in w.events if e["async_job"]["jid"] == jid)
    assert "reboot" in event["msg"]
    assert event["failed"] is True


async def test_running_and_vanished_when_asked(sim: SimServerThread, tmp_path: Path) -> None:
    async with watching(sim, tmp_path, ["win01"], emit=["running", "vanished", "finished"]) as w:
        h = w.hosts["win01"]
        jid = h.start_job("finished", 600)
        await async_wait_until(lambda: w.status_of("win01", jid) == ["running"], 20, "running")
        (h.async_dir_path / jid).unlink()
        await async_wait_until(
            lambda: w.status_of("win01", jid) == ["running", "vanished"], 20, "vanished"
        )


async def test_unreachable_host_recovers_without_delaying_others(
    sim: SimServerThread, tmp_path: Path
) -> None:
    async with watching(sim, tmp_path, ["down", "up"], host_events=True) as w:
        w.endpoints["down"].faults.inject("refuse")
        late = w.hosts["down"].start_job("finished", 0.2)
        early = w.hosts["up"].start_job("finished", 0.2)
        await async_wait_until(lambda: w.status_of("up", early) == ["finished"], 20, "healthy host")
        await async_wait_until(
            lambda: any(e.get("async_host", {}).get("status") == "unreachable" for e in w.events),
            20,
            "unreachable event",
        )
        assert w.status_of("down", late) == []
        w.endpoints["down"].faults.clear()
        await async_wait_until(lambda: w.status_of("down", late) == ["finished"], 30, "recovered")
    statuses = [e["async_host"]["status"] for e in w.events if "async_host" in e]
    assert statuses == ["unreachable", "recovered"]


@pytest.mark.parametrize("fault", ["pool_broken", "shell_lost", "wsman_fault", "drop"])
async def test_pool_is_rebuilt_after_a_fault(
    sim: SimServerThread, tmp_path: Path, fault: str
) -> None:
    async with watching(sim, tmp_path, ["win01"]) as w:
        ep = w.endpoints["win01"]
        await async_wait_until(lambda: ep.counters.get("Create").requests >= 1, 20, "a pool")
        ep.faults.inject(fault, count=1)
        await async_wait_until(lambda: ep.faults.hits(fault) >= 1, 20, "the fault hit")
        jid = w.hosts["win01"].start_job("failed", 0.2, rc=2)
        await async_wait_until(
            lambda: w.status_of("win01", jid) == ["failed"], 30, "event after fault"
        )
        assert ep.counters.get("Create").requests >= 2  # a new pool was opened
        assert ep.open_shells <= 1
    assert ep.open_shells == 0  # closed on cancel


async def test_shells_left_open_by_failed_pools_are_deleted_later(
    sim: SimServerThread, tmp_path: Path
) -> None:
    async with watching(sim, tmp_path, ["win01"]) as w:
        ep = w.endpoints["win01"]
        await async_wait_until(lambda: ep.open_shells == 1, 20, "a pool")
        # polls fail and so does the Delete of each failed pool: shells pile up on the host
        ep.faults.inject("wsman_fault", actions={"Command", "Delete"})
        await async_wait_until(lambda: ep.open_shells >= 3, 30, "abandoned shells")
        ep.faults.clear()
        jid = w.hosts["win01"].start_job("finished", 0.1)
        await async_wait_until(lambda: w.status_of("win01", jid) == ["finished"], 30, "recovered")
        await async_wait_until(lambda: ep.open_shells == 1, 20, "only the live pool left")
    assert ep.open_shells == 0


async def test_one_pipeline_per_poll_whatever_the_job_count(
    sim: SimServerThread, tmp_path: Path
) -> None:
    async with watching(sim, tmp_path, ["win01"], interval=0.2) as w:
        h, ep = w.hosts["win01"], w.endpoints["win01"]
        jids = [h.start_job("finished", 0.1) for _ in range(25)]
        await async_wait_until(lambda: len(w.jobs()) == 25, 30, "25 events")
        ep.counters.reset()
        await async_wait_until(lambda: ep.counters.get("Command").requests >= 5, 20, "five polls")
        commands = ep.counters.get("Command").requests
        creates = ep.counters.get("Create").requests
    assert sorted(w.jobs()) == sorted(("win01", j) for j in jids)
    assert creates == 0  # the pool stays open across polls
    assert commands >= 5


async def test_wrong_password_backs_off_and_never_leaks(
    sim: SimServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with watching(sim, tmp_path, ["win01"], auth_backoff=3600, host_events=True) as w:
        ep = w.endpoints["win01"]
        ep.faults.inject("unauthorized")
        await async_wait_until(lambda: ep.faults.hits("unauthorized") >= 1, 20, "a 401")
        hits = ep.faults.hits("unauthorized")
        other_requests = ep.counters.requests
        await async_wait_until(lambda: any("async_host" in e for e in w.events), 20, "host event")
    assert ep.faults.hits("unauthorized") == hits  # no retry storm: one long backoff
    assert ep.counters.requests <= other_requests + 2
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in repr(e) for e in w.events)
