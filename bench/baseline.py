"""Run a real ``ansible-playbook`` (psrp connection) against the sim and measure what it cost.

CPU comes from ``os.wait4`` on the playbook's process: it covers ansible-playbook and every
worker it forked and reaped. Traffic comes from the sim's counters of the hosts it talked to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.inprocess_hosts import InProcessHosts, Traffic

PLAYBOOK_DIR = ROOT / "bench" / "playbooks"
CLASSIC_PLAYBOOK = PLAYBOOK_DIR / "classic_wait.yml"
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class PlaybookRun:
    rc: int
    wall_s: float
    cpu_s: float
    traffic: Traffic
    log: Path

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.traffic.as_dict(),
            "module_runs": self.traffic.pipelines,
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "rc": self.rc,
        }


def _private_json(path: Path, data: Any) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def ansible_env(workdir: Path) -> dict[str, str]:
    home = workdir / "home"
    (home / ".ansible" / "tmp").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / ".ansible" / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".work" / "collections"))
    return env


def run_playbook(
    sims: InProcessHosts,
    hosts: Sequence[str],
    playbook: Path,
    extra_vars: dict[str, Any],
    workdir: Path,
    tag: str,
    *,
    tags: str | None = None,
) -> PlaybookRun:
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = _private_json(workdir / f"{tag}.inventory.json", sims.inventory(hosts))
    extra = _private_json(workdir / f"{tag}.vars.json", extra_vars)
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inventory),
        str(playbook),
        "-e",
        f"@{extra}",
    ]
    if tags:
        cmd += ["--tags", tags]
    log = workdir / f"{tag}.log"
    before = sims.traffic(hosts)
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=ansible_env(workdir), cwd=ROOT
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait(TIMEOUT_S)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    return PlaybookRun(
        rc=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        traffic=sims.traffic(hosts) - before,
        log=log,
    )
