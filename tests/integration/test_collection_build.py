"""The collection builds without development files and its installed source loads by FQCN."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.collection import build_artifact, install_artifact

BIN = Path(sys.executable).parent


def test_build_install_and_load_by_fqcn(tmp_path: Path) -> None:
    artifact = build_artifact(tmp_path / "dist")
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
    assert "extensions/eda/plugins/event_source/async_jobs.py" in names
    assert "extensions/eda/winasync_eda/transports/poll.ps1" in names
    # Galaxy's importer and ansible-rulebook take every .py below event_source for a source.
    sources = [n for n in names if n.startswith("extensions/eda/plugins/event_source/")]
    assert [n for n in sources if n.endswith(".py")] == [
        "extensions/eda/plugins/event_source/async_jobs.py"
    ]
    assert "rulebooks/windows_async_jobs.yml" in names
    assert "playbooks/job_failed.yml" in names
    for bad in (
        "tests/",
        "winsim/",
        "harness/",
        ".venv",
        "__pycache__",
        ".work/",
        "Makefile",
        ".ci/",
    ):
        assert not [n for n in names if bad in n], f"{bad} is in the artifact"

    collections = tmp_path / "collections"
    installed = install_artifact(artifact, collections)
    # A fresh interpreter, as ansible-rulebook would: find the source by FQCN, run_path it.
    probe = (
        "import runpy, asyncio\n"
        "from ansible_rulebook.collection import find_source, split_collection_name\n"
        "path = find_source(*split_collection_name('winasync.eda.async_jobs'))\n"
        "module = runpy.run_path(path)\n"
        "assert asyncio.iscoroutinefunction(module['main'])\n"
        "import winasync_eda\n"
        "print(path)\nprint(winasync_eda.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "HOME": str(tmp_path),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "ANSIBLE_COLLECTIONS_PATH": str(collections),
            "PYTHONPATH": "",
        },
        timeout=120,
    ).stdout.splitlines()
    assert out[0].startswith(str(installed))
    assert out[1].startswith(str(installed))
