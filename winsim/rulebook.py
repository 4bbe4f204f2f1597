"""Run a real ``ansible-rulebook`` for the end-to-end tests and the demo, and leave nothing behind.

ansible-rulebook starts ``ansible-playbook`` through ansible-runner, which gives each playbook a
pseudo-terminal and a session of its own: killing ansible-rulebook's process group does not
reach them. Every process of a run therefore carries a unique marker in its environment, and
``stop()``/``kill()`` end every live process that carries it (found in ``/proc``), whatever its
session or parent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ANSIBLE_RULEBOOK = BIN / "ansible-rulebook"
# ansible.windows, unpacked by `make setup`
DEPENDENCY_COLLECTIONS = REPO / ".work" / "collections"
MARKER_VAR = "WINSIM_RULEBOOK_RUN"
READY_LINE = "Waiting for events"
TERM_GRACE_S = 15.0


class RulebookError(RuntimeError):
    """ansible-rulebook ended early, or a condition did not hold in time."""


def checkout_collections(root: Path) -> Path:
    """A collections dir in which ``winasync.eda`` is this checkout (a symlink), for FQCN use.

    Returns ``root``, to put first in ANSIBLE_COLLECTIONS_PATH.
    """
    namespace = root / "ansible_collections" / "winasync"
    namespace.mkdir(parents=True, exist_ok=True)
    link = namespace / "eda"
    if not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    return root


def sandbox_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without Ansible/EDA settings, under ``home``, venv bin first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANSIBLE_", "WINASYNC_", "EDA_", MARKER_VAR))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_LOCAL_TEMP=str(home / ".ansible" / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_HOST_KEY_CHECKING="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


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


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_marked(marker: str, sig: signal.Signals) -> int:
    """Send ``sig`` to every live process of a run; return how many got it."""
    sent = 0
    for pid in marked_pids(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent += 1
    return sent


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout``; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


@dataclass
class Rulebook:
    """One ansible-rulebook process: its command line, environment and log file.

    ``rulebook`` is a path or an FQCN (``winasync.eda.windows_async_jobs``); ``variables`` go to
    a ``--vars`` file; ``env`` is the full environment (see ``sandbox_env``), to which the
    collections path and the run marker are added.
    """

    rulebook: str | Path
    inventory: Path
    workdir: Path
    env: dict[str, str]
    variables: Mapping[str, Any] = field(default_factory=dict)
    env_vars: Sequence[str] = ()
    source_dirs: Sequence[Path] = ()
    persistence_id: str | None = None
    collections: Sequence[Path] = ()
    verbosity: int = 1
    log_path: Path | None = None
    name: str = "rulebook"
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log(self) -> Path:
        return self.log_path or self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        cmd = [str(ANSIBLE_RULEBOOK), "-r", str(self.rulebook), "-i", str(self.inventory)]
        if self.variables:
            vars_file = self.workdir / f"{self.name}-vars.json"
            # JSON is YAML; 0600, the variables may carry a password
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(dict(self.variables), fh)
            cmd += ["--vars", str(vars_file)]
        if self.env_vars:
            cmd += ["--env-vars", ",".join(self.env_vars)]
        for directory in self.source_dirs:
            cmd += ["-S", str(directory)]
        if self.persistence_id is not None:
            cmd += ["--persistence-id", self.persistence_id]
        if self.verbosity > 0:
            cmd.append("-" + "v" * self.verbosity)
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(self.env)
        paths = [*map(str, self.collections), str(DEPENDENCY_COLLECTIONS)]
        env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(paths)
        env[MARKER_VAR] = self.marker
        return env

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Rulebook:
        if self.proc is not None:
            raise RulebookError(f"{self.name} is already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log = self.log.open("ab")
        log.info("starting %s: %s", self.name, " ".join(cmd))
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(
        self,
        predicate: Callable[[], object],
        timeout: float,
        what: str,
        *,
        allow_exit: bool = False,
    ) -> None:
        """Wait until ``predicate()`` holds; raise if the deadline passes or the process ends."""
        ended: list[int] = []

        def check() -> bool:
            if predicate():
                return True
            code = self.returncode
            if code is not None and not allow_exit:
                ended.append(code)
                return True
            return False

        held = wait_until(check, timeout)
        if ended:
            raise RulebookError(
                f"{self.name} ended with {ended[0]} before {what}; last lines:\n{self.tail()}"
            )
        if not held:
            raise RulebookError(
                f"timed out after {timeout:.0f} s waiting for {what}; "
                f"{self.name} last lines:\n{self.tail()}"
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the engine waits for events (the source has been started)."""
        self.wait_for(lambda: READY_LINE in self.text(), timeout, "ansible-rulebook to start")

    def leftovers(self) -> list[int]:
        """Live processes of this run (ansible-rulebook, ansible-playbook, their children)."""
        return marked_pids(self.marker)

    def playbooks_running(self) -> list[int]:
        """The ansible-playbook processes of this run (ansible-runner starts them)."""
        return [
            pid
            for pid in self.leftovers()
            if any(Path(arg).name == "ansible-playbook" for arg in command_line(pid)[:2])
        ]

    def stop(self, grace: float = TERM_GRACE_S) -> int | None:
        """SIGTERM ansible-rulebook, then SIGKILL whatever of the run is still alive."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL the whole run at once, as a crash of the machine would."""
        return self._finish()

    def _finish(self) -> int | None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        # Repeat: a process may have forked between the scan and the signal.
        for _ in range(50):
            if not signal_marked(self.marker, signal.SIGKILL):
                break
            wait_until(lambda: not self.leftovers(), 5.0, step=0.02)
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
                log.error("%s (pid %d) did not end after SIGKILL", self.name, self.proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None
        left = self.leftovers()
        if left:  # pragma: no cover - only when SIGKILL is not delivered
            raise RulebookError(f"{self.name}: processes still alive after SIGKILL: {left}")
        return code

    def __enter__(self) -> Rulebook:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
