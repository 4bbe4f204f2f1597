"""The collection as tests see it: galaxy.yml's name and version (no test hard-codes a release),
its build and its install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[1]
BIN: Final = Path(sys.executable).parent


def galaxy() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict), "galaxy.yml is not a mapping"
    return data


def version() -> str:
    return str(galaxy()["version"])


def artifact_name() -> str:
    """The file name ``ansible-galaxy collection build`` gives the artifact."""
    meta = galaxy()
    return f"{meta['namespace']}-{meta['name']}-{meta['version']}.tar.gz"


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp")}


def build_artifact(dest: Path) -> Path:
    """``ansible-galaxy collection build`` of the checkout into `dest`; the artifact's path."""
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dest), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
        env=_env(dest),
    )
    artifact = dest / artifact_name()
    assert artifact.is_file(), f"no {artifact.name} in {dest}"
    return artifact


def install_artifact(artifact: Path, collections: Path) -> Path:
    """``ansible-galaxy collection install --no-deps`` into `collections`; the installed folder."""
    subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--no-deps",
            "-p",
            str(collections),
            str(artifact),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env=_env(collections.parent),
    )
    return collections / "ansible_collections" / "winasync" / "eda"
