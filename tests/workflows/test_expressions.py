"""Expressions against GitHub's documented results ("Evaluate expressions in workflows and actions",
docs.github.com, and its operator/coercion notes). Each row: expression, contexts, expected value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from smith.workflows.errors import ExpressionError
from smith.workflows.expressions import Scope, evaluate, evaluate_if, interpolate, interpolate_value

CTX: dict[str, Any] = {
    "github": {
        "event_name": "push",
        "ref": "refs/heads/main",
        "event": {"issue": {"labels": [{"name": "bug"}, {"name": "help wanted"}]}},
    },
    "env": {"NAME": "Mona"},
    "fruits": [
        {"name": "apple", "quantity": 1},
        {"name": "orange", "quantity": 2},
        {"name": "pear", "quantity": 1},
    ],
    "vegetables": {"carrot": {"ediblePortions": ["root"]}, "broccoli": {"ediblePortions": ["stem", "florets"]}},
    "empty": {},
    "arr": [],
    "matrix": {"os": "ubuntu-latest", "node": 20.0},
}

TABLE: list[tuple[str, Any]] = [
    # literals (the docs' examples)
    ("null", None),
    ("false", False),
    ("711", 711.0),
    ("-9.2", -9.2),
    ("0xff", 255.0),
    ("-2.99e-2", -0.0299),
    ("'It''s open source!'", "It's open source!"),
    # operators and precedence
    ("!true", False),
    ("!0", True),
    ("!''", True),
    ("1 < 2", True),
    ("2 <= 2", True),
    ("'def' > 'abc'", True),
    ("'a' > 'b'", False),
    ("true && 'yes'", "yes"),
    ("'' && 'yes'", ""),
    ("null || 'default'", "default"),
    ("'first' || 'second'", "first"),
    ("1 == 1 && 2 == 2 || false", True),
    ("!(1 == 2)", True),
    # loose equality and coercion (docs: null -> 0, true -> 1, '' -> 0, strings parsed, else NaN)
    ("null == 0", True),
    ("true == 1", True),
    ("false == 0", True),
    ("'' == 0", True),
    ("' 123456.789 ' == 123456.789", True),
    ("'0xff' == 255", True),
    ("'abc' == 0", False),
    ("'abc' != 0", True),
    ("NaN == NaN", False),
    ("'1' == true", True),
    ("null == false", True),
    ("fruits == fruits", True),
    ("arr == 0", False),
    ("empty == empty", True),
    # case-insensitive strings
    ("'HELLO' == 'hello'", True),
    ("github.event_name == 'PUSH'", True),
    ("'ABC' < 'abd'", True),
    # property dereference
    ("github.ref", "refs/heads/main"),
    ("github['ref']", "refs/heads/main"),
    ("github.missing", None),
    ("github.missing.deeper", None),
    ("fruits[1].name", "orange"),
    ("fruits[9]", None),
    ("matrix.node == 20", True),
    ("env.name", "Mona"),
    # object filters
    ("fruits.*.name", ["apple", "orange", "pear"]),
    ("vegetables.*.ediblePortions", [["root"], ["stem", "florets"]]),
    ("github.event.issue.labels.*.name", ["bug", "help wanted"]),
    ("contains(github.event.issue.labels.*.name, 'bug')", True),
    ("contains(fruits.*.name, 'PEAR')", True),
    ('fromJSON(\'[{"a": null}, {"b": 1}, {"a": 2}, 3]\').*.a', [None, 2.0]),  # present nulls stay
    ("fromJSON('[[1, 2], [3]]').*[1]", [2.0]),
    # functions (docs examples)
    ("contains('Hello world', 'llo')", True),
    ("contains('Hello world', 'LLO')", True),
    ('contains(fromJSON(\'["push", "pull_request"]\'), github.event_name)', True),
    ("startsWith('Hello world', 'He')", True),
    ("startsWith('Hello world', 'he')", True),
    ("endsWith('Hello world', 'ld')", True),
    ("format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')", "Hello Mona the Octocat"),
    ("format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')", "{Hello Mona the Octocat!}"),
    ("format('{0}', 3)", "3"),
    ("format('{0}/{1}', true, null)", "true/"),
    ("join(github.event.issue.labels.*.name, ', ')", "bug, help wanted"),
    ("join(fromJSON('[1,2,3]'))", "1,2,3"),
    ("join('abc')", "abc"),
    ("toJSON(matrix)", '{\n  "os": "ubuntu-latest",\n  "node": 20\n}'),
    ("toJSON(null)", "null"),
    ("fromJSON('{\"a\": [1, true]}').a[1]", True),
    ("fromJSON('3') == 3", True),
    ("fromJSON('true')", True),
    # case(): the value of the first true predicate, else the default (GitHub, 2025)
    ("case(github.event_name == 'push', 'deploy', 'test')", "deploy"),
    ("case(false, 'a', matrix.node == 20, 'b', 'c')", "b"),
    ("case(false, 'a', false, 'b', 'c')", "c"),
    ("case(true, 'first', fromJSON(''))", "first"),  # only the chosen value is evaluated
    # numbers print as .NET's G15 (toJSON and string conversion alike)
    ("format('{0}', 1234567890123456)", "1.23456789012346E+15"),
    ("format('{0}', 1e20)", "1E+20"),
    ("format('{0}', 0.5)", "0.5"),
    ("toJSON(fromJSON('[1e20, 2.50, 3]'))", "[\n  1E+20,\n  2.5,\n  3\n]"),
    ('toJSON(fromJSON(\'{"a": {}, "b": []}\'))', '{\n  "a": {},\n  "b": []\n}'),
    # objects are never found in, nor searched in, as strings; join of an object is empty
    ("contains(vegetables, 'Object')", False),
    ("contains('Object', vegetables)", False),
    ("join(vegetables)", ""),
    ("startsWith(vegetables, 'Obj')", False),
    ("endsWith('Object', vegetables)", False),
    ("join(fromJSON('[1,2]'), vegetables)", "1,2"),
    ("success()", True),
    ("failure()", False),
    ("always()", True),
    ("cancelled()", False),
]


@pytest.mark.parametrize(("expr", "expected"), TABLE)
def test_expression_table(expr: str, expected: Any) -> None:
    assert evaluate(expr, Scope(CTX)) == expected


def test_nan_is_nan() -> None:
    assert math.isnan(evaluate("NaN", Scope(CTX)))


@pytest.mark.parametrize(
    ("condition", "status", "expected"),
    [
        (None, "success", True),
        (None, "failure", False),
        ("github.event_name == 'push'", "success", True),
        ("github.event_name == 'push'", "failure", False),  # implicit success()
        ("${{ github.event_name == 'push' }}", "success", True),
        ("failure()", "failure", True),
        ("always()", "failure", True),
        ("${{ always() && github.ref == 'refs/heads/main' }}", "failure", True),
        ("!cancelled()", "failure", True),
        ("cancelled()", "cancelled", True),
        ("success() || failure()", "failure", True),
        (False, "success", False),
        ("${{ false }}", "success", False),
        ("'false'", "success", True),  # a non-empty string is truthy
    ],
)
def test_if_conditions(condition: Any, status: str, expected: bool) -> None:
    assert evaluate_if(condition, Scope(CTX, status=status)) is expected


def test_interpolation() -> None:
    scope = Scope(CTX)
    assert interpolate("Hi ${{ env.NAME }} on ${{ matrix.os }}!", scope) == "Hi Mona on ubuntu-latest!"
    assert interpolate("${{ '}}' }}x", scope) == "}}x"
    assert interpolate_value("${{ fromJSON('[1]') }}", scope) == [1.0]
    assert interpolate_value(" ${{ 1 == 1 }} ", scope) is True
    assert interpolate("${{ null }}-${{ 1.5 }}", scope) == "-1.5"


@pytest.mark.parametrize(
    "bad",
    [
        '"double"',
        "1 +",
        "foo(",
        "nosuch.thing",
        "nosuchfn(1)",
        "contains('a')",
        "format('{1}', 'a')",
        "a..b",
        "case(true, 1)",
        "case('yes', 1, 2)",
        "True",  # keywords are case-sensitive
        "NULL == null",
        "nan",
    ],
)
def test_errors_are_expression_errors(bad: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(bad, Scope(CTX))


def test_hash_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "req.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    scope = Scope(CTX, workspace=tmp_path)
    one = evaluate("hashFiles('**/req.txt')", scope)
    assert len(one) == 64
    assert evaluate("hashFiles('**/*.txt')", scope) != one
    assert evaluate("hashFiles('nothing/*')", scope) == ""
    (tmp_path / "a" / "req.txt").write_text("changed")
    assert evaluate("hashFiles('**/req.txt')", scope) != one
