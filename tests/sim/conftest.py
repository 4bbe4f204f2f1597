"""Shared fixtures of the simulated host's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.sim_thread import SimServerThread
from winsim.scripts.dispatch import execute


class FakeClock:
    """A host clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_795_886_400.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    """A simulated host server running the real scripts, one per test module (a module that
    needs another executor defines its own ``sim``)."""
    with SimServerThread(execute) as server:
        yield server
