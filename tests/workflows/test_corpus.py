"""The corpus (tests/fixtures/workflows), each run with `smith run` on the sandbox backend."""

from __future__ import annotations

from pathlib import Path

from tests.workflows.conftest import BWRAP, Ran, copy_repo, smith_run

pytestmark = BWRAP


def test_python_matrix(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("python", tmp_path)))
    assert ran.code == 0, ran.log
    assert ran.results() == {"test (3, fast)": "success", "test (3, full)": "success"}
    assert "python 3" in ran.log and "setup said 3." in ran.log and "test_full (check_calc.CalcTest" in ran.log
    assert "skipped 'full mode only'" in ran.log  # MODE reached the step from matrix through env
    assert "modules: __init__.py,calc.py" in ran.log


def test_node_with_a_javascript_action(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("node", tmp_path)))
    assert ran.code == 0, ran.log
    log = ran.log
    assert "node tests passed" in log and "v20." in log
    assert log.index("pre: preparing") < log.index("Hello, push!") < log.index("post: cleaning up (state 42)")
    assert "state in main: yes" in log
    assert "action said 'Hello, push!'" in log


def test_go_like_build(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("build", tmp_path)))
    assert ran.code == 0, ran.log
    assert "ok  \tcorpus/hello" in ran.log and "vet: no issues" in ran.log
    assert "go version go1.22" in ran.log  # GITHUB_PATH reached the next step
    assert "main.txt" in ran.log and "+ echo traced" in ran.log


def test_matrix_include_exclude_dynamic_and_fail_fast_off(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("matrix", tmp_path)))
    assert ran.code == 1  # the bsd combination fails
    results = ran.results()
    assert results["dynamic (alpha)"] == results["dynamic (beta)"] == "success"
    assert "dynamic alpha 0/2" in ran.log and "dynamic beta 1/2" in ran.log
    grid = {k: v for k, v in results.items() if k.startswith("grid")}
    assert grid == {
        "grid (linux, 1)": "success",  # a key an include adds to a combination does not show in its name
        "grid (linux, 2)": "success",
        "grid (mac, 2)": "success",
        "grid (bsd, 9)": "failure",
    }
    assert "grid linux-1 experimental=true" in ran.log and "grid mac-2 experimental=false" in ran.log


def test_matrix_filter_and_single_job(tmp_path: Path) -> None:
    repo = copy_repo("matrix", tmp_path)
    ran = smith_run(str(repo), "--job", "grid", "--matrix", "os=mac")
    assert ran.code == 0, ran.log
    assert ran.results() == {"grid (mac, 2)": "success"}


def test_caching_falls_back_to_a_miss_without_a_cache_server(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("caching", tmp_path)))
    assert ran.code == 0, ran.log
    assert "hit=false" in ran.log and "installing dependencies" in ran.log
    key = next(line for line in ran.log.splitlines() if "key=Linux-pip-" in line)
    assert len(key.split("key=Linux-pip-")[1].split()[0]) == 64  # hashFiles of requirements.txt


def test_outputs_env_files_commands_and_masking(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("outputs", tmp_path)), "--secret", "API_TOKEN=s3cr3t-value")
    assert ran.code == 0, ran.log
    log = ran.log
    assert "s3cr3t-value" not in log and "token is ***" in log
    assert "dynamic-value-77" not in log and "masked: ***" in log
    assert "env file: set-by-step" in log and "multi: a,b," in log
    assert "Warning: app.py:3: Careful: something odd" in log
    assert "::warning::not a command now" in log and "Notice: commands back" in log
    assert "version 1.2.3 / success" in log and "legacy old-style" in log and "notes 2" in log
    produce = ran.job("produce")
    assert produce["outputs"]["notes"] == "line one\nline two"
    assert "ref=refs/heads/main" in log and "event=push" in log


def test_composite_actions_nested_with_defaults_and_outputs(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("composite", tmp_path)))
    assert ran.code == 0, ran.log
    log = ran.log
    assert "outer got number=5 label=default-push OUTER=from-step-env" in log
    assert "outer got number=21 label=given OUTER=" in log
    assert "inner sees INNER_ENV=inner-env and action path inner" in log
    assert "python inside a composite" in log
    assert "results 10 42" in log


