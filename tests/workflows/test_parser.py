"""Workflow files into models: the three `on` syntaxes, filters, located errors, matrix, needs."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from smith.workflows.errors import WorkflowError
from smith.workflows.globs import matches
from smith.workflows.matrix import expand, named
from smith.workflows.model import Workflow
from smith.workflows.parser import parse
from smith.workflows.triggers import triggered


def wf(text: str) -> str:
    return textwrap.dedent(text).lstrip()


JOB = "jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"
# a job whose env has A (a literal) and B = {value}; B is on line 9
ENV_JOB = (
    "on: push\nenv:\n  A: w\njobs:\n  a:\n    runs-on: x\n    env:\n      A: j\n      B: {value}\n"
    "    steps:\n      - run: x\n"
)
# a job whose matrix has one axis, os, then {extra} and one exclude entry {exclude} on line 10
MATRIX_JOB = (
    "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix:\n        os: [a, b]\n        {extra}\n"
    "        exclude:\n          - {exclude}\n    steps:\n      - run: x\n"
)


@pytest.mark.parametrize(
    ("on", "events"),
    [
        ("on: push\n", ["push"]),
        ("on: [push, pull_request]\n", ["push", "pull_request"]),
        ("on:\n  push:\n    branches: [main]\n  workflow_dispatch:\n", ["push", "workflow_dispatch"]),
    ],
)
def test_on_in_all_three_syntaxes(on: str, events: list[str]) -> None:
    assert list(parse(on + JOB).on) == events


def test_full_model() -> None:
    w = parse(
        wf("""
        name: CI
        on:
          push:
            branches: [main, 'releases/**']
            paths-ignore: ['docs/**']
          workflow_dispatch:
            inputs:
              level: {type: choice, default: info, options: [info, debug]}
        env: {A: "1"}
        defaults:
          run: {shell: bash}
        permissions: read-all
        concurrency: ci-${{ github.ref }}
        jobs:
          build:
            runs-on: [self-hosted, linux]
            outputs: {v: "${{ steps.s.outputs.v }}"}
            strategy:
              fail-fast: false
              max-parallel: 2
              matrix: {py: ["3.11", "3.12"]}
            steps:
              - id: s
                name: Set
                run: echo "v=1" >> "$GITHUB_OUTPUT"
                shell: sh
                working-directory: sub
                continue-on-error: true
                timeout-minutes: 5
          test:
            needs: build
            if: github.event_name == 'push'
            runs-on: ubuntu-latest
            steps:
              - uses: ./.github/actions/x
                with: {a: b}
        """)
    )
    assert w.name == "CI" and w.env == {"A": "1"} and w.defaults_run == {"shell": "bash"}
    assert w.permissions == "read-all" and w.concurrency == "ci-${{ github.ref }}"
    assert w.on["push"].branches == ["main", "releases/**"] and w.on["push"].paths_ignore == ["docs/**"]
    assert w.on["workflow_dispatch"].inputs["level"]["default"] == "info"
    b = w.jobs["build"]
    assert b.strategy is not None and b.strategy.fail_fast is False and b.strategy.max_parallel == 2
    s = b.steps[0]
    assert (s.id, s.shell, s.working_directory, s.continue_on_error, s.timeout_minutes) == ("s", "sh", "sub", True, 5)
    assert w.jobs["test"].needs == ["build"] and w.jobs["test"].steps[0].with_ == {"a": "b"}
    assert w.stages() == [["build"], ["test"]]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("on: push\njobs:\n  a:\n    steps:\n      - run: x\n", 3, "missing 'runs-on'"),
        ("on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: x\n        uses: y\n", 6, "exactly one"),
        ("on: push\njobs:\n  a:\n    runs-on: x\n    needs: b\n    steps:\n      - run: x\n", 3, "needs 'b'"),
        ("on: push\njobs:\n  a:\n    runs-on: x\n    stepz: []\n", 5, "unknown key 'stepz'"),
        ("on: push\njobs:\n  a: [\n", 4, "invalid YAML"),
        ("jobs: {}\n", 1, "missing 'on'"),
        # GitHub refuses these too: a job's env may not read env (only github, needs, strategy, matrix, vars,
        # secrets, inputs), and an exclude may only name the matrix's axes
        (ENV_JOB.format(value="${{ env.A }}"), 9, "'env.B': unrecognized named-value: 'env'"),
        (ENV_JOB.format(value="v-${{ format('{0}', ENV.A) }}"), 9, "unrecognized named-value: 'env'"),
        (MATRIX_JOB.format(extra="", exclude="{os: a, arch: b}"), 10, "exclude key 'arch' does not match any key"),
        (MATRIX_JOB.format(extra="include: [{os: a, arch: b}]", exclude="{arch: b}"), 10, "exclude key 'arch'"),
    ],
)
def test_located_errors(text: str, line: int, what: str) -> None:
    with pytest.raises(WorkflowError) as err:
        parse(text, "ci.yml")
    assert err.value.file == "ci.yml" and err.value.line == line and what in err.value.what, err.value.message


def matrix_of(w: Workflow) -> dict[str, Any]:
    strategy = w.jobs["a"].strategy
    assert strategy is not None and isinstance(strategy.matrix, dict)
    return strategy.matrix


def test_a_job_env_reads_the_contexts_github_gives_it_and_an_exclude_names_the_matrix_axes() -> None:
    """What GitHub accepts next to what it refuses (test_located_errors): a job's env reading github, needs,
    strategy, matrix, vars, secrets or inputs; a step's env reading env; an exclude naming real axes (also
    objects'); an include adding a key."""
    job_env = "${{ matrix.os }} ${{ github.ref }} ${{ needs.b.outputs.x }} ${{ strategy.job-index }} ${{ vars.V }}"
    w = parse(ENV_JOB.format(value=f"'{job_env} ${{{{ secrets.S }}}} ${{{{ inputs.i }}}}'"), "ci.yml")
    assert w.jobs["a"].env["B"].startswith("${{ matrix.os }}")
    step_env = "    steps:\n      - run: x\n        env:\n          C: ${{ env.A }}\n"
    assert parse(ENV_JOB.format(value="x").replace("    steps:\n      - run: x\n", step_env)).jobs["a"].steps
    w = parse(MATRIX_JOB.format(extra="include: [{os: a, arch: b}, {os: c}]", exclude="{os: b}"))
    assert expand(matrix_of(w)) == [{"os": "a", "arch": "b"}, {"os": "c"}]
    objects = MATRIX_JOB.format(extra="cfg: [{v: 1}, {v: 2}]", exclude="{os: a, cfg: {v: 1}}")
    assert len(expand(matrix_of(parse(objects)))) == 3
    # a matrix that is an expression is checked when it is expanded
    with pytest.raises(WorkflowError, match=r"job 'a': strategy\.matrix\.exclude: matrix exclude key 'arch'"):
        expand({"os": ["a"], "include": [{"arch": "x"}], "exclude": [{"arch": "x"}]}, "job 'a': ")


