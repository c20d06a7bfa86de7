"""hashFiles as GitHub's runner computes it (its @actions/glob walk). Each expectation was checked against the
runner's own hashFiles script on the same tree; the trees here are written for this test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from smith.workflows.errors import ExpressionError
from smith.workflows.expressions import Scope, evaluate
from smith.workflows.hashfiles import hash_files


def expected(ws: Path, *files: str) -> str:
    """SHA-256 over the SHA-256 of each file, in the order given."""
    outer = hashlib.sha256()
    for f in files:
        outer.update(hashlib.sha256((ws / f).read_bytes()).digest())
    return outer.hexdigest()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    files = {
        "a/req.txt": "1",
        "a-b/req.txt": "2",
        "req.txt": "3",
        "src/sub/x.py": "4",
        "src/y.py": "5",
        ".git/config": "6",
        "node_modules/x/p.lock": "8",
        "src/sub/z.lock": "11",
        "b.txt": "9",
        "B.txt": "10",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_files_are_hashed_in_walk_order_not_sorted_paths(ws: Path) -> None:
    # depth first, each directory's entries in byte order: a/ is walked before a-b/ although "a-b/" < "a/"
    assert hash_files(ws, ["**/req.txt"]) == expected(ws, "a/req.txt", "a-b/req.txt", "req.txt")


def test_literal_patterns_keep_their_order(ws: Path) -> None:
    assert hash_files(ws, ["req.txt", "b.txt"]) == expected(ws, "req.txt", "b.txt")
    assert hash_files(ws, ["b.txt", "req.txt"]) == expected(ws, "b.txt", "req.txt")


def test_a_directory_stands_for_everything_under_it(ws: Path) -> None:
    want = expected(ws, "src/sub/x.py", "src/sub/z.lock", "src/y.py")
    assert hash_files(ws, ["src"]) == hash_files(ws, ["src/"]) == hash_files(ws, ["src/**"]) == want


def test_question_mark_is_one_character_and_classes_work(ws: Path) -> None:
    assert hash_files(ws, ["?.txt"]) == expected(ws, "B.txt", "b.txt")
    assert hash_files(ws, ["[bB].txt"]) == expected(ws, "B.txt", "b.txt")
    assert hash_files(ws, ["?req.txt"]) == ""


def test_hidden_directories_count(ws: Path) -> None:
    assert hash_files(ws, ["**/config"]) == expected(ws, ".git/config")


def test_negation_applies_in_order(ws: Path) -> None:
    assert hash_files(ws, ["**/*.lock", "!**/node_modules/**"]) == expected(ws, "src/sub/z.lock")
    # a negation before the pattern it would exclude from excludes nothing
    assert hash_files(ws, ["!**/node_modules/**", "**/*.lock"]) == expected(
        ws, "node_modules/x/p.lock", "src/sub/z.lock"
    )


def test_several_patterns_in_one_argument_and_comments(ws: Path) -> None:
    assert hash_files(ws, ["# deps\n**/*.py\n**/*.lock"]) == hash_files(ws, ["**/*.py", "**/*.lock"])
    assert hash_files(ws, ["**/*.py\n**/*.lock"]) == expected(
        ws, "node_modules/x/p.lock", "src/sub/x.py", "src/sub/z.lock", "src/y.py"
    )


def test_absolute_patterns_inside_the_workspace_and_nothing_outside(ws: Path) -> None:
    assert hash_files(ws, [f"{ws}/src/y.py"]) == expected(ws, "src/y.py")
    assert hash_files(ws, ["/etc/hostname", "/etc/**"]) == ""
    # the guest's path of the workspace names the host's copy
    assert hash_files(ws, ["/home/runner/work/r/r/b.txt"], "/home/runner/work/r/r") == expected(ws, "b.txt")


def test_links_to_directories_are_followed_only_when_asked(ws: Path) -> None:
    (ws / "linked").symlink_to(ws / "src")
    assert hash_files(ws, ["linked/**"]) == ""
    assert hash_files(ws, ["--follow-symbolic-links", "linked/**"]) == expected(
        ws, "src/sub/x.py", "src/sub/z.lock", "src/y.py"
    )


def test_refusals(ws: Path) -> None:
    with pytest.raises(ExpressionError, match="not allowed"):
        hash_files(ws, ["../outside/*"])
    with pytest.raises(ExpressionError, match="invalid glob option"):
        hash_files(ws, ["--nope", "*"])
    (ws / "broken").symlink_to(ws / "missing")
    with pytest.raises(ExpressionError, match="cannot read broken"):
        hash_files(ws, ["broken"])


def test_through_the_expression(ws: Path) -> None:
    scope = Scope({"github": {"workspace": "/w/r"}}, workspace=ws)
    assert evaluate("hashFiles('b.txt', 'req.txt')", scope) == expected(ws, "b.txt", "req.txt")
    assert evaluate("hashFiles('/w/r/req.txt')", scope) == expected(ws, "req.txt")
    assert evaluate("hashFiles('none/*')", scope) == ""


def test_a_workspace_path_with_glob_characters(tmp_path: Path) -> None:
    ws = tmp_path / "repo[1]*?"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.txt").write_text("a")
    assert hash_files(ws, ["src/*.txt"]) == expected(ws, "src/a.txt")
    assert hash_files(ws, ["/g/src/a.txt"], "/g") == expected(ws, "src/a.txt")
