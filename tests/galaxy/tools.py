"""Where the release tools live: the dev venv (ansible-galaxy) and the importer's own venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.galaxy_meta import ROOT, artifact_name

BIN = Path(sys.executable).parent


def importer_bin() -> Path:
    """The bin folder of .venv-importer (galaxy-importer, ansible-builder and their ansible).

    ``make test`` names it in WINASYNC_IMPORTER_VENV, and then a missing venv is a failure;
    a bare pytest run without it skips.
    """
    named = os.environ.get("WINASYNC_IMPORTER_VENV")
    venv = Path(named) if named else ROOT / ".venv-importer"
    if not (venv / "bin" / "python").exists():
        if named:
            pytest.fail(f"WINASYNC_IMPORTER_VENV={named} has no bin/python (make setup-importer)")
        pytest.skip(".venv-importer is missing: make setup-importer")
    return venv / "bin"


def build_artifact(dest: Path) -> Path:
    """``ansible-galaxy collection build`` of the checkout into `dest`; the artifact's path."""
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dest), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(dest), "ANSIBLE_LOCAL_TEMP": str(dest / "tmp")},
    )
    artifact = dest / artifact_name()
    assert artifact.is_file(), f"no {artifact.name} in {dest}"
    return artifact
