"""Shared fixtures of the simulated host's tests."""

from __future__ import annotations

import pytest


class FakeClock:
    """A host clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_795_886_400.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
