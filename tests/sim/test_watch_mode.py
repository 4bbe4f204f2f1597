"""Watch mode against simulated hosts, with each PSRP client (the asyncio one and pypsrp's
threads, ``backend``) and, for the waiting scenarios, each way of logging on (Basic over HTTPS,
Negotiate sealed over HTTP or bound over HTTPS, ``client``): one waiting poll parked per host,
outcomes as soon as they are written, a cancel that ends every waiting pipeline at once, shells
that idle out, and MaxShellsPerUser after a killed source."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pypsrp.exceptions import WSManFaultError
from pypsrp.powershell import RunspacePool
from winasync_eda.source import BACKEND_ENV

from harness.sim_thread import SimServerThread, client_for
from tests.paths import REPO
from tests.sim.test_source_psrp import PASSWORD, watching
from tests.waiting import async_wait_until, wait_until
from winsim.host import SimHost
from winsim.wsman import ERROR_QUOTA_MAX_SHELLS

pytestmark = pytest.mark.sim

# the wait, the parked Receive's OperationTimeout above it, the read timeout above that
WATCH: dict[str, Any] = {
    "mode": "watch",
    "watch_wait": 20,
    "operation_timeout": 25,
    "read_timeout": 30,
    "poll_timeout": 30,
}


@pytest.fixture(params=["aio", "pypsrp"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The PSRP client watch mode runs on (a source started as a child inherits it too)."""
    monkeypatch.setenv(BACKEND_ENV, request.param)
    return str(request.param)


@dataclass(frozen=True)
class Client:
    """A PSRP client and how it logs on: Basic over HTTPS, or Negotiate (NTLM) sealed over
    HTTP or bound to the certificate over HTTPS."""

    backend: str
    auth: str
    https: bool

    @property
    def wire(self) -> dict[str, Any]:
        return {"auth": self.auth, "https": self.https}


CLIENTS = [
    Client("aio", "basic", True),
    Client("aio", "negotiate", False),
    Client("aio", "negotiate", True),
    Client("pypsrp", "basic", True),
    Client("pypsrp", "negotiate", False),
]


@pytest.fixture(
    params=CLIENTS,
    ids=[f"{c.backend}-{c.auth}-{'https' if c.https else 'http'}" for c in CLIENTS],
)
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Client:
    """``backend``, with each way of logging on."""
    chosen: Client = request.param
    monkeypatch.setenv(BACKEND_ENV, chosen.backend)
    return chosen


def _client_log(backend: str) -> str:
    return "on asyncio" if backend == "aio" else "on pypsrp threads"


async def test_outcomes_arrive_while_the_polls_wait(
    sim: SimServerThread, tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="winasync_eda.source")
    async with watching(sim, tmp_path, ["win01"], **client.wire, **WATCH) as w:
        h, ep = w.hosts["win01"], w.endpoints["win01"]
        await async_wait_until(lambda: h.waiting_polls == 1, 20, "a poll waiting on the host")
        assert f"1 hosts {_client_log(client.backend)}" in caplog.text
        commands = ep.counters.get("Command").requests
        ok = h.start_job("finished", 0.3)
        bad = h.start_job("failed", 0.3, rc=3)
        slow = h.start_job("timed_out", 0.3)
        # orphaned once the first wait on it began (a watchdog dead before that is seen
        # when that wait ends: docs/poll-protocol.md)
        orphan = h.start_job("orphaned", 3.0)
        # far within the 20 s wait: the waiting poll answered because the files changed
        await async_wait_until(lambda: len(w.jobs()) == 4, 10, "four outcomes")
        assert w.status_of("win01", ok) == ["finished"]
        assert w.status_of("win01", bad) == ["failed"]
        assert w.status_of("win01", slow) == ["timed_out"]
        assert w.status_of("win01", orphan) == ["lost"]
        # settled again: one poll parked, not a stream of them
        await async_wait_until(lambda: h.waiting_polls == 1, 10, "the poll waits again")
        assert ep.counters.get("Command").requests - commands < 15
        assert ep.service.idle_timeouts() == [180.0]


