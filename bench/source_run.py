"""Start ``bench.source_proc`` as a child process and read what it reports.

The arguments (they carry the sims' password) go to a 0600 file; the events, the CPU and RSS
samples come back as JSON lines in a file that this side tails.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ROOT
from harness.process import ChildProcess, Lifecycle, read_log

log = logging.getLogger(__name__)

EXIT_TIMEOUT_S = 60.0


def mode_args(mode: str, *, interval: float, watch_wait: float) -> dict[str, Any]:
    """The source's arguments for a mode: ``poll`` every ``interval`` s, or ``watch``, one
    waiting poll per host that waits up to ``watch_wait`` s (``interval`` unused)."""
    if mode == "watch":
        return {"mode": "watch", "watch_wait": watch_wait}
    return {"interval": interval}


def logon_env(auth: str) -> dict[str, str]:
    """What the source's environment needs for hosts that log on with ``auth``.

    The sim's Negotiate hosts speak NTLM only. Where the machine's krb5.conf names a realm whose
    KDC cannot be reached, pyspnego tries Kerberos first and takes about 5 s per context to fall
    back, so a fleet's first logons would measure that; ``KRB5_CONFIG=/dev/null``, as the README
    advises where NTLM is meant. Kerberos hosts get their realm's file from ``Kdc``.
    """
    return {"KRB5_CONFIG": os.devnull} if auth in ("negotiate", "ntlm") else {}


@dataclass(frozen=True)
class Arrival:
    """One job event as the child's queue handed it over."""

    t: float
    host: str
    jid: str
    status: str
    event: dict[str, Any] = field(repr=False)
    run: int = 0


@dataclass(frozen=True)
class Sample:
    t: float
    cpu_s: float
    rss_kb: int
    threads: int = 0


class EventFile:
    """The JSON lines written by one or more runs of the child (appended to the same file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrivals: list[Arrival] = []
        self.host_events: list[dict[str, Any]] = []
        self.samples: list[Sample] = []
        self.exits: list[dict[str, Any]] = []
        self.bad_lines = 0
        self.run = 0
        self._offset = 0
        self._partial = b""

    def read(self) -> None:
        """Take in the lines appended since the last call."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._take(line)

    def _take(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            self.bad_lines += 1
            return
        kind = record.get("kind")
        if kind == "start":
            self.run += 1
        elif kind == "event":
            event = record["event"]
            job = event.get("async_job")
            if isinstance(job, dict):
                self.arrivals.append(
                    Arrival(
                        record["t"],
                        str(job.get("host")),
                        str(job.get("jid")),
                        str(job.get("status")),
                        event,
                        self.run,
                    )
                )
            else:
                self.host_events.append(event)
        elif kind == "stats":
            self.samples.append(
                Sample(record["t"], record["cpu_s"], record["rss_kb"], record.get("threads", 0))
            )
        elif kind == "exit":
            self.exits.append(record)
            self.samples.append(Sample(record["t"], record["cpu_s"], record["rss_kb"]))

    def sample_at(self, t: float) -> Sample | None:
        """The first sample taken at or after ``t``."""
        for sample in self.samples:
            if sample.t >= t:
                return sample
        return None

    @property
    def max_threads(self) -> int:
        return max((s.threads for s in self.samples), default=0)

    @property
    def max_rss_kb(self) -> int:
        peaks = [s.rss_kb for s in self.samples] + [int(e.get("maxrss_kb", 0)) for e in self.exits]
        return max(peaks, default=0)


class SourceRun(Lifecycle):
    """One child process running the source; several may append to the same EventFile."""

    def __init__(
        self,
        workdir: Path,
        args: dict[str, Any],
        events: EventFile,
        tag: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: variables set in the child on top of this process's environment."""
        self.workdir = workdir
        self.args = args
        self.events = events
        self.tag = tag
        self.env = dict(env or {})
        self.process: ChildProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.tag}.log"

    def start(self) -> SourceRun:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args_path = self.workdir / f"{self.tag}.args.json"
        fd = os.open(args_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.args, fh)
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "bench.source_proc", str(args_path), str(self.events.path)]
        process = ChildProcess(cmd, log_path=self.log_path, env=env, cwd=ROOT, name=self.tag)
        self.process = process.start()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.running

    def wait_for(self, predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
        """Read the events until ``predicate`` holds; False after ``timeout`` or if the child died."""
        deadline = time.monotonic() + timeout
        while True:
            self.events.read()
            if predicate():
                return True
            if not self.alive or time.monotonic() >= deadline:
                self.events.read()
                return predicate()
            time.sleep(step)

    def stop(self) -> dict[str, Any] | None:
        """SIGTERM (the source is cancelled and closes its pools); the exit record, if any."""
        if self.process is None:
            return None
        before = len(self.events.exits)
        self.process.stop(EXIT_TIMEOUT_S)
        self.events.read()
        return self.events.exits[-1] if len(self.events.exits) > before else None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as after a crash or an OOM kill."""
        if self.process is not None:
            self.process.kill()
        self.events.read()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(read_log(self.log_path).splitlines()[-lines:])