@pytest.mark.parametrize(
    ("job", "line", "what"),
    [
        ("    runs-on: x\n    services: {}\n    steps:\n      - run: x\n", 5, "'services'"),
        ("    runs-on: x\n    container: x\n    steps:\n      - run: x\n", 5, "'container'"),
        ("    uses: o/r/.github/workflows/x.yml@v1\n    secrets: inherit\n", 3, "reusable workflows"),
    ],
)
def test_a_job_smith_cannot_run_is_kept_with_its_located_reason(job: str, line: int, what: str) -> None:
    """The file parses (GitHub runs its other jobs); the job keeps its needs and if, and carries why it cannot run."""
    text = (
        "on: push\njobs:\n  a:\n"
        + job
        + "  b:\n    needs: a\n    if: always()\n    runs-on: x\n    steps:\n      - run: x\n"
    )
    w = parse(text, "ci.yml")
    a = w.jobs["a"]
    assert a.unsupported is not None and a.unsupported.startswith(f"ci.yml:{line}: job 'a': ") and what in a.unsupported
    assert not a.steps and w.jobs["b"].unsupported is None and w.stages() == [["a"], ["b"]]


def test_needs_cycle_is_an_error() -> None:
    text = "on: push\njobs:\n" + "".join(
        f"  {j}:\n    runs-on: x\n    needs: [{n}]\n    steps:\n      - run: x\n"
        for j, n in (("a", "c"), ("b", "a"), ("c", "b"))
    )
    with pytest.raises(WorkflowError, match="cycle: a -> c -> b -> a"):
        parse(text)


