"""Where the release tools live: the importer's own venv (galaxy-importer, ansible-builder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.collection import ROOT


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
