"""Split a fleet across n sources (``shard: "i/n"``) by rendezvous hashing on the host name.

Each host goes to the shard with the highest score ``H(shard, name)``. Every activation computes
the same answer from the name alone, with no list to share and no coordination: each host lands
in exactly one shard, and going from n to n+1 shards moves only the hosts that the new shard now
wins, about 1/(n+1) of them. The hash is BLAKE2b, not Python's ``hash()``, which is salted per
process and would give every activation a different split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

_SHARD_RE = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")
MAX_SHARDS = 1024


class ShardError(ValueError):
    """A malformed ``shard`` value; ``str(e)`` says what is wrong and what is expected."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        return owner(name, self.count) == self.index


def parse(raw: object) -> Shard:
    """``"i/n"`` with 1 <= i <= n; anything else raises ShardError."""
    text = raw if isinstance(raw, str) else None
    match = _SHARD_RE.match(text) if text is not None else None
    if match is None:
        raise ShardError(f'must be "i/n" (like "2/3": shard 2 of 3), got {raw!r}')
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"shard count must be from 1 to {MAX_SHARDS}, got {raw!r}")
    if not 1 <= index <= count:
        raise ShardError(f"shard index must be from 1 to {count}, got {raw!r}")
    return Shard(index, count)


def _score(shard: int, name: str) -> int:
    digest = hashlib.blake2b(f"{shard}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int) -> int:
    """The shard (1..count) that host ``name`` belongs to."""
    # ties (a 64-bit collision) go to the lower shard, the same way in every process
    return max(range(1, count + 1), key=lambda shard: (_score(shard, name), -shard))


def select(names: Iterable[str], shard: Shard) -> list[str]:
    """The names that belong to ``shard``, in their given order."""
    return [name for name in names if shard.owns(name)]
