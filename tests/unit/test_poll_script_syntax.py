"""poll.ps1 cannot run here (no PowerShell): check what a parser and the text can tell."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser
from winasync_eda.transports import poll_wire

SCRIPT_PATH = (
    Path(__file__).resolve().parents[2] / "extensions/eda/winasync_eda/transports/poll.ps1"
)
PARAMETERS = list(poll_wire.PARAMETER_NAMES)


def parse(source: bytes) -> Node:
    parser = Parser(Language(tree_sitter_powershell.language()))
    return parser.parse(source).root_node


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: Node) -> str:
    assert node.text is not None
    return node.text.decode("utf-8")


@pytest.fixture(scope="module")
def source() -> bytes:
    return SCRIPT_PATH.read_bytes()


@pytest.fixture(scope="module")
def root(source: bytes) -> Node:
    return parse(source)


def code_text(root: Node) -> str:
    """The script without its comments."""
    return " ".join(text(n) for n in walk(root) if n.child_count == 0 and n.type != "comment")


def test_the_parser_does_report_broken_powershell() -> None:
    broken = parse(b"function f { if ($x -eq 1 { 'a' }\n$y = @(1,2\n")
    assert broken.has_error


def test_script_parses_without_error_or_missing_nodes(root: Node) -> None:
    bad = [n for n in walk(root) if n.type == "ERROR" or n.is_error or n.is_missing]
    assert not root.has_error
    assert bad == []


def test_the_define_script_parses_and_defines_one_global_function_around_the_script(
    source: bytes,
) -> None:
    define = poll_wire.DEFINE_SCRIPT.encode("utf-8")
    root = parse(define)
    bad = [n for n in walk(root) if n.type == "ERROR" or n.is_error or n.is_missing]
    assert not root.has_error
    assert bad == []
    assert poll_wire.DEFINE_SCRIPT.splitlines()[0] == "# winasync-eda-poll-define v1"
    # nothing but the marker and one function statement at the top level
    assert [n.type for n in root.children] == ["comment", "statement_list"]
    (function,) = root.children[1].children
    assert function.type == "function_statement"
    names = [text(n) for n in function.children if n.type == "function_name"]
    assert names == ["global:Invoke-WinasyncPoll"]
    assert source in define  # poll.ps1 unchanged, param block and all


def test_first_line_is_the_marker_and_the_twin_is_named(source: bytes) -> None:
    lines = source.decode("utf-8").splitlines()
    assert lines[0] == "# winasync-eda-poll v1"
    assert "winsim/scripts/poll.py" in source.decode("utf-8")


def test_param_block_has_exactly_the_protocol_parameters_all_strings(root: Node) -> None:
    # the script's own param block (top level); functions have theirs
    blocks = [n for n in root.children if n.type == "param_block"]
    assert len(blocks) == 1
    params = [n for n in walk(blocks[0]) if n.type == "script_parameter"]
    names = []
    for param in params:
        variables = [n for n in param.children if n.type == "variable"]
        assert len(variables) == 1
        names.append(text(variables[0]).lstrip("$"))
        types = [text(n) for n in walk(param) if n.type == "type_literal"]
        assert types == ["[string]"], names[-1]
    assert names == PARAMETERS


def test_no_value_is_pasted_into_the_script(root: Node) -> None:
    literals = [text(n) for n in walk(root) if n.type == "string_literal"]
    for literal in literals:
        assert ":\\" not in literal, literal
        assert not re.search(r"%[A-Za-z_]+%", literal), literal
        assert ".ansible_async" not in literal, literal
        assert "$env:" not in literal.lower(), literal
    # the Python side sends the file as it is: no template placeholder can be filled in
    assert SCRIPT_PATH.read_text(encoding="utf-8") == poll_wire.POLL_SCRIPT
    for placeholder in ("{AsyncDir}", "{Known}", "%s", "{0}", "$(", "@@"):
        assert placeholder not in code_text(root).replace("$( ", "$("), placeholder
    # every parameter is used as a variable
    variables = {text(n).lstrip("$").lower() for n in walk(root) if n.type == "variable"}
    assert {p.lower() for p in PARAMETERS} <= variables


def test_reads_share_the_file_and_never_use_read_all_text(root: Node) -> None:
    code = code_text(root)
    assert "ReadAllText" not in code
    assert "ReadAllBytes" not in code
    assert "Get-Content" not in code
    assert "'ReadWrite, Delete'" in code


def test_runs_on_windows_powershell_5_1(root: Node) -> None:
    code = code_text(root)
    assert "TickCount64" not in code  # .NET Core only
    assert "ToUnixTimeMilliseconds" not in code  # .NET Framework 4.6+
    assert "Get-CimInstance" in code
    assert "$global:WinAsyncEdaBootMs" in code


def test_stops_on_error_and_writes_one_compact_json(root: Node, source: bytes) -> None:
    assert "$ErrorActionPreference = 'Stop'" in source.decode("utf-8")
    statements = [n for n in root.children if n.type == "statement_list"]
    assert statements
    last = text(statements[-1].children[-1])
    assert last.startswith("ConvertTo-Json -InputObject $result")
    assert "-Compress" in last
    assert "-Depth 4" in last
