"""Start and stop child processes, and leave nothing behind.

A child starts in a session (and process group) of its own, so a signal meant for it never hits
the test runner. Killing that group is not enough: ansible-rulebook starts ``ansible-playbook``
through ansible-runner, which gives each playbook a pseudo-terminal and a session of its own.
Every child therefore carries a unique marker in its environment, which its own children
inherit, and ``stop()``/``kill()`` end every live process that carries it (found in ``/proc``),
whatever its session or parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

log = logging.getLogger(__name__)

MARKER_VAR = "WINASYNC_HARNESS_RUN"
TERM_GRACE_S = 15.0
# a process forked between a scan of /proc and the signal is caught by the next scan
_KILL_ROUNDS = 50
# looks at /proc that must find no marked process before a tree counts as ended
_QUIET_LOOKS = 3
_QUIET_STEP_S = 0.05


class ProcessError(RuntimeError):
    """A child did not start, or outlived SIGKILL."""


class Lifecycle:
    """``start()`` and ``stop()``, and the ``with`` statement for them, written once."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout``; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def marked_pids(marker: str, var: str = MARKER_VAR) -> list[int]:
    """Live processes (zombies excluded) whose environment has ``var`` set to ``marker``."""
    needle = f"{var}={marker}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        # a zombie's environ reads empty: it is over, nothing to end
        if needle in environ.split(b"\0") and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def read_log(path: Path) -> str:
    """A log file as text so far ("" before it exists)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_marked(marker: str, sig: signal.Signals, var: str = MARKER_VAR) -> int:
    """Send ``sig`` to every live process that carries the marker; return how many got it."""
    sent = 0
    for pid in marked_pids(marker, var):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent += 1
    return sent


class ChildProcess(Lifecycle):
    """One command in its own process group, its output in ``log``, ended with its whole tree."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.cmd = [str(part) for part in cmd]
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.name = name or Path(self.cmd[0]).name
        self.marker = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        if self.proc is not None:
            raise ProcessError(f"{self.name} is already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        log.info("starting %s: %s", self.name, " ".join(self.cmd))
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env={**self.env, MARKER_VAR: self.marker},
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._close_log()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def text(self) -> str:
        """What the child wrote so far."""
        return read_log(self.log_path)

    def leftovers(self) -> list[int]:
        """Live processes of this child's tree (the child and whatever it started)."""
        return marked_pids(self.marker)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's process group."""
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = TERM_GRACE_S) -> int | None:
        """SIGTERM the child's group, wait ``grace`` seconds, then SIGKILL whatever is left."""
        if self.running and self.proc is not None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the whole tree at once, as a crash of the machine would; the exit code."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._kill_marked()
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
                log.error("%s (pid %d) did not end after SIGKILL", self.name, self.proc.pid)
        # a child forked just before the kill (ansible-runner's pexpect: setsid, then exec) can
        # be unreadable in /proc for one look while it execs; look again, after the wait
        self._kill_marked()
        self._close_log()
        left = self.leftovers()
        if left:  # pragma: no cover - only when SIGKILL is not delivered
            raise ProcessError(f"{self.name}: processes still alive after SIGKILL: {left}")
        return code

    def _kill_marked(self) -> None:
        """SIGKILL every marked process until :data:`_QUIET_LOOKS` looks in a row find none."""
        quiet = 0
        for _ in range(_KILL_ROUNDS):
            if signal_marked(self.marker, signal.SIGKILL):
                quiet = 0
                wait_until(lambda: not self.leftovers(), 5.0, step=0.02)
                continue
            quiet += 1
            if quiet >= _QUIET_LOOKS:
                return
            time.sleep(_QUIET_STEP_S)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
