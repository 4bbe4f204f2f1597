"""Helpers to run the real ansible-playbook in a sandboxed HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

VENV_BIN = Path(sys.executable).parent


def ansible_env(home: Path, async_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        ANSIBLE_ASYNC_DIR=str(async_dir),
        ANSIBLE_LOCAL_TEMP=str(home / ".ansible" / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / ".ansible" / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".work" / "collections"))
    return env


def start_local_jobs(tmp: Path) -> tuple[Path, dict[str, str]]:
    """Start the three real async jobs; return the async dir and their jids."""
    home, async_dir = tmp / "home", tmp / "async"
    home.mkdir(exist_ok=True)
    jids_file = tmp / "jids.json"
    subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            str(REPO / "tests" / "integration" / "playbooks" / "start_local_jobs.yml"),
            "-e",
            f"jids_file={jids_file}",
        ],
        check=True,
        env=ansible_env(home, async_dir),
        capture_output=True,
        timeout=120,
    )
    return async_dir, json.loads(jids_file.read_text())


@pytest.fixture
def local_jobs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return start_local_jobs(tmp_path)