async def test_a_cancel_ends_every_waiting_pipeline_within_seconds(
    sim: SimServerThread, tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"win{i:02d}" for i in range(5)]
    args = {**WATCH, "watch_wait": 50, "operation_timeout": 55, "read_timeout": 65}
    async with watching(sim, tmp_path, names, **client.wire, host_events=True, **args) as w:
        await async_wait_until(
            lambda: all(h.waiting_polls == 1 for h in w.hosts.values()), 30, "five waiting polls"
        )
        # watching() cancels the source on exit: time it from here
        started = time.monotonic()
        deletes = sum(ep.counters.get("Delete").requests for ep in w.endpoints.values())
    elapsed = time.monotonic() - started
    assert all(h.waiting_polls == 0 for h in w.hosts.values())
    assert all(ep.open_shells == 0 for ep in w.endpoints.values())
    # a Delete per host ended its shell and the pipeline waiting in it (pypsrp's pool.close()
    # may send another, which the host refuses: the shell is gone)
    sent = sum(ep.counters.get("Delete").requests for ep in w.endpoints.values()) - deletes
    assert sent == 5 if client.backend == "aio" else sent >= 5
    assert elapsed < 5, f"cancel took {elapsed:.1f} s"
    # the polls ended by the cancel are no failures of the hosts (no log, no host event)
    assert [e for e in w.events if "async_host" in e] == []
    assert "poll failed" not in caplog.text


def test_the_host_refuses_a_shell_past_max_shells_per_user(
    sim: SimServerThread, tmp_path: Path
) -> None:
    host = SimHost("win01", tmp_path)
    host.max_shells_per_user = 2
    ep = sim.add_host("quota", host, username="ansible", password=PASSWORD)
    pools = []
    try:
        for _ in range(2):
            pool = RunspacePool(client_for(ep, "ansible", PASSWORD), idle_timeout=60)
            pool.open()
            pools.append(pool)
        with pytest.raises(WSManFaultError) as caught:
            RunspacePool(client_for(ep, "ansible", PASSWORD)).open()
        assert caught.value.code == ERROR_QUOTA_MAX_SHELLS
        assert "maximum number of 2 concurrent shells" in str(caught.value.reason)
    finally:
        for pool in pools:
            pool.close()
        sim.remove_host("quota")


def test_an_idle_shell_is_closed_after_its_idle_timeout(
    sim: SimServerThread, tmp_path: Path
) -> None:
    host = SimHost("win01", tmp_path)
    ep = sim.add_host("idle", host, username="ansible", password=PASSWORD)
    try:
        pool = RunspacePool(client_for(ep, "ansible", PASSWORD), idle_timeout=30)
        pool.open()
        # asked 30 s: the endpoint's minimum, 60 s, applies
        assert ep.service.idle_timeouts() == [60.0]
        pool.close()
        # a minute is long for a test: a host whose endpoint allows at most 2 s
        host.max_idle_timeout_s = 2.0
        pool = RunspacePool(client_for(ep, "ansible", PASSWORD), idle_timeout=60)
        pool.open()
        assert ep.service.idle_timeouts() == [2.0]
        wait_until(lambda: ep.open_shells == 0, 10, what="the idle shell closed")
        with pytest.raises(WSManFaultError):
            pool.close()  # the host forgot the shell
    finally:
        sim.remove_host("idle")


