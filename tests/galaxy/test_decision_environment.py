"""decision-environment.yml turns into a complete build context (ansible-builder create).

No container runtime is needed: the test checks the Containerfile and that everything it copies
is in the context, then runs ansible-builder's own introspection (what the build's builder stage
runs) on the installed artifact, to see the requirements the image would get from it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.collection import ROOT, build_artifact, galaxy, install_artifact
from tests.galaxy.tools import importer_bin


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context, made from a copy of the definition and its files, as make de-context."""
    bin_dir = importer_bin()
    work = tmp_path_factory.mktemp("de")
    for name in ("decision-environment.yml", "requirements.txt", "bindep.txt"):
        shutil.copyfile(ROOT / name, work / name)
    (work / ".work" / "dist").mkdir(parents=True)
    build_artifact(work / "build").rename(work / ".work" / "dist" / "winasync-eda.tar.gz")
    subprocess.run(
        [
            str(bin_dir / "ansible-builder"),
            "create",
            "-f",
            "decision-environment.yml",
            "-c",
            "context",
            "--output-filename",
            "Containerfile",
        ],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return work / "context"


def test_containerfile_copies_only_what_the_context_holds(context: Path) -> None:
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    sources = re.findall(r"^COPY (_build\S*) ", containerfile, flags=re.MULTILINE)
    assert "_build/requirements.txt" in sources
    assert "_build/bindep.txt" in sources
    assert [s for s in sources if not (context / s).exists()] == []
    assert 'ARG EE_BASE_IMAGE="registry.access.redhat.com/ubi9/ubi:latest"' in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.12"' in containerfile
    assert "ansible-galaxy collection install" in containerfile
    assert "pip install --no-cache-dir 'ansible-rulebook>=1.1,<2'" in containerfile
    assert "ENV JAVA_HOME=/usr/lib/jvm/jre-17-openjdk" in containerfile


def test_requirements_and_the_artifact_are_in_the_context(context: Path) -> None:
    build = context / "_build"
    assert (build / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    assert (build / "bindep.txt").read_bytes() == (ROOT / "bindep.txt").read_bytes()
    collections = yaml.safe_load((build / "requirements.yml").read_text(encoding="utf-8"))
    assert collections["collections"] == [
        {"name": "collections/winasync-eda.tar.gz", "type": "file"},
        {"name": "ansible.windows", "version": ">=2.4.0"},
    ]
    meta = galaxy()
    with tarfile.open(build / "collections" / "winasync-eda.tar.gz") as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == (
        meta["namespace"],
        meta["name"],
        meta["version"],
    )
    assert {"requirements.txt", "bindep.txt"} <= names
    assert "extensions/eda/plugins/event_source/async_jobs.py" in names


def test_bindep_has_java_17_and_the_kerberos_place() -> None:
    bindep = (ROOT / "bindep.txt").read_text(encoding="utf-8")
    assert "java-17-openjdk-headless [platform:rpm]" in bindep.splitlines()
    assert "# --- Kerberos extras (auth: kerberos)" in bindep


def test_the_build_reads_the_source_requirements_from_the_collection(
    context: Path, tmp_path: Path
) -> None:
    collections = tmp_path / "collections"
    install_artifact(context / "_build" / "collections" / "winasync-eda.tar.gz", collections)
    out = subprocess.run(
        [str(importer_bin() / "ansible-builder"), "introspect", "--sanitize", str(collections)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = yaml.safe_load(out.split("\n", 1)[1])
    python = [line.split("  #")[0] for line in found["python"]]
    system = [line.split("  #")[0] for line in found["system"]]
    wanted = [
        line
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith(("#", "ansible-core"))  # the base stage installs it
    ]
    assert python == wanted
    assert "java-17-openjdk-headless [platform:rpm]" in system
