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
from tests.secret_scan import assert_not_shown, pem_body
from winsim.kdc import available as kdc_available

pytestmark = pytest.mark.sim


@pytest.mark.parametrize(
    ("auth", "https"),
    [
        ("basic", True),
        ("negotiate", False),
        ("negotiate", True),
        ("certificate", True),
        ("kerberos", False),
    ],
    ids=[
        "basic-https",
        "negotiate-http-encrypted",
        "negotiate-https-bound",
        "certificate",
        "kerberos-http-encrypted",
    ],
)
def test_ping_async_shell_status_and_cleanup(tmp_path: Path, auth: str, https: bool) -> None:
    if auth == "kerberos" and (missing := kdc_available()):
        pytest.skip(f"Kerberos needs the KDC: {missing}")
    out = tmp_path / "out.json"
    with SimProcess(tmp_path / "sim_hosts", 1, https=https, auth=auth) as sim_hosts:
        env = {
            **os.environ,
            **sim_hosts.client_env,
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
        inventory = sim_hosts.inventory.read_text(encoding="utf-8")
        secrets: dict[str, str | bytes] = {"the password": creds["password"]}
        if auth == "certificate":
            key_file = Path(
                json.loads(inventory)["all"]["children"]["windows"]["hosts"]["win01"][
                    "ansible_psrp_certificate_key_pem"
                ]
            )
            secrets["the client certificate's key"] = pem_body(key_file.read_bytes())
        shown = [proc.stdout, proc.stderr, sim_hosts.log_path.read_text(encoding="utf-8")]
    assert f'"ansible_psrp_auth": "{auth}"' in inventory
    # message encryption is never turned off, except for Basic over HTTP
    assert "message_encryption" not in inventory
    assert_not_shown(shown, secrets)
