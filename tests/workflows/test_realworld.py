"""Constructs found in public repositories' workflow files (tests/fixtures/workflows/realworld, written for
these tests), run with `smith run` on the sandbox backend; each expectation is GitHub's documented result."""

from __future__ import annotations

from pathlib import Path

from tests.workflows.conftest import BWRAP, copy_repo, smith_run
from tests.workflows.test_hashfiles import expected

pytestmark = BWRAP
WF = ".github/workflows"


def test_expressions_env_and_job_level_contexts(tmp_path: Path) -> None:
    repo = copy_repo("realworld", tmp_path)
    ran = smith_run(str(repo), "--workflow", f"{WF}/expressions.yml", "--event", "push")
    assert ran.code == 0, ran.log
    assert ran.results() == {"setup": "success", "checks": "success", "lenient": "success", "after": "success"}
    log = ran.log
    assert "A=step-a B=job-a" in log  # env.A inside a step's env map is the job's A, not the sibling key
    assert "mode=deploy" in log and "ternary=yes" in log and "format={0}=x" in log and "join=a+b" in log
    assert "big=1.23456789012346E+16" in log  # numbers print as G15
    assert "ref_name=main head_ref=[]" in log
    # walk order: app/ before app-extra/ (sorted paths would put app-extra/ first); skip/ negated
    want = expected(repo, "app/requirements.txt", "app/sub/requirements-dev.txt", "app-extra/requirements.txt")
    assert f"hash={want} none=[]" in log
    assert "outcome=failure conclusion=success status=success" in log
    assert "temp ok" in log and "tool cache ok" in log and "pwd=realworld" in log
    assert "login shell" in log
    assert "checks=success lenient=success" in log  # continue-on-error from needs.setup.outputs


def test_object_matrix_include_and_windows_only_steps(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("realworld", tmp_path)), "--workflow", f"{WF}/matrix.yml", "--event", "push")
    assert ran.code == 0, ran.log
    assert ran.results() == {
        "linux py3.12": "success",
        "linux py3.13": "success",
        "windows py3.12": "success",
        "windows py3.13": "success",
        "linux py3.14": "success",  # the include that matched nothing is added; it fails, but may
        "Shard 0 of 2": "success",  # a name may use the strategy context
        "Shard 1 of 2": "success",
    }
    log = ran.log
    assert "linux-3.13 coverage=true" in log and "windows-3.13 coverage=true" in log
    assert "linux-3.12 coverage=no" in log and "linux-3.14 coverage=no" in log
    assert "never on Linux" not in log


def test_every_trigger_kind_anchors_and_runner_groups(tmp_path: Path) -> None:
    ran = smith_run(str(copy_repo("realworld", tmp_path)), "--workflow", f"{WF}/triggers.yml", "--event", "push")
    assert ran.code == 0, ran.log
    assert ran.results() == {"build": "success"}
    assert ran.log.count("hello from smith on push") == 2
    assert "matrix=null strategy=1/1 name=[]" in ran.log  # a job without a matrix: matrix is null


def test_powershell_is_a_clear_refusal(tmp_path: Path) -> None:
    repo = copy_repo("realworld", tmp_path)
    ran = smith_run(str(repo), "--workflow", f"{WF}/pwsh.yml", "--event", "workflow_dispatch")
    assert ran.code == 1
    assert ran.results() == {"ps": "failure"}
    assert "shell 'pwsh' is not available in Smith's Linux guests" in ran.log


def test_the_event_payload_smith_run_makes_up_has_what_workflows_read(tmp_path: Path) -> None:
    repo = copy_repo("realworld", tmp_path)
    push = smith_run(str(repo), "--workflow", f"{WF}/event.yml", "--event", "push")
    assert push.code == 0, push.log
    assert "pr= base= default=main" in push.log and "owner=local fork=true" in push.log
    assert "msg=corpus labels=" in push.log  # head_commit from git
    pr = smith_run(str(repo), "--workflow", f"{WF}/event.yml", "--event", "pull_request")
    assert pr.code == 0, pr.log
    assert "pr=1 base=main default=main" in pr.log and "owner=local fork=false" in pr.log


def test_workflow_dispatch_inputs_are_typed_as_declared(tmp_path: Path) -> None:
    repo = copy_repo("realworld", tmp_path)
    args = ("--workflow", f"{WF}/dispatch.yml", "--event", "workflow_dispatch")
    ran = smith_run(str(repo), *args, "--input", "dry_run=false", "--input", "shards=3")
    assert ran.code == 0, ran.log
    # a boolean input given as "false" is the boolean false in `inputs`, the string "false" in github.event.inputs
    assert "publishing" in ran.log and "dry run only" not in ran.log and "debugging" not in ran.log
    assert "typed: dry=false shards+=true event=false" in ran.log
    assert 'json:{"dry_run":false,"debug_enabled":"false","shards":3}' in ran.log
    ran = smith_run(str(repo), *args, "--input", "dry_run=true", "--input", "debug_enabled=true")
    assert ran.code == 0, ran.log
    assert "dry run only" in ran.log and "publishing" not in ran.log and "debugging" in ran.log
    assert "typed: dry=true shards+=false event=true" in ran.log
    bad = smith_run(str(repo), *args, "--input", "dry_run=maybe")
    assert bad.code == 2 and "input 'dry_run' is a boolean" in bad.log