def test_matrix_include_exclude_as_documented() -> None:
    # GitHub docs "Expanding or adding matrix configurations"
    combos = expand(
        {
            "fruit": ["apple", "pear"],
            "animal": ["cat", "dog"],
            "include": [
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"},
            ],
        }
    )
    assert combos == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    # an include matches loosely (3.10 the number, 'UBUNTU') but never rewrites the original values
    loose = expand({"py": ["3.10"], "os": ["ubuntu"], "include": [{"py": 3.10, "os": "UBUNTU", "extra": "x"}]})
    assert loose == [{"py": "3.10", "os": "ubuntu", "extra": "x"}]
    ex = expand({"os": ["a", "b"], "v": [1, 2], "exclude": [{"os": "a", "v": 2}]})
    assert ex == [{"os": "a", "v": 1}, {"os": "b", "v": 1}, {"os": "b", "v": 2}]


def test_plain_scalars_are_typed_by_the_yaml_1_2_core_schema() -> None:
    # GitHub reads workflows with the YAML 1.2 core schema: no sexagesimals, dates, underscores or 0-octals
    # (seen in the wild: `manylinux: 2_17` in a maturin step's `with`, which YAML 1.1 reads as the number 217)
    w = parse(
        "on: push\nenv:\n  T: 12:30\n  D: 2024-01-01\n  U: 1_000\n  O: 0777\n  E: 1e3\n  Y: yes\n  H: 0x1F\n"
        "  Q: '~'\n  N: ~\n  P: 3.10\n" + JOB
    )
    assert w.env == {
        "T": "12:30",
        "D": "2024-01-01",
        "U": "1_000",
        "O": 777,
        "E": 1000.0,
        "Y": "yes",
        "H": 31,
        "Q": "~",
        "N": None,
        "P": 3.1,
    }


def test_matrix_job_names_show_the_axes_values_flattened() -> None:
    # The suffix of a matrix job's name: the axes' values (objects and lists flattened to scalars, empty values
    # left out); keys an include adds to existing combinations do not show; a combination an include added
    # shows all its values.
    pairs = named(
        {
            "platform": [{"name": "linux", "os": "ubuntu-latest"}, {"name": "win", "os": None}],
            "python": ["3.12", ""],
            "flags": [["-O", "-g"]],
            "include": [{"python": "3.12", "coverage": True}, {"platform": "bsd", "python": 3.1, "extra": ""}],
        }
    )
    assert [n for _, n in pairs] == [
        "linux, ubuntu-latest, 3.12, -O, -g",
        "linux, ubuntu-latest, -O, -g",
        "win, 3.12, -O, -g",
        "win, -O, -g",
        "bsd, 3.1",
    ]
    assert pairs[0][0]["coverage"] is True


