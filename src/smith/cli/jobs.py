"""``smith jobs``: look at and act on jobs through the operator API."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table

from smith.cli.common import (
    api_client,
    check,
    console,
    local_control_url,
    local_operator_token,
    print_json,
    secret_on_command_line,
    whole,
)

app: typer.Typer = typer.Typer(
    help="Jobs: recent, show, status (queue health), cancel, submit, dispatch (a workflow).", no_args_is_help=True
)

URL = typer.Option(None, "--url", "--base-url", help="Control plane URL [env SMITH_CONTROL_URL]")
TOKEN = typer.Option(None, "--token", help="Operator token [env SMITH_OPERATOR_TOKEN]")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table")
JOB_ID = typer.Argument(..., help="The job's id, as `smith jobs recent` shows it")


def _client(url: str | None, token: str | None) -> Any:
    if token:
        secret_on_command_line("--token", "SMITH_OPERATOR_TOKEN")
    return api_client(
        url or local_control_url(),
        token or local_operator_token(),
        url_setting="SMITH_CONTROL_URL",
        token_setting="SMITH_OPERATOR_TOKEN",
    )


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if not text or text[-1] not in units:
        raise typer.BadParameter("use e.g. 30m, 2h, 7d")
    return time.time() - float(text[:-1]) * units[text[-1]]


@app.command()
def recent(
    state: str = typer.Option(None, help="queued, assigned, running, succeeded, failed, cancelled"),
    repo: str = typer.Option(None, help="owner/name"),
    runner_class: str = typer.Option(None, "--class", help="Runner class, e.g. smith-2vcpu"),
    since: str = typer.Option(None, help="Only jobs created in the last 30m, 2h, 7d..."),
    limit: int = typer.Option(20, min=1, max=1000, help="At most this many jobs"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """The newest jobs first, with optional filters."""
    params: dict[str, Any] = {"limit": limit}
    for k, v in (("state", state), ("repo", repo), ("runner_class", runner_class)):
        if v:
            params[k] = v
    if since:
        params["since"] = _ago(since)
    with _client(url, token) as c:
        jobs = check(c.get("/v1/jobs", params=params))
    if json_out:
        print_json(jobs)
        return
    table = whole(
        Table("id", "state", "class", "repo", "name", "agent", "created", "reason"), 0, [j["id"] for j in jobs]
    )
    for j in jobs:
        table.add_row(
            j["id"],
            j["state"],
            j["runner_class"],
            j["repo"],
            j["name"],
            j["agent_id"],
            _when(j["created_at"]),
            (j["reason"] or "")[:60],
        )
    console.print(table)


@app.command()
def show(job_id: str = JOB_ID, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One job in full."""
    with _client(url, token) as c:
        job = check(c.get(f"/v1/jobs/{job_id}"))
    if json_out:
        print_json(job)
        return
    for k, v in job.items():
        console.print(f"[bold]{k:>18}[/bold]  {_when(v) if k.endswith('_at') else v}")


@app.command()
def status(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Queue health: depth per runner class, oldest queued job, leases in flight, hosts alive."""
    with _client(url, token) as c:
        health = check(c.get("/v1/queue"))
    if json_out:
        print_json(health)
        return
    table = Table("class", "queued", "leased", "oldest queued (s)")
    for name, c_ in health["classes"].items():
        age = c_["oldest_queued_age_seconds"]
        table.add_row(name, str(c_["depth"]), str(c_["leases_in_flight"]), "-" if age is None else f"{age:.1f}")
    console.print(table)
    console.print(f"hosts alive: {health['hosts_alive']}")
    alarm = (health.get("github") or {}).get("alarm")
    if alarm:
        console.print(f"[red]GitHub refuses the App: {alarm['status']} {alarm['meaning']}: {alarm['message']}[/red]")


def _post(url: str, token: str, path: str, body: Any, json_out: bool, text: Callable[[Any], str]) -> None:
    """POST ``body`` to the control plane; print the answer (JSON, or ``text`` of it)."""
    with _client(url, token) as c:
        out = check(c.post(path, json=body))
    if json_out:
        print_json(out)
    else:
        console.print(text(out))


def _started(out: Any) -> str:
    return f"started run {', '.join(out['runs'])} (GET /v1/workflows/runs/<id> shows it)"


@app.command()
def cancel(
    job_id: str = JOB_ID,
    reason: str = typer.Option("cancelled by operator", help="Recorded on the job"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Cancel a job: a queued job leaves the queue; a running one is stopped by its agent."""
    _post(
        url, token, f"/v1/jobs/{job_id}/cancel", {"reason": reason}, json_out, lambda out: f"{job_id}: {out['outcome']}"
    )


@app.command()
def submit(
    run: str = typer.Argument(..., help="Shell script to run in a fresh VM"),
    label: list[str] = typer.Option(["self-hosted"], "--label", help="Runner labels (repeat)"),
    repo: str = typer.Option("", help="owner/name, for scoping the cache"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Queue a job that runs a shell script (no GitHub involved)."""
    body = {"run": run, "labels": label, "repo": repo}
    _post(url, token, "/v1/jobs", body, json_out, lambda job: f"queued {job['id']} on {job['runner_class']}")


@app.command()
def dispatch(
    repository: str = typer.Argument(..., help="owner/name, as configured in SMITH_WORKFLOW_REPOS"),
    workflow: str = typer.Argument(..., help="The workflow file's path, e.g. .github/workflows/ci.yml"),
    ref: str = typer.Option("main", help="Branch, tag or commit to run"),
    inputs: list[str] = typer.Option([], "--input", help="A workflow_dispatch input K=V (repeat)"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Run a configured repository's workflow (workflow_dispatch) with Smith's built-in executor."""
    given = {}
    for pair in inputs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--input {pair!r}: use KEY=VALUE")
        given[key] = value
    body = {"repository": repository, "workflow": workflow, "ref": ref, "inputs": given}
    _post(url, token, "/v1/workflows/dispatch", body, json_out, _started)


@app.command("cancel-run")
def cancel_run(
    run_id: str = typer.Argument(..., help="A built-in workflow run's id"),
    reason: str = typer.Option("cancelled by operator", help="Why (shown in its jobs and commit status)"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Cancel a whole built-in workflow run: its jobs not started, and its Smith jobs."""
    path = f"/v1/workflows/runs/{run_id}/cancel"
    _post(url, token, path, {"reason": reason}, json_out, lambda o: f"run {run_id}: {o['conclusion'] or 'cancelling'}")


@app.command()
def rerun(
    run_id: str = typer.Argument(..., help="A finished built-in workflow run's id"),
    failed: bool = typer.Option(False, "--failed", help="Only the failed jobs and those after them"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Re-run a finished built-in workflow run: its next attempt, same workflow, commit and event."""
    text = "started run {0[id]} (attempt {0[attempt]} of {0[rerun_of]})".format
    path = f"/v1/workflows/runs/{run_id}/rerun" + ("?failed_only=true" if failed else "")
    _post(url, token, path, None, json_out, text)


if __name__ == "__main__":  # python -m smith.cli.jobs ...: the same commands as `smith jobs ...`
    from smith.cli.root import run

    run(app, "python -m smith.cli.jobs")
