"""mode and watch_wait: the waiting poll's timeouts above the wait, within WinRM's MaxTimeoutms."""

from __future__ import annotations

from pathlib import Path

import pytest
from winasync_eda.config import ConfigError, parse_args
from winasync_eda.source import idle_timeout

BASE = {"hosts": ["win01"], "username": "u", "password": "p-secret", "auth": "ntlm"}


def test_poll_is_the_default_mode_with_its_timeouts() -> None:
    cfg = parse_args(BASE)
    assert (cfg.mode, cfg.watch_wait) == ("poll", 50)
    assert (cfg.hosts[0].operation_timeout, cfg.hosts[0].read_timeout) == (20, 30)
    assert idle_timeout(cfg) == 180


def test_watch_mode_sets_the_timeouts_above_the_wait() -> None:
    cfg = parse_args({**BASE, "mode": "watch", "watch_wait": 30})
    host = cfg.hosts[0]
    assert (cfg.mode, cfg.watch_wait) == ("watch", 30)
    assert (host.operation_timeout, host.read_timeout) == (35, 45)
    assert idle_timeout(cfg) == 180


def test_inventory_timeouts_are_honoured_and_must_be_above_the_wait(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    win01:\n      ansible_psrp_operation_timeout: 58\n"
        "      ansible_psrp_read_timeout: 70\n    win02:\n"
        "      ansible_psrp_operation_timeout: 20\n",
        encoding="utf-8",
    )
    args = {"inventory": str(inventory), "username": "u", "password": "p-secret", "mode": "watch"}
    with pytest.raises(
        ConfigError,
        match=r"inventory host 'win02': ansible_psrp_operation_timeout: "
        r"operation_timeout \(20\) must be greater than watch_wait \(50\)",
    ):
        parse_args(args)
    cfg = parse_args({**args, "limit": "win01"})
    assert (cfg.hosts[0].operation_timeout, cfg.hosts[0].read_timeout) == (58, 70)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (
            {"mode": "push"},
            r"^async_jobs: mode: unknown mode 'push' \(expected one of: watch, poll\)",
        ),
        ({"watch_wait": 0}, r"^async_jobs: watch_wait: must be a number of seconds > 0"),
        ({"watch_wait": 56}, r"^async_jobs: watch_wait: must be from 1 to 55 seconds"),
        ({"watch_wait": "soon"}, r"^async_jobs: watch_wait: must be a number"),
    ],
)
def test_bad_mode_or_wait_names_the_argument(args: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_args({**BASE, **args})


def test_poll_mode_idle_timeout_outlives_three_intervals() -> None:
    assert idle_timeout(parse_args({**BASE, "interval": 120})) == 360