@pytest.mark.parametrize(
    ("value", "patterns", "expected"),
    [
        ("main", ["main"], True),
        ("feature/x", ["feature/*"], True),
        ("feature/x/y", ["feature/*"], False),
        ("feature/x/y", ["feature/**"], True),
        ("releases/10", ["releases/**", "!releases/**-alpha"], True),
        ("releases/10-alpha", ["releases/**", "!releases/**-alpha"], False),
        ("docs/a/b.md", ["**.md"], True),
        ("README.md", ["*.md"], True),
        ("a/README.md", ["*.md"], False),
        ("v2", ["v[12]"], True),
        ("v3", ["v[12]"], False),
        ("v1.0", ["v1.?0"], True),  # ? : zero or one of the preceding character
        ("v100", ["v1+"], False),
        ("v111", ["v1+"], True),
    ],
)
def test_glob_rules(value: str, patterns: list[str], expected: bool) -> None:
    assert matches(value, patterns) is expected


def test_trigger_filters() -> None:
    w = parse(
        "on:\n  push:\n    branches: [main]\n    paths: ['src/**']\n  pull_request:\n    branches-ignore: [wip/**]\n"
        + JOB
    )
    push = {"ref": "refs/heads/main"}
    assert triggered(w, "push", push, ["src/a.py"])
    assert not triggered(w, "push", push, ["docs/a.md"])
    assert not triggered(w, "push", {"ref": "refs/heads/dev"}, None)
    assert not triggered(w, "push", {"ref": "refs/tags/v1"}, None)  # branch filters only: tags do not run
    pr = {"action": "opened", "pull_request": {"base": {"ref": "main"}}}
    assert triggered(w, "pull_request", pr)
    assert not triggered(w, "pull_request", {**pr, "action": "closed"})  # default types
    assert not triggered(w, "pull_request", {**pr, "pull_request": {"base": {"ref": "wip/x"}}})
    assert not triggered(w, "issues", {})


@pytest.mark.parametrize(
    ("wanted", "have", "ok"),
    [
        ("3.11", "3.11.2", True),
        ("3.x", "3.11.2", True),
        ("3.1", "3.11.2", False),
        ("3.12", "3.11.2", False),
        (">=3.9", "3.11.2", True),
        (">=3.12", "3.11.2", False),
        ("20.x", "20.20.2", True),
        ("lts/*", "20.20.2", True),
        ("18", "20.20.2", False),
        ("", "1.0", True),
    ],
)
def test_setup_version_matching(wanted: str, have: str, ok: bool) -> None:
    from smith.workflows.actions import version_matches

    assert version_matches(wanted, have) is ok


def test_runs_on_labels_see_the_job_contexts() -> None:
    # seen in the wild: runs-on chosen by github.repository, by a matrix object, or a runner group mapping
    from pathlib import Path

    from smith.workflows.context import RunInfo
    from smith.workflows.executor import Executor

    w = parse(
        wf("""
        on: push
        jobs:
          a:
            runs-on: ${{ github.repository == 'o/r' && 'big-runner' || 'ubuntu-latest' }}
            steps: [{run: x}]
          b:
            runs-on: ${{ matrix.platform.runs-on }}
            strategy: {matrix: {platform: [{runs-on: [self-hosted, arm64]}]}}
            steps: [{run: x}]
          c:
            runs-on: {group: large, labels: [self-hosted, "${{ needs.a.outputs.size }}"]}
            needs: a
            steps: [{run: x}]
        """)
    )
    info = RunInfo(Path("."), "o/r", "push", {}, "0" * 40, "refs/heads/main", "w", "w.yml")
    ex = Executor(info, w, lambda key: None, None)  # type: ignore[arg-type,return-value]
    assert ex.runs_on("a", {}, {}, {}) == ["big-runner"]
    assert ex.runs_on("b", {}, {"platform": {"runs-on": ["self-hosted", "arm64"]}}, {}) == ["self-hosted", "arm64"]
    needs = {"a": {"result": "success", "outputs": {"size": "xl"}}}
    assert ex.runs_on("c", needs, {}, {}) == ["self-hosted", "xl"]
