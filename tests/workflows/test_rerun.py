"""An operator cancels a whole built-in workflow run, and re-runs a finished one, through the operator API and
`smith jobs cancel-run` / `smith jobs rerun` (real control plane on the embedded Valkey, no agent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from smith.cli import app
from smith.control import wfrerun
from tests.control.conftest import control_factory, operator_token  # noqa: F401  (fixture)
from tests.workflows.test_platform import REPO, make_repo
from tests.workflows.test_runs import Statuses, plane, report

TWO = """\
name: Two
on: workflow_dispatch
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo build
  test:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: echo test
"""


def configured(tmp_path: Path, control_factory: Any) -> Any:  # noqa: F811
    repo, _, _ = make_repo(tmp_path, {"two.yml": TWO})
    config = tmp_path / "repos.json"
    config.write_text(orjson.dumps({"repositories": [{"repository": REPO, "source": str(repo)}]}).decode())
    return control_factory(workflow_repos=config)


def test_cancel_a_run_then_rerun_it(tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    control = configured(tmp_path, control_factory)
    body = {"repository": REPO, "workflow": ".github/workflows/two.yml", "ref": "feature"}
    with control.client(operator_token()) as c:
        [run_id] = c.post("/v1/workflows/dispatch", json=body).json()["runs"]
        [build_id] = c.get(f"/v1/workflows/runs/{run_id}").json()["jobs"]["build"]["smith_jobs"]
        assert c.post(f"/v1/workflows/runs/{run_id}/rerun").status_code == 409  # still running
        r = c.post(f"/v1/workflows/runs/{run_id}/cancel", json={"reason": "wrong branch"})
        assert r.status_code == 200, r.text
        run = r.json()
        assert (run["state"], run["conclusion"]) == ("completed", "cancelled"), run
        assert run["jobs"]["build"]["result"] == "cancelled" and run["jobs"]["test"]["result"] == "cancelled"
        assert run["jobs"]["test"]["smith_jobs"] == []  # never started
        build = c.get(f"/v1/jobs/{build_id}").json()
        assert build["state"] == "cancelled" and "wrong branch" in build["reason"]
        assert c.post(f"/v1/workflows/runs/{run_id}/cancel", json={}).status_code == 409  # finished
        again = c.post(f"/v1/workflows/runs/{run_id}/rerun")
        assert again.status_code == 201, again.text
        second = again.json()
        assert (second["attempt"], second["rerun_of"], second["state"]) == ("2", run_id, "running")
        assert (second["sha"], second["ref"], second["event_name"]) == (run["sha"], run["ref"], "workflow_dispatch")
        [new_build] = second["jobs"]["build"]["smith_jobs"]
        assert new_build != build_id and c.get(f"/v1/jobs/{new_build}").json()["state"] == "queued"
        assert c.post(f"/v1/workflows/runs/{run_id}/rerun").json()["id"] == second["id"]  # the same attempt
        # The agent's spec: github.run_attempt 2, github.run_id the first attempt's (as on GitHub).
        lease = control.agent("agent-1").post("/v1/agents/lease", json={"free_vcpus": 8, "free_memory_mib": 32768})
        steps = lease.json()["job"]["steps"]
        assert (steps["run_attempt"], steps["first_run_id"], steps["run_id"]) == (2, run_id, second["id"])
        assert c.post("/v1/workflows/runs/nope/rerun").status_code == 404
        with control.client() as anonymous:
            assert anonymous.post(f"/v1/workflows/runs/{run_id}/cancel", json={}).status_code == 401


def test_smith_jobs_cancel_run_and_rerun(tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    control = configured(tmp_path, control_factory)
    env = {"SMITH_OPERATOR_TOKEN": operator_token()}
    with control.client(operator_token()) as c:
        body = {"repository": REPO, "workflow": ".github/workflows/two.yml", "ref": "feature"}
        [run_id] = c.post("/v1/workflows/dispatch", json=body).json()["runs"]
    res = CliRunner().invoke(app, ["jobs", "cancel-run", run_id, "--url", control.url, "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout[res.stdout.index("{\n") :])["conclusion"] == "cancelled"
    res = CliRunner().invoke(app, ["jobs", "rerun", run_id, "--failed", "--url", control.url], env=env)
    assert res.exit_code == 0 and f"(attempt 2 of {run_id})" in res.output, res.output
    res = CliRunner().invoke(app, ["jobs", "cancel-run", "nope", "--url", control.url], env=env)
    assert res.exit_code != 0 and "not found" in res.output and "Traceback" not in res.output


PIPELINE = """\
name: Pipeline
on: workflow_dispatch
jobs:
  build:
    runs-on: ubuntu-latest
    outputs: {version: "${{ steps.v.outputs.version }}"}
    steps:
      - {id: v, run: 'echo "version=1.0" >> "$GITHUB_OUTPUT"'}
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: echo lint
  test:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: exit 1
  deploy:
    needs: test
    runs-on: ubuntu-latest
    steps:
      - run: echo deploy
"""


async def test_rerun_failed_jobs_keeps_the_ones_that_succeeded(redis_url: str, tmp_path: Path) -> None:
    repo, _, _ = make_repo(tmp_path, {"p.yml": PIPELINE})
    wr, jobs = plane(redis_url, repo, Statuses())
    [run_id] = await wr.dispatch(REPO, ".github/workflows/p.yml", "feature", {})
    view = await wr.view(run_id)
    for jid, state, conclusion, outputs in [
        ("build", "succeeded", "success", {"version": "1.0"}),
        ("lint", "succeeded", "success", {}),
    ]:
        [smith_id] = view["jobs"][jid]["smith_jobs"]
        await report(wr, jobs, smith_id, "a-1", state=state, conclusion=conclusion, outputs=outputs)
    await wr.advance(run_id)
    [test_id] = (await wr.view(run_id))["jobs"]["test"]["smith_jobs"]
    await report(wr, jobs, test_id, "a-1", state="failed", conclusion="failure")
    await wr.advance(run_id)
    first = await wr.view(run_id)
    assert (first["conclusion"], first["jobs"]["deploy"]["result"]) == ("failure", "skipped")
    second_id = await wfrerun.rerun(wr, run_id, failed_only=True)
    second = await wr.view(second_id)
    assert second["jobs"]["build"] == {**first["jobs"]["build"], "smith_jobs": []}  # kept, with its outputs
    assert second["jobs"]["lint"]["result"] == "success" and second["jobs"]["lint"]["smith_jobs"] == []
    assert second["jobs"]["deploy"]["state"] == "waiting"  # downstream of the failed job: runs again
    [new_test] = second["jobs"]["test"]["smith_jobs"]
    spec = await wr.spec_for(await jobs.get(new_test))
    assert spec is not None and spec.needs["build"]["outputs"] == {"version": "1.0"} and spec.run_attempt == 2