def test_continue_on_error_failure_always_timeouts_and_needs(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("failing", tmp_path)))
    assert ran.code == 1
    assert ran.results() == {"tolerant": "success", "strict": "failure", "after": "skipped", "report": "success"}
    log = ran.log
    assert "flaky outcome=failure conclusion=success" in log
    assert "]     must not run" not in log  # as output; the skipped steps are still listed
    assert "cleanup after failure" in log and "always runs" in log
    assert "slow outcome=failure" in log and "timed out" in log
    assert "tolerant=success strict=failure" in log


def run_text(tmp_path: Path, text: str, *args: str, repo: Path | None = None, name: str = "w.yml") -> Ran:
    """`smith run` of a workflow written outside the repository (tmp_path/name)."""
    wf = tmp_path / name
    wf.write_text("on: push\njobs:\n  a:\n    runs-on: x\n" + text)
    return smith_run(str(repo or tmp_path), "--workflow", str(wf), *args)


def test_repo_dir_elsewhere_and_workflow_outside_github_dir(tmp_path: Path) -> None:
    repo = copy_repo("failing", tmp_path, git=False)
    ran = run_text(tmp_path, '    steps:\n      - run: echo "in $(basename $PWD)"\n', repo=repo)
    assert ran.code == 0, ran.log
    assert "in failing" in ran.log


def test_invalid_workflow_exits_2_with_a_located_error(tmp_path: Path) -> None:
    ran = run_text(tmp_path, "    stepz: []\n", name="bad.yml")
    assert ran.code == 2
    assert "bad.yml:5: job 'a': unknown key 'stepz'" in ran.log


def test_a_job_smith_cannot_run_fails_alone_and_the_others_run(tmp_path: Path) -> None:
    """As on GitHub, one job with `services` does not stop the workflow's other jobs: it fails with a located
    reason, a job that needs it is skipped, the rest run."""
    jobs = "    services:\n      db: {image: postgres}\n    steps:\n      - run: x\n"
    jobs += "  b:\n    runs-on: x\n    steps:\n      - run: echo b-ran\n"
    jobs += "  c:\n    needs: a\n    runs-on: x\n    steps:\n      - run: echo c-ran\n"
    ran = run_text(tmp_path, jobs, "--json", name="some.yml")
    assert ran.code == 1, ran.log
    assert "some.yml:5: job 'a': 'services' is not supported" in ran.log
    assert "b-ran" in ran.log and "c-ran" not in ran.log


def test_unknown_remote_action_is_an_early_error_naming_the_step(tmp_path: Path) -> None:
    steps = "    steps:\n      - run: echo first-step-ran\n"
    steps += "      - name: Setup thing\n        uses: someone/setup-thing@v1\n"
    ran = run_text(tmp_path, steps)
    assert ran.code == 1
    assert "step 'Setup thing' (line 7): remote action someone/setup-thing@v1 is not available" in ran.log
    assert "first-step-ran" not in ran.log


def test_remote_action_from_a_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "acme" / "greet@v2"
    mirror.mkdir(parents=True)
    (mirror / "action.yml").write_text(
        "name: greet\ninputs:\n  name: {default: world}\nruns:\n  using: composite\n  steps:\n"
        '    - shell: sh\n      run: echo "mirrored hello ${{ inputs.name }}"\n'
    )
    ran = run_text(tmp_path, "    steps:\n      - uses: acme/greet@v2\n", "--action-mirror", str(tmp_path / "mirror"))
    assert ran.code == 0, ran.log
    assert "mirrored hello world" in ran.log


def test_docker_actions_are_refused(tmp_path: Path) -> None:
    ran = run_text(tmp_path, "    steps:\n      - uses: docker://alpine:3\n")
    assert ran.code == 1 and "docker:// actions are not supported" in ran.log


def test_setup_actions_check_the_guest_version(tmp_path: Path) -> None:
    ran = run_text(
        tmp_path, "    steps:\n      - uses: actions/setup-node@v4\n        with:\n          node-version: 8\n"
    )
    assert ran.code == 1 and "actions/setup-node@v4: node 8 asked for, the guest has" in ran.log


def test_fail_fast_cancels_the_other_matrix_jobs(tmp_path: Path) -> None:
    steps = (
        "    strategy:\n      max-parallel: 1\n      matrix:\n        n: [1, 2, 3]\n"
        "    steps:\n      - run: echo run-${{ matrix.n }} && test ${{ matrix.n }} != 1\n"
    )
    ran = run_text(tmp_path, steps)
    assert ran.code == 1
    assert ran.results() == {"a (1)": "failure", "a (2)": "cancelled", "a (3)": "cancelled"}
    assert "run-2" not in ran.log


