"""Run a real ``ansible-rulebook`` for the end-to-end tests and the demo, and leave nothing behind
(``harness.process`` ends the playbooks ansible-runner starts too)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import REPO
from harness.process import (
    MARKER_VAR,
    ChildProcess,
    Lifecycle,
    ProcessError,
    command_line,
    read_log,
    wait_until,
)

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
ANSIBLE_RULEBOOK = BIN / "ansible-rulebook"
# ansible.windows, unpacked by `make setup`
DEPENDENCY_COLLECTIONS = REPO / ".work" / "collections"
READY_LINE = "Waiting for events"


class RulebookError(ProcessError):
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


@dataclass
class Rulebook(Lifecycle):
    """One ansible-rulebook process: its command line, environment and log file.

    ``rulebook`` is a path or an FQCN (``winasync.eda.windows_async_jobs``); ``variables`` go to
    a ``--vars`` file; ``env`` is the full environment (see ``sandbox_env``), to which the
    collections path is added (and, by ``harness.process``, the run's marker).
    """

    rulebook: str | Path
    inventory: Path
    workdir: Path
    env: dict[str, str]
    variables: Mapping[str, Any] = field(default_factory=dict)
    env_vars: Sequence[str] = ()
    source_dirs: Sequence[Path] = ()
    persistence_id: str | None = None
    # --id: the worker's name in the engine's persistence (another node, another id)
    node_id: str | None = None
    collections: Sequence[Path] = ()
    verbosity: int = 1
    log_path: Path | None = None
    name: str = "rulebook"
    process: ChildProcess | None = field(default=None, init=False, repr=False)

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
        if self.node_id is not None:
            cmd += ["--id", self.node_id]
        if self.verbosity > 0:
            cmd.append("-" + "v" * self.verbosity)
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(self.env)
        paths = [*map(str, self.collections), str(DEPENDENCY_COLLECTIONS)]
        env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(paths)
        return env

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Rulebook:
        if self.process is not None:
            raise RulebookError(f"{self.name} is already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = ChildProcess(
            self.command(),
            log_path=self.log,
            env=self.environment(),
            cwd=self.workdir,
            name=self.name,
        )
        self.process = process.start()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def text(self) -> str:
        return read_log(self.log)

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
        return [] if self.process is None else self.process.leftovers()

    def playbooks_running(self) -> list[int]:
        """The ansible-playbook processes of this run (ansible-runner starts them)."""
        return [
            pid
            for pid in self.leftovers()
            if any(Path(arg).name == "ansible-playbook" for arg in command_line(pid)[:2])
        ]

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM ansible-rulebook, then SIGKILL whatever of the run is still alive."""
        if self.process is None:
            return None
        return self.process.stop() if grace is None else self.process.stop(grace)

    def kill(self) -> int | None:
        """SIGKILL the whole run at once, as a crash of the machine would."""
        return None if self.process is None else self.process.kill()
