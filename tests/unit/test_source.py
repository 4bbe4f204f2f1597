"""The source's lifetime: cancellation closes every transport and flushes the checkpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import FakeHost, FakeTransport, finished
from tests.waiting import async_wait_until


async def test_cancel_closes_every_transport_and_flushes(tmp_path: Path) -> None:
    from winasync_eda import source

    hosts = [FakeHost("a"), FakeHost("b")]
    hosts[0].write("j1.1", finished("j1.1"))
    made: list[FakeTransport] = []

    def fake_transport(h: Any, cfg: Any, *unused: Any, **options: Any) -> FakeTransport:
        t = FakeTransport(next(x for x in hosts if x.name == h.name))
        made.append(t)
        return t

    queue: asyncio.Queue[Any] = asyncio.Queue()
    state = tmp_path / "s.json"
    mp = pytest.MonkeyPatch()
    mp.setattr(source, "make_transport", fake_transport)
    try:
        task = asyncio.create_task(
            source.run(
                queue,
                {
                    "hosts": [
                        {"name": "a", "password": "pw", "username": "u"},
                        {"name": "b", "password": "pw", "username": "u"},
                    ],
                    "interval": 0.05,
                    "state_file": str(state),
                },
            )
        )
        await async_wait_until(lambda: queue.qsize() == 1, 10, "an event")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        mp.undo()
    assert [h.closed for h in hosts] == [1, 1]
    assert "j1.1" in state.read_text()


@pytest.mark.parametrize(
    ("changes", "mode", "env", "expected"),
    [
        ({"auth": "basic", "protocol": "https"}, "watch", None, "aio"),
        ({"auth": "basic", "protocol": "http", "encryption": "never"}, "watch", None, "aio"),
        ({"auth": "basic", "protocol": "https"}, "watch", "aio", "aio"),
        ({"auth": "basic", "protocol": "https"}, "watch", "pypsrp", "pypsrp"),
        ({"auth": "basic", "protocol": "https"}, "poll", None, "pypsrp"),
        ({"auth": "ntlm"}, "watch", None, "aio"),
        ({"auth": "negotiate"}, "watch", "aio", "aio"),
        ({"auth": "negotiate", "protocol": "https"}, "watch", None, "aio"),
        ({"auth": "negotiate"}, "watch", "pypsrp", "pypsrp"),
        ({"auth": "negotiate"}, "poll", None, "pypsrp"),
        ({"auth": "negotiate", "proxy": "http://proxy:3128"}, "watch", None, "pypsrp"),
        ({"auth": "kerberos"}, "watch", None, "aio"),
        ({"auth": "credssp"}, "watch", None, "pypsrp"),
    ],
)
def test_watch_mode_runs_on_asyncio_where_it_supports_the_auth(
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    mode: str,
    env: str | None,
    expected: str,
) -> None:
    from winasync_eda import source
    from winasync_eda.config import parse_args

    from tests.unit.fakes import settings

    if env is None:
        monkeypatch.delenv(source.BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(source.BACKEND_ENV, env)
    cfg = parse_args({"hosts": [{"name": "me", "connection": "local"}], "mode": mode})
    backend, why = source.psrp_backend(settings(**changes), cfg)
    assert backend == expected, why
    if expected == "pypsrp" and mode == "watch" and env != "pypsrp":
        assert changes["auth"] in why


async def test_the_chosen_backend_builds_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    from winasync_eda import source
    from winasync_eda.config import parse_args
    from winasync_eda.transports.aio_http import HttpClient
    from winasync_eda.transports.aio_psrp import AioPsrpTransport
    from winasync_eda.transports.psrp import PsrpTransport

    from tests.unit.fakes import settings

    monkeypatch.delenv(source.BACKEND_ENV, raising=False)
    cfg = parse_args({"hosts": [{"name": "me", "connection": "local"}], "mode": "watch"})
    http = HttpClient()
    try:
        basic = source.make_transport(settings(auth="basic", protocol="https"), cfg, None, http)
        ntlm = source.make_transport(settings(auth="ntlm"), cfg, None, http)
        credssp = source.make_transport(settings(auth="credssp"), cfg, None, http)
        # the choice run() already made (and logged) is taken as it is, not made again
        monkeypatch.setattr(source, "psrp_backend", lambda *unused: pytest.fail("chosen twice"))
        chosen = source.make_transport(settings(auth="ntlm"), cfg, None, http, backend="pypsrp")
    finally:
        await http.close()
    assert isinstance(basic, AioPsrpTransport)
    assert basic.idle_timeout == source.IDLE_TIMEOUT_S
    assert isinstance(ntlm, AioPsrpTransport)
    assert isinstance(credssp, PsrpTransport)
    assert isinstance(chosen, PsrpTransport)