def test_eventpath_and_workflow_dispatch_inputs(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"number": 7, "pull_request": {"head": {"ref": "feat"}, "base": {"ref": "main"}}}')
    wf = tmp_path / "pr.yml"
    wf.write_text(
        "on:\n  pull_request:\n  workflow_dispatch:\n    inputs:\n      level: {default: info}\n"
        "      who: {required: true}\n"
        "jobs:\n  a:\n    runs-on: x\n    steps:\n"
        '      - run: echo "pr=${{ github.event.number }} head=${{ github.head_ref }} ref=$GITHUB_REF"\n'
        '      - run: echo "level=${{ inputs.level }} who=${{ inputs.who }} ev=${{ github.event.inputs.who }}"\n'
    )
    pr = smith_run(str(tmp_path), "--workflow", str(wf), "--event", "pull_request", "--eventpath", str(event))
    assert pr.code == 0, pr.log
    assert "pr=7 head=feat ref=refs/pull/7/merge" in pr.log and "level= who= ev=" in pr.log
    missing = smith_run(str(tmp_path), "--workflow", str(wf), "--event", "workflow_dispatch")
    assert missing.code == 2 and "input 'who' is required" in missing.log
    dispatch = smith_run(str(tmp_path), "--workflow", str(wf), "--event", "workflow_dispatch", "--input", "who=mona")
    assert dispatch.code == 0, dispatch.log
    assert "level=info who=mona ev=mona" in dispatch.log
    other = smith_run(str(tmp_path), "--workflow", str(wf), "--event", "push")
    assert other.code == 2 and "does not run on push" in other.log


def test_job_names_with_expressions_name_the_matrix_jobs(tmp_path: Path) -> None:
    steps = (
        "    name: py${{ matrix.V }}${{ matrix.LABEL }}\n    strategy:\n      matrix:\n        V: ['3.9']\n"
        "        include:\n          - V: '3.8'\n            LABEL: /coverage\n"
        "    steps:\n      - if: ${{ matrix.LABEL }}\n        run: echo labelled\n"
    )
    ran = run_text(tmp_path, steps)
    assert ran.code == 0, ran.log
    assert ran.results() == {"py3.9": "success", "py3.8/coverage": "success"}
    assert "[py3.8/coverage]     labelled" in ran.log and "[py3.9]     labelled" not in ran.log


def test_artifacts_between_jobs(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    ran = smith_run(str(copy_repo("artifacts", tmp_path)), "--artifact-path", str(keep))
    assert ran.code == 0, ran.log
    assert "binary v1" in ran.log and "]     doc" in ran.log and "log excluded" in ran.log
    assert "downloaded to out" in ran.log
    assert "Warning: No files were found with the provided path: no-such-dir/" in ran.log
    assert sorted(str(p.relative_to(keep)) for p in keep.rglob("*") if p.is_file()) == [
        "dist/app.bin",
        "dist/sub/readme.txt",
    ]


def test_list_shows_jobs_in_needs_order_and_runs_nothing() -> None:
    from typer.testing import CliRunner

    from smith.cli import app
    from tests.workflows.conftest import CORPUS

    result = CliRunner().invoke(app, ["run", str(CORPUS / "failing"), "--list"])
    assert result.exit_code == 0
    stages = [line.split()[2] + ":" + line.split()[3] for line in result.stdout.splitlines()]
    assert stages == ["0:tolerant", "0:strict", "1:after", "1:report"]


def test_path_filters_use_the_push_range_from_git(tmp_path: Path) -> None:
    import json
    import subprocess

    repo = copy_repo("build", tmp_path)  # on: push: paths-ignore: ["**.md"]
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}

    def commit(name: str) -> str:
        (repo / name).write_text("x\n")
        for args in (["add", "-A"], ["commit", "-qm", name]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env={**env, "PATH": "/usr/bin:/bin"})
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip()

    base = commit("first.txt")
    docs = commit("NOTES.md")
    event = tmp_path / "push.json"
    event.write_text(json.dumps({"ref": "refs/heads/main", "before": base, "after": docs}))
    only_docs = smith_run(str(repo), "--eventpath", str(event))
    assert only_docs.code == 2 and "no workflow" in only_docs.log
    code = commit("main.go")
    event.write_text(json.dumps({"ref": "refs/heads/main", "before": base, "after": code}))
    assert smith_run(str(repo), "--eventpath", str(event), "--list").code == 0
