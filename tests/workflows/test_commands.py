"""Workflow commands and file commands, as GitHub documents them ("Workflow commands for GitHub Actions")."""

from __future__ import annotations

import pytest

from smith.workflows.commands import Masker, StepOutput, parse_command, parse_file_command, process_line
from smith.workflows.errors import WorkflowError


def test_file_commands_key_value_and_heredoc() -> None:
    text = 'a=1\nJSON<<EOF\n{\n  "x": 1\n}\nEOF\nb=two=parts\r\n\nempty=\n'
    assert parse_file_command(text, "GITHUB_OUTPUT") == [
        ("a", "1"),
        ("JSON", '{\n  "x": 1\n}'),
        ("b", "two=parts"),
        ("empty", ""),
    ]


@pytest.mark.parametrize("bad", ["novalue\n", "k<<EOF\nnever closed\n"])
def test_file_command_errors(bad: str) -> None:
    with pytest.raises(WorkflowError):
        parse_file_command(bad, "GITHUB_ENV")


def test_command_escapes() -> None:
    cmd = parse_command("::error file=a%2Cb.py,line=3,title=T%3Ax::line1%0Aline2 100%25")
    assert cmd is not None and cmd.name == "error"
    assert cmd.props == {"file": "a,b.py", "line": "3", "title": "T:x"} and cmd.message == "line1\nline2 100%"


def test_masking_and_commands() -> None:
    masker = Masker(["topsecret", "multi\nline"])
    out = StepOutput()
    assert process_line("value topsecret here", out, masker) == ("line", "value *** here")
    assert process_line("::add-mask::later", out, masker) is None
    assert process_line("a later b line", out, masker) == ("line", "a *** b ***")
    assert process_line("::set-output name=x::1", out, masker) is None and out.outputs == {"x": "1"}
    assert process_line("::save-state name=s::v", out, masker) is None and out.state == {"s": "v"}
    assert process_line("::group::Build", out, masker) == ("group", "Build")
    assert process_line("::endgroup::", out, masker) == ("endgroup", "")
    assert process_line("::stop-commands::tok", out, masker) is None
    assert process_line("::set-output name=y::2", out, masker) == ("line", "::set-output name=y::2")
    assert process_line("::tok::", out, masker) is None
    assert process_line("::notice::hello topsecret", out, masker) == ("annotation", "Notice: hello ***")
    assert "y" not in out.outputs
