"""poll.ps1, its Python twin (winsim/scripts/poll.py) and docs/poll-protocol.md change together:
each name or size the two sides must share is compared here, so a change to one side alone
fails. The client's side is ``winasync_eda.transports.poll_wire``; the simulator never imports
it, so this test is where the two meet."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from winasync_eda.transports import poll_wire

from tests.paths import REPO
from winsim.host import SimHost
from winsim.scripts import poll as twin

SCRIPT = poll_wire.SCRIPT_PATH.read_text(encoding="utf-8")
DOC = (REPO / "docs/poll-protocol.md").read_text(encoding="utf-8")


def script_list(name_pattern: str) -> list[str]:
    """The quoted items of the first ``@('a', 'b', ...)`` after a pattern in the script."""
    match = re.search(name_pattern + r"[^@]*@\(([^)]*)\)", SCRIPT)
    assert match, name_pattern
    return re.findall(r"'([^']*)'", match.group(1))


def ordered_keys(variable: str) -> list[str]:
    """The keys of ``$variable = [ordered]@{ key = ... }`` in the script, in order."""
    match = re.search(re.escape(variable) + r" = \[ordered\]@\{\n(.*?)\n\s*\}", SCRIPT, re.S)
    assert match, variable
    return re.findall(r"^\s*(\w+)\s*=", match.group(1), re.M)


def test_markers_and_function_name_are_the_same_on_both_sides() -> None:
    assert SCRIPT.splitlines()[0] == poll_wire.MARKER == twin.MARKER
    assert poll_wire.DEFINE_MARKER == twin.DEFINE_MARKER
    assert poll_wire.FUNCTION == twin.FUNCTION
    assert poll_wire.DEFINE_SCRIPT.splitlines()[0] == twin.DEFINE_MARKER
    assert twin.is_define_script(poll_wire.DEFINE_SCRIPT)
    assert twin.is_poll_script(poll_wire.POLL_SCRIPT)


def test_parameters_are_the_same_in_the_script_the_client_the_twin_and_the_doc() -> None:
    block = re.search(r"^param\((.*?)^\)", SCRIPT, re.S | re.M)
    assert block
    in_script = re.findall(r"\[string\]\$(\w+)", block.group(1))
    assert tuple(in_script) == poll_wire.PARAMETER_NAMES == twin.PARAMETERS
    run_poll = inspect.getsource(twin.run_poll)
    for name in twin.PARAMETERS:
        assert f'"{name}"' in run_poll, name
        assert f"| `{name}` |" in DOC, name


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HeadBytes", twin.HEAD_BYTES),
        ("TailBytes", twin.TAIL_BYTES),
        ("MsgChars", twin.MSG_CHARS),
        ("SummaryCost", twin.SUMMARY_COST),
        ("EntryCost", twin.ENTRY_COST),
        ("WaitStepMs", twin.WAIT_STEP_MS),
    ],
)
def test_sizes_are_the_same(variable: str, value: int) -> None:
    match = re.search(rf"^\${variable} = (\d+)$", SCRIPT, re.M)
    assert match, variable
    assert int(match.group(1)) == value


def test_job_name_pattern_and_summary_keys_are_the_same() -> None:
    assert f"-cnotmatch '{twin.JOB_NAME_RE.pattern}'" in SCRIPT
    assert tuple(script_list(r"foreach \(\$key in")) == twin.SUMMARY_FLAGS
    assert "$summary['msg']" in SCRIPT and twin.SUMMARY_KEYS[-1] == "msg"


def test_answer_and_entry_keys_are_the_same(tmp_path: Path) -> None:
    host = SimHost("win01", tmp_path)
    host.async_dir_path.mkdir(parents=True)
    (host.async_dir_path / "j1.2").write_bytes(b"{}")
    answer = twin.poll(
        host,
        async_dir=r"%USERPROFILE%\.ansible_async",
        known="{}",
        pids="[]",
        only="[]",
        max_bytes="100",
        max_answer="100000",
    )
    assert list(answer) == ordered_keys("$result")
    assert list(answer["files"][0]) == ordered_keys("$entry")
    for key in answer:
        assert f'"{key}"' in DOC, key
    assert answer["v"] == poll_wire.ANSWER_VERSION


@pytest.mark.parametrize(
    "message", [twin.DIR_UNEXPANDED, twin.DIR_NOT_ROOTED, twin.DIR_DENIED, twin.DIR_UNLISTABLE]
)
def test_async_dir_errors_say_the_same(message: str) -> None:
    assert message.replace("{dir}", "$dir") in SCRIPT


def test_async_dir_patterns_are_the_same() -> None:
    assert f"$dir -match '{twin._UNEXPANDED_RE.pattern}'" in SCRIPT
    assert f"$dir -notmatch '{twin._ROOTED_RE.pattern}'" in SCRIPT


def test_the_waiting_check_follows_the_same_name_filter() -> None:
    """Test-HostChanged lists with the poll's own job name pattern and reads Seen only with Wait."""
    body = re.search(r"function Test-HostChanged \{(.*?)\n\}", SCRIPT, re.S)
    assert body, "Test-HostChanged"
    assert f"-cnotmatch '{twin.JOB_NAME_RE.pattern}'" in body.group(1)
    assert "$SeenProcs.ContainsKey($key)" in body.group(1)
    assert "## Waiting: watch mode" in DOC
