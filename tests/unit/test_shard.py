"""Sharding by rendezvous hashing: a partition, stable across processes, and minimal moves."""

from __future__ import annotations

import subprocess
import sys

import pytest
from winasync_eda.config import ConfigError, parse_args
from winasync_eda.shard import Shard, ShardError, owner, parse, select

from tests.paths import REPO

NAMES = [f"win{i:05d}" for i in range(10_000)]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16])
def test_every_host_is_in_exactly_one_shard(count: int) -> None:
    shards = [set(select(NAMES, Shard(i, count))) for i in range(1, count + 1)]
    assert sum(len(s) for s in shards) == len(NAMES)
    assert set().union(*shards) == set(NAMES)
    # balanced: each shard within 10 % of its fair share at 10,000 hosts
    fair = len(NAMES) / count
    assert all(abs(len(s) - fair) < 0.1 * fair for s in shards), [len(s) for s in shards]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 9])
def test_growing_by_one_shard_moves_about_one_in_n_plus_one(count: int) -> None:
    before = {name: owner(name, count) for name in NAMES}
    after = {name: owner(name, count + 1) for name in NAMES}
    moved = [name for name in NAMES if before[name] != after[name]]
    # only to the new shard: no host moves between the old ones
    assert all(after[name] == count + 1 for name in moved)
    share = len(moved) / len(NAMES)
    expected = 1 / (count + 1)
    assert abs(share - expected) < 0.02, (share, expected)


def test_the_split_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the shard must not depend on it
    code = (
        "from winasync_eda.shard import owner;"
        "print(','.join(str(owner(f'win{i:05d}', 5)) for i in range(200)))"
    )
    root = REPO
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(root / "extensions" / "eda")},
    ).stdout.strip()
    assert out == ",".join(str(owner(f"win{i:05d}", 5)) for i in range(200))


def test_known_assignments_do_not_change() -> None:
    # pinned: a change of hash would silently reshuffle every fleet on upgrade
    assert [owner(f"win{i:02d}", 3) for i in range(1, 11)] == [3, 3, 1, 2, 3, 2, 2, 3, 2, 2]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)), (" 3 / 3 ", Shard(3, 3))],
)
def test_parse_accepts_i_of_n(raw: str, expected: Shard) -> None:
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("0/3", "index must be from 1 to 3"),
        ("4/3", "index must be from 1 to 3"),
        ("1/0", "count must be from 1 to"),
        ("2", 'must be "i/n"'),
        ("a/b", 'must be "i/n"'),
        ("-1/3", 'must be "i/n"'),
        (2, 'must be "i/n"'),
        ("1.5/3", 'must be "i/n"'),
    ],
)
def test_parse_rejects_bad_values(raw: object, problem: str) -> None:
    with pytest.raises(ShardError, match=problem):
        parse(raw)


def test_the_source_keeps_only_its_shard() -> None:
    hosts = [f"win{i:03d}" for i in range(60)]
    kept: list[str] = []
    for index in (1, 2, 3):
        cfg = parse_args({"hosts": hosts, "connection": "local", "shard": f"{index}/3"})
        assert cfg.shard == Shard(index, 3)
        assert cfg.hosts_total == 60
        kept += [h.name for h in cfg.hosts]
    assert sorted(kept) == hosts


def test_a_bad_shard_names_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"^async_jobs: shard: shard index must be from 1 to 3"):
        parse_args({"hosts": ["win01"], "connection": "local", "shard": "4/3"})
