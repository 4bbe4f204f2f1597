"""Galaxy's importer (what Galaxy and Automation Hub run on every upload) passes on the artifact.

galaxy-importer runs offline with ansible-doc and ansible-lint on PATH, as on Galaxy (only
ansible-test, which needs containers, is off). A warning fails the test as an error does:
each one would show on the collection's page.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.collection import build_artifact, version
from tests.galaxy.tools import importer_bin

CONFIG = """\
[galaxy-importer]
RUN_ANSIBLE_TEST = False
RUN_ANSIBLE_LINT = True
RUN_ANSIBLE_DOC = True
CHECK_REQUIRED_TAGS = False
"""


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """The importer's log and its result (importer_result.json) for the built artifact."""
    bin_dir = importer_bin()
    work = tmp_path_factory.mktemp("importer")
    artifact = build_artifact(work / "dist")
    (work / "importer.ini").write_text(CONFIG, encoding="utf-8")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON", "VIRTUAL"))
    }
    env.update(
        GALAXY_IMPORTER_CONFIG=str(work / "importer.ini"),
        HOME=str(work),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    )
    proc = subprocess.run(
        [str(bin_dir / "python"), "-m", "galaxy_importer.main", str(artifact)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    result = json.loads((work / "importer_result.json").read_text(encoding="utf-8"))
    return log, result


def test_import_succeeds_without_an_error_or_a_warning(
    imported: tuple[str, dict[str, Any]],
) -> None:
    log, result = imported
    assert "Importer processing completed successfully" in log
    # ansible-doc and ansible-lint were found and ran (without them: only a warning, skipped)
    assert "Linting collection via ansible-lint" in log
    assert "...ansible-lint run complete" in log
    problems = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert problems == []
    assert result["metadata"]["version"] == version()
    assert result["metadata"]["repository"] == "https://github.com/winasync/eda"


def test_exactly_one_event_source_with_its_documentation(
    imported: tuple[str, dict[str, Any]],
) -> None:
    result = imported[1]
    sources = [c for c in result["contents"] if c["content_type"] == "eda/plugins/event_source"]
    assert [c["name"] for c in sources] == ["async_jobs"]
    [docs] = [
        d
        for d in result["docs_blob"]["contents"]
        if d["content_type"] == "eda/plugins/event_source"
    ]
    assert docs["content_name"] == "async_jobs"
    doc = docs["doc_strings"]["doc"]  # from `ansible-doc --json`; absent when it failed
    assert doc["short_description"]
    options = {option["name"] for option in doc["options"]}  # the importer makes a list of them
    assert {"hosts", "inventory", "state_file", "feedback"} <= options


def test_the_three_playbooks_are_listed(imported: tuple[str, dict[str, Any]]) -> None:
    result = imported[1]
    playbooks = sorted(c["name"] for c in result["contents"] if c["content_type"] == "playbook")
    assert playbooks == ["job_failed.yml", "job_finished.yml", "start_job.yml"]
