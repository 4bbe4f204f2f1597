"""A real ansible-playbook with ansible_connection=psrp against simulated hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.sim_process import SimProcess
from tests.paths import REPO

pytestmark = pytest.mark.sim


def test_ping_async_shell_status_and_cleanup(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with SimProcess(tmp_path / "sim_hosts", 1, https=True) as sim_hosts:
        env = {
            **os.environ,
            "HOME": str(tmp_path),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
            "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".work" / "collections"),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "ANSIBLE_NOCOLOR": "1",
        }
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                str(sim_hosts.inventory),
                str(REPO / "tests" / "sim" / "playbooks" / "psrp_roundtrip.yml"),
                "-e",
                f"out_file={out}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        result = json.loads(out.read_text())
        assert result["finished"] is True
        assert result["rc"] == 3
        assert "hello" in result["stdout"]
        assert sim_hosts.job_files("win01") == []
        creds = sim_hosts.credentials("win01")
    assert creds["password"] not in proc.stdout + proc.stderr
