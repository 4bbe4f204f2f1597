"""The collection's name and version as galaxy.yml states them, so no test hard-codes a release."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[1]


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
