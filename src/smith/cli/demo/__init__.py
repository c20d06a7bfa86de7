"""``smith dev --demo``: once everything is up, send a signed ``workflow_job`` webhook for the bundled example
(``workflow_job.json``; with no GitHub App configured its job runs ``job.sh``) and follow it: each state as
it changes, its log lines as they arrive, then a summary.

The summary is one function, ``print_summary(result)``, passed to :func:`follow_example` as ``summarize``:
swap it for another view of the finished job (a report) without touching the rest.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx
import orjson
from rich.table import Table

from smith import tokens
from smith.cli.common import console

FINAL = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.3
TIMEOUT_SECONDS = 300.0
LOG_GRACE_SECONDS = 10.0


@dataclass
class DemoResult:
    job: dict[str, Any]
    states: list[tuple[str, float]] = field(default_factory=list)  # (state, seconds since the webhook)
    lines: list[str] = field(default_factory=list)


def example_script() -> str:
    return (resources.files(__package__) / "job.sh").read_text()


def example_payload(job_id: int) -> bytes:
    payload = orjson.loads((resources.files(__package__) / "workflow_job.json").read_bytes())
    payload["workflow_job"]["id"] = job_id
    payload["workflow_job"]["run_id"] = job_id
    return orjson.dumps(payload)


def print_summary(result: DemoResult) -> None:
    job = result.job

    def span(start: str, end: str) -> str:
        a, b = job.get(start), job.get(end)
        return f"{b - a:.2f} s" if a and b else "-"

    table = Table(title=f"demo job {job['id']}", show_header=False)
    for name, value in (
        ("state", job["state"]),
        ("exit code", "-" if job.get("exit_code") is None else str(job["exit_code"])),
        ("runner class", f"{job['runner_class']} ({job['vcpus']} vCPU, {job['memory_mib']} MiB)"),
        ("host", job.get("agent_id") or "-"),
        ("queue wait", span("created_at", "assigned_at")),
        ("run time", span("started_at", "finished_at")),
        ("total", span("created_at", "finished_at")),
        ("log lines", str(len(result.lines))),
        ("attempts", str(job["attempts"])),
    ):
        table.add_row(name, value)
    console.print(table)


async def _logs_page(http: httpx.AsyncClient, url: str, after: int, headers: dict[str, str]) -> httpx.Response | None:
    try:
        return await http.get(url, params={"after": after}, headers=headers)
    except httpx.HTTPError:  # the log pipeline may still be starting: the lines wait for the next poll
        return None


async def follow_example(
    control_url: str,
    logs_url: str | None,
    webhook_secret: str,
    jwt_secret: str,
    *,
    summarize: Callable[[DemoResult], None] = print_summary,
    within: float = TIMEOUT_SECONDS,
) -> DemoResult:
    """Send the example's webhook, follow the job to its end (or for ``within`` seconds), then ``summarize`` it."""
    job_id = int(time.time() * 1000)
    body = example_payload(job_id)
    operator = {
        "Authorization": "Bearer " + tokens.mint(jwt_secret, scope="operator", subject="demo", ttl_seconds=3600)
    }
    async with httpx.AsyncClient(timeout=30) as http:
        sent = time.monotonic()
        r = await http.post(
            control_url + "/webhooks/github",
            content=body,
            headers={
                "X-GitHub-Event": "workflow_job",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": tokens.github_signature(webhook_secret.encode(), body),
                "Content-Type": "application/json",
            },
        )
        r.raise_for_status()
        console.print(
            f"demo: sent a signed workflow_job webhook for job {job_id}: {r.status_code} {r.json()['outcome']}"
        )
        result = DemoResult(job={})
        after, complete, final_at = 0, False, None
        deadline = sent + within
        while time.monotonic() < deadline:
            got = await http.get(f"{control_url}/v1/jobs/{job_id}", headers=operator)
            got.raise_for_status()
            result.job = got.json()
            state = result.job["state"]
            if not result.states or result.states[-1][0] != state:
                result.states.append((state, time.monotonic() - sent))
                host = f"  on {result.job['agent_id']}" if result.job.get("agent_id") else ""
                console.print(f"demo: job {job_id} {state:<10} +{result.states[-1][1]:.2f} s{host}")
            if logs_url and not complete:
                page = await _logs_page(http, f"{logs_url}/v1/jobs/{job_id}/logs", after, operator)
                if page is not None and page.status_code == 200:
                    data = page.json()
                    for line in data["lines"]:
                        result.lines.append(line["line"])
                        console.print(f"demo: | {line['line']}", markup=False, highlight=False)
                    after, complete = data["next_after"], data["complete"]
            if state in FINAL:
                final_at = final_at or time.monotonic()
                if complete or not logs_url or time.monotonic() - final_at > LOG_GRACE_SECONDS:
                    break
            await asyncio.sleep(POLL_SECONDS)
        else:
            console.print(f"demo: job {job_id} did not finish within {within:.0f} s (is an agent running?)")
    summarize(result)
    return result


async def demo_service(env: dict[str, str], summarize: Callable[[DemoResult], None] = print_summary) -> None:
    """`smith dev --demo`'s task: wait for the control plane, run the example once, then idle (the other services
    keep running until Ctrl-C)."""
    control_url = env["SMITH_CONTROL_URL"]
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(600):
            try:
                if (await http.get(control_url + "/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    try:
        await follow_example(
            control_url,
            env.get("SMITH_LOGS_URL"),
            env["SMITH_GITHUB_WEBHOOK_SECRET"],
            env["SMITH_JWT_SECRET"],
            summarize=summarize,
        )
    except httpx.HTTPError as exc:
        console.print(f"demo: stopped: {type(exc).__name__}: {exc}")
    else:
        from smith.cli.report import Options, show_overview

        console.print("demo: the report overview (`smith report overview`):")
        opts = Options(base_url=control_url, logs_url=env.get("SMITH_LOGS_URL"), cache_url=env.get("SMITH_CACHE_URL"))
        await asyncio.to_thread(show_overview, opts)  # its HTTP calls are blocking: off this (the services') loop
    await asyncio.Event().wait()
