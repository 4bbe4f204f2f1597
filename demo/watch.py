"""Follow what happens as it happens: new lines of ansible-rulebook's log and of the record file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# winasync_eda.delivery logs each event it put on the queue (ansible-rulebook -v)
EVENT_RE = re.compile(
    r"winasync_eda\.delivery - INFO - (?P<host>\S+): (?P<jid>j\d+\.\d+) (?P<status>\w+)$"
)
# the debug action of the shipped rulebook for async_host events
HOST_RE = re.compile(r"winasync\.eda: host (?P<host>\S+) is (?P<status>\w+)")
PLAY_RE = re.compile(r"^PLAY \[(?P<play>[^\]]+)\]")


class LineTail:
    """The complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]


@dataclass(frozen=True)
class Event:
    host: str
    jid: str
    status: str


@dataclass(frozen=True)
class HostEvent:
    host: str
    status: str


def parse_log_line(line: str) -> Event | HostEvent | None:
    if match := EVENT_RE.search(line):
        return Event(match["host"], match["jid"], match["status"])
    if match := HOST_RE.search(line):
        return HostEvent(match["host"], match["status"])
    return None


def parse_record(line: str) -> dict[str, Any] | None:
    """A record line of the playbooks (tasks/record.yml), or None for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "jid" in record else None