def test_a_killed_source_leaves_its_shells_and_a_restart_works_at_once(
    sim: SimServerThread, tmp_path: Path, backend: str
) -> None:
    with _fleet(sim, tmp_path, "kill", 3, max_shells_per_user=2) as hosts:
        args_file = _args_file(
            sim, tmp_path, hosts, watch_wait=50, operation_timeout=55, read_timeout=65
        )
        first = _source(args_file, tmp_path / "first.jsonl")
        try:
            wait_until(
                lambda: all(h.waiting_polls == 1 for h in hosts.values()), 30, what="waiting"
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        # killed: nobody deleted the shells, and their pipelines still wait on the hosts
        assert all(sim.endpoint(n).open_shells == 1 for n in hosts)
        second = _source(args_file, tmp_path / "second.jsonl")
        try:
            jids = {name: h.start_job("finished", 0.2) for name, h in hosts.items()}
            wait_until(
                lambda: len(_events(tmp_path / "second.jsonl")) == 3, 30, what="three events"
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        assert _outcomes(tmp_path / "second.jsonl") == set(jids.items())
        # the second source closed its own shells; the first one's wait for the idle timeout
        assert all(sim.endpoint(n).open_shells == 1 for n in hosts)


# 500 hosts: on pypsrp a source opens them at about 10 a second of a core (its threads), so
# these deadlines are generous; "at once" means without waiting for the old shells to go
FLEET_DEADLINE_S = 180.0
# without a state file, the killed source's shells idle out after this (s)
SHORT_IDLE_S = 40.0


@pytest.mark.slow
@pytest.mark.parametrize("state_file", [True, False], ids=["state_file", "no_state_file"])
def test_500_hosts_a_killed_source_its_shells_and_a_restart(
    sim: SimServerThread, tmp_path: Path, backend: str, state_file: bool
) -> None:
    """The issue's case: killed while 500 pipelines wait, the source leaves 500 shells. The
    restart works at once, and the old shells go. With the state file naming them, the restart
    deletes them before it opens its own: these hosts allow one shell (MaxShellsPerUser 1) and
    would keep the old one 10 minutes. Without, the hosts allow two, and the old shells go
    after the hosts' idle timeout (short here) while the live ones stay."""
    count = 500
    state = tmp_path / "state.json" if state_file else None
    if state is not None:
        attrs = {"max_shells_per_user": 1, "min_idle_timeout_s": 600.0}
        timeouts = {"watch_wait": 50, "operation_timeout": 55, "read_timeout": 65}
    else:
        # the live source's Receives come far within the idle timeout: its shells stay
        attrs = {"max_shells_per_user": 2, "max_idle_timeout_s": SHORT_IDLE_S}
        timeouts = {"watch_wait": 20, "operation_timeout": 25, "read_timeout": 30}
    with _fleet(sim, tmp_path, "big", count, **attrs) as hosts:
        args_file = _args_file(sim, tmp_path, hosts, state, max_concurrency=100, **timeouts)
        first = _source(args_file, tmp_path / "first.jsonl")
        try:
            wait_until(
                lambda: all(h.waiting_polls == 1 for h in hosts.values()),
                FLEET_DEADLINE_S,
                what="500 waiting polls",
                step=0.2,
            )
            if state is not None:
                wait_until(
                    lambda: _recorded(state) == _open(sim, hosts), 20, "500 shells recorded", 0.2
                )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        left = _open(sim, hosts)
        assert all(len(ids) == 1 for ids in left.values()), "one shell left on each host"
        deletes = _deletes(sim, hosts)
        second = _source(args_file, tmp_path / "second.jsonl")
        try:
            jids = {name: h.start_job("finished", 0.2) for name, h in hosts.items()}
            wait_until(
                lambda: len(_events(tmp_path / "second.jsonl")) == count,
                FLEET_DEADLINE_S,
                "an event from every host",
                step=0.2,
            )
            if state is not None:
                wait_until(lambda: _none_left(sim, left), 30, "the old shells deleted", 0.2)
                # by the restart: one Delete per old shell (they would idle out in 10 minutes)
                assert _deletes(sim, hosts) - deletes >= count
            else:
                wait_until(
                    lambda: _none_left(sim, left), SHORT_IDLE_S + 50, "the old shells idle out", 0.2
                )
            now = _open(sim, hosts)
            assert all(len(ids) == 1 for ids in now.values()), "only the live shell on each host"
            if state is not None:
                wait_until(lambda: _recorded(state) == now, 20, "the live shells recorded", 0.2)
            else:
                # the live shells outlived the short idle timeout: the source still works
                late = {hosts[name].start_job("finished", 0.1) for name in list(hosts)[:5]}
                wait_until(lambda: late <= _jids(tmp_path / "second.jsonl"), 30, "later events")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        assert set(jids.items()) <= _outcomes(tmp_path / "second.jsonl")
        if state is not None:
            # the stop deleted the shells; any it could not in time is recorded for the next
            recorded = _recorded(state)
            assert all(ids <= recorded.get(n, set()) for n, ids in _open(sim, hosts).items())


def test_a_crash_loop_with_a_state_file_keeps_one_shell_per_host(
    sim: SimServerThread, tmp_path: Path, backend: str
) -> None:
    """Killed four times in a row, faster than any idle timeout, with MaxShellsPerUser 2:
    each life deletes what the one before it left, so each works at once, with one pool per
    host per life (a Create refused for the quota would be retried: one more)."""
    lives = 4
    state = tmp_path / "state.json"
    with _fleet(sim, tmp_path, "loop", 3, max_shells_per_user=2) as hosts:
        args_file = _args_file(
            sim, tmp_path, hosts, state, watch_wait=50, operation_timeout=55, read_timeout=65
        )
        for life in range(lives):
            events = tmp_path / f"life{life}.jsonl"
            source = _source(args_file, events)
            try:
                jids = {h.start_job("finished", 0.1) for h in hosts.values()}
                wait_until(
                    lambda jids=jids, events=events: jids <= _jids(events),  # type: ignore[misc]
                    30,
                    what=f"life {life}: three events",
                )
                # the shells on the hosts are this life's, and the state file names them
                wait_until(lambda: _recorded(state) == _open(sim, hosts), 20, "shells recorded")
                assert all(len(ids) == 1 for ids in _open(sim, hosts).values())
            finally:
                source.send_signal(signal.SIGKILL)
                source.wait(10)
        assert all(sim.endpoint(n).counters.get("Create").requests == lives for n in hosts)
        assert all(sim.endpoint(n).open_shells == 1 for n in hosts)


@contextmanager
def _fleet(
    sim: SimServerThread, tmp_path: Path, prefix: str, count: int, **attrs: Any
) -> Iterator[dict[str, SimHost]]:
    """``count`` hosts on the module's server (one port each, one loop for all), with
    ``attrs`` set on each (its quotas); removed on exit."""
    hosts = {
        f"{prefix}{i:03d}": SimHost(f"{prefix}{i:03d}", tmp_path / "hosts") for i in range(count)
    }
    for host in hosts.values():
        for key, value in attrs.items():
            setattr(host, key, value)

    async def add_all() -> None:
        for name, host in hosts.items():
            await sim.server.add_host(name, host, username="ansible", password=PASSWORD)

    async def remove_all() -> None:
        for name in hosts:
            with contextlib.suppress(KeyError):
                await sim.server.remove_host(name)

    try:
        sim.call(add_all())
        yield hosts
    finally:
        sim.call(remove_all())


def _args_file(
    sim: SimServerThread,
    tmp_path: Path,
    hosts: dict[str, SimHost],
    state_file: Path | None = None,
    **options: Any,
) -> Path:
    """The source's arguments for these hosts (Basic over HTTP, watch mode), as a file."""
    specs = []
    for name in hosts:
        ep = sim.endpoint(name)
        specs.append({"name": name, "address": ep.address, "port": ep.port})
    args = {
        "hosts": specs,
        "username": "ansible",
        "password": PASSWORD,
        "auth": "basic",
        "protocol": "http",
        **WATCH,
        **options,
    }
    if state_file is not None:
        args["state_file"] = str(state_file)
    path = tmp_path / "args.json"
    path.write_text(json.dumps(args), encoding="utf-8")
    return path


def _deletes(sim: SimServerThread, hosts: dict[str, SimHost]) -> int:
    return sum(sim.endpoint(n).counters.get("Delete").requests for n in hosts)


def _open(sim: SimServerThread, hosts: dict[str, SimHost]) -> dict[str, set[str]]:
    """The ids of the shells open on each host."""
    return {name: set(sim.endpoint(name).service.shell_ids()) for name in hosts}


def _none_left(sim: SimServerThread, shells: dict[str, set[str]]) -> bool:
    """None of these shells is open any more on its host."""
    return all(not ids & set(sim.endpoint(n).service.shell_ids()) for n, ids in shells.items())


def _recorded(state: Path) -> dict[str, set[str]]:
    """The shells the state file names for each host (hosts without any left out)."""
    if not state.exists():
        return {}
    shells = json.loads(state.read_text(encoding="utf-8")).get("shells", {})
    return {host: {i.upper() for i in ids} for host, ids in shells.items() if ids}


def _jids(path: Path) -> set[str]:
    return {jid for unused, jid in _outcomes(path)}


def _outcomes(path: Path) -> set[tuple[str, str]]:
    """(host, jid) of each job event in an events file."""
    return {(e["async_job"]["host"], e["async_job"]["jid"]) for e in _events(path)}


def _source(args_file: Path, events: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.source_proc", str(args_file), str(events)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [line["event"] for line in lines if line["kind"] == "event"]


async def test_a_host_that_reboots_while_a_poll_waits(
    sim: SimServerThread, tmp_path: Path, client: Client
) -> None:
    async with watching(sim, tmp_path, ["win01"], **client.wire, **WATCH, interval=15) as w:
        h = w.hosts["win01"]
        jid = h.start_job("finished", 600)
        await async_wait_until(lambda: h.waiting_polls == 1, 20, "a poll waiting on the host")
        h.reboot()  # ends the shell and its pipeline; the job's watchdog dies with the host
        # the watch backoff starts at 1 s whatever the interval (15 s here)
        await async_wait_until(lambda: w.status_of("win01", jid) == ["lost"], 10, "lost")
        done = h.start_job("finished", 0.2)
        await async_wait_until(lambda: w.status_of("win01", done) == ["finished"], 10, "next")
    event = next(e["async_job"] for e in w.events if e["async_job"]["jid"] == jid)
    assert "reboot" in event["msg"]


async def test_a_connection_dropped_during_a_parked_receive(
    sim: SimServerThread, tmp_path: Path, client: Client
) -> None:
    async with watching(sim, tmp_path, ["win01"], **client.wire, **WATCH) as w:
        h, ep = w.hosts["win01"], w.endpoints["win01"]
        await async_wait_until(lambda: h.waiting_polls == 1, 20, "a poll waiting on the host")
        # the parked Receive's reply is cut mid-body when the change ends the wait
        ep.faults.inject("drop", actions={"Receive"}, count=1)
        jid = h.start_job("failed", 0.2, rc=4)
        await async_wait_until(lambda: ep.faults.hits("drop") == 1, 10, "the drop")
        await async_wait_until(lambda: w.status_of("win01", jid) == ["failed"], 15, "the event")
        # pypsrp sent the cut Receive again (same MessageID, same reply) or opened a new pool;
        # the asyncio client fails the poll, deletes the shell and opens a new pool: either
        # way one shell is left, and the host is watched again
        await async_wait_until(lambda: ep.open_shells == 1, 15, "one shell left")
        await async_wait_until(lambda: h.waiting_polls == 1, 15, "a poll waiting again")
    assert w.status_of("win01", jid) == ["failed"]
