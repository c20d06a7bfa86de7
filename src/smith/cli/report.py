"""``smith report jobs|cache|logs|overview``: what the services say, summed up for an operator.

Read-only, from the APIs the other commands use: the control plane's ``/v1/jobs`` and ``/v1/queue`` (operator
token), the cache server's ``/usage`` (a cache admin token, minted from SMITH_CACHE_SHARED_SECRET like `smith
cache usage`, or --cache-token), the log pipeline's ``/v1/logs/volume``, ``/v1/logs/stats`` and a job's
``/logs/summary`` (operator token). Rich tables in a terminal, ``--json`` for scripts, ``--plot FILE`` (.png or
.svg) of queue wait and job duration over time and by class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.table import Table

from smith.cli import reportdata
from smith.cli.common import (
    client_settings,
    console,
    fail,
    local_control_url,
    local_operator_token,
    print_json,
    secret_on_command_line,
)

app: typer.Typer = typer.Typer(
    help="Reports: jobs (queue wait, duration, failures, hosts), cache, logs, overview.", no_args_is_help=True
)

BASE_URL = typer.Option(None, "--base-url", "--url", help="Control plane URL [env SMITH_CONTROL_URL]")
TOKEN = typer.Option(None, "--token", help="Operator token [env SMITH_OPERATOR_TOKEN]")
CACHE_URL = typer.Option(None, "--cache-url", help="Cache server URL [env SMITH_CACHE_URL]")
CACHE_TOKEN = typer.Option(
    None, "--cache-token", help="Cache admin token [default: minted from SMITH_CACHE_SHARED_SECRET]"
)
LOGS_URL = typer.Option(None, "--logs-url", help="Log pipeline URL [env SMITH_LOGS_URL]")
JOB_ID = typer.Option(None, "--job-id", help="One job: its timings, and its log volume")
LIMIT = typer.Option(200, "--limit", min=1, max=1000, help="Jobs to look at (newest first); top-N rows elsewhere")
SINCE = typer.Option(None, "--since", help="Only jobs created (log lines written) in the last 30m, 2h, 7d...")
JSON = typer.Option(False, "--json", help="Print JSON instead of tables")
PLOT = typer.Option(None, "--plot", help="Also draw queue wait and duration to this .png or .svg file")


class Unreachable(Exception):
    """A section's service did not answer (the overview notes it and goes on)."""


def _get(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        resp = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach {client.base_url}: {exc}") from None
    if resp.status_code >= 400:
        try:
            message = resp.json().get("message") or resp.text
        except ValueError:
            message = resp.text
        raise Unreachable(f"{client.base_url}{path}: {resp.status_code}: {message}")
    return resp.json()


def _client(url: str | None, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url or "", headers=headers, timeout=60)


def _since(text: str | None) -> float | None:
    if not text:
        return None
    from smith.cli.jobs import _ago

    return _ago(text)


# -- gathering ------------------------------------------------------------------------------------------------


def gather_jobs(url: str | None, token: str | None, limit: int, since: str | None, job_id: str | None) -> Any:
    url, token = url or local_control_url(), token or local_operator_token()
    if not url:
        raise Unreachable("no control plane address: pass --base-url or set SMITH_CONTROL_URL")
    with _client(url, token) as c:
        if job_id:
            jobs = [_get(c, f"/v1/jobs/{job_id}")]
        else:
            params: dict[str, Any] = {"limit": limit}
            if (t0 := _since(since)) is not None:
                params["since"] = t0
            jobs = _get(c, "/v1/jobs", params)
        queue = _get(c, "/v1/queue")
    return jobs, reportdata.jobs_report(jobs, queue)


def gather_cache(url: str | None, token: str | None, limit: int) -> dict[str, Any]:
    from smith.cache.settings import CacheSettings

    cache = CacheSettings()
    url = url or client_settings().cache_url or f"http://{cache.cache_host}:{cache.cache_port}"  # as `cache usage`
    if not token:
        from smith import tokens

        secret = cache.secret()
        if not secret:
            raise Unreachable("no cache admin token: pass --cache-token or set SMITH_CACHE_SHARED_SECRET")
        token = tokens.mint(secret, scope="cache-admin", subject="report", ttl_seconds=300)
    with _client(url, token) as c:
        return reportdata.cache_report(_get(c, "/usage")["orgs"], limit)


def gather_logs(url: str | None, token: str | None, limit: int, since: str | None, job_id: str | None) -> Any:
    settings = client_settings()
    url = url or settings.logs_url or f"http://127.0.0.1:{settings.logs_port}"
    with _client(url, token or local_operator_token()) as c:
        if job_id:
            return {"job": _get(c, f"/v1/jobs/{job_id}/logs/summary")}
        params: dict[str, Any] = {"limit": limit}
        if since:
            params["since"] = since
        volume = _get(c, "/v1/logs/volume", params)["jobs"]
        return reportdata.logs_report(volume, _get(c, "/v1/logs/stats"))


# -- printing -------------------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def print_jobs(r: dict[str, Any]) -> None:
    table = Table("class", "jobs", "states", "wait p50", "p95", "p99", "duration p50", "p95", "p99", title="jobs")
    rows = [("all", r), *r["by_class"].items()]
    for name, c in rows:
        w, d = c["queue_wait_seconds"], c["duration_seconds"]
        states = ", ".join(f"{k} {v}" for k, v in sorted(c["by_state"].items()))
        table.add_row(name, str(c["jobs"]), states, _s(w["p50"]), _s(w["p95"]), _s(w["p99"]), *map(_s, _ds(d)))
    console.print(table)
    if q := r.get("queue"):
        health = Table("class", "queued", "leased", "oldest queued (s)", title="queue")
        for name, c in q["classes"].items():
            health.add_row(name, str(c["depth"]), str(c["leases_in_flight"]), _s(c["oldest_queued_age_seconds"]))
        console.print(health)
        console.print(f"hosts alive: {q['hosts_alive']}")
    if r["top_failure_reasons"]:
        failures = Table("jobs", "reason", title="top failure reasons")
        for f in r["top_failure_reasons"]:
            failures.add_row(str(f["jobs"]), f["reason"])
        console.print(failures)
    if r["hosts"]:
        hosts = Table("host", "jobs", "succeeded", "failed", "running", title="hosts")
        for h, c in r["hosts"].items():
            hosts.add_row(h, str(c["jobs"]), *(str(c.get(k, 0)) for k in ("succeeded", "failed", "running")))
        console.print(hosts)


def _ds(d: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    return d["p50"], d["p95"], d["p99"]


def print_cache(r: dict[str, Any]) -> None:
    console.print(
        f"cache: {r['orgs']} orgs, {r['entries']} entries, {r['bytes']:,} bytes, "
        f"hit rate {_pct(r['hit_rate'])} ({r['hits']} hits, {r['misses']} misses)"
    )
    table = Table("org", "bytes", "entries", "hit rate", title="top orgs by bytes")
    for o in r["top_orgs"]:
        table.add_row(o["org"], f"{o['bytes']:,}", str(o["entries"]), _pct(o["hit_rate"]))
    console.print(table)


def print_logs(r: dict[str, Any]) -> None:
    if "job" in r:
        j = r["job"]
        console.print(
            f"logs of {j['job_id']}: {j['lines']} lines, {j['bytes']:,} bytes, {j['stderr_lines']} on stderr, "
            f"{j['error_lines']} with errors, {'complete' if j['complete'] else 'not complete'}"
        )
        return
    table = Table("job", "lines", "bytes", title="log volume per job (top by bytes)")
    for j in r["jobs"]:
        table.add_row(j["job_id"], f"{j['lines']:,}", f"{j['bytes']:,}")
    console.print(table)
    if p := r.get("pipeline"):
        console.print(
            f"pipeline: {p['written']:,} lines written, {p['duplicates']:,} duplicates, {p['rejected']:,} rejected, "
            f"{p['pending']:,} pending, last batch {_s(p['last_batch_seconds'])} s"
        )


# -- commands -------------------------------------------------------------------------------------------------


@dataclass
class Options:
    base_url: str | None = None
    token: str | None = None
    cache_url: str | None = None
    cache_token: str | None = None
    logs_url: str | None = None
    job_id: str | None = None
    limit: int = 200
    since: str | None = None


def _sections(o: Options) -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    return {
        "jobs": (lambda: gather_jobs(o.base_url, o.token, o.limit, o.since, o.job_id), print_jobs),
        "cache": (lambda: gather_cache(o.cache_url, o.cache_token, min(o.limit, 50)), print_cache),
        "logs": (lambda: gather_logs(o.logs_url, o.token, min(o.limit, 50), o.since, o.job_id), print_logs),
    }


def show_overview(o: Options | None = None) -> None:
    """Every section of the overview, each shown or noted as unavailable, from the SMITH_* settings in the
    environment unless ``o`` says otherwise; never fails (``smith dev --demo`` ends with it)."""
    for name, (gather, show) in _sections(o or Options()).items():
        try:
            got = gather()
        except Unreachable as exc:
            console.print(f"[yellow]{name}: unavailable[/yellow]: {exc}", highlight=False)
            continue
        show(got[1] if name == "jobs" else got)


def report(names: tuple[str, ...], o: Options, *, json_out: bool, plot: Path | None = None) -> None:
    """Gather and show each section. One section that does not answer fails the command; in an overview it is
    noted and the others are shown (it fails only when none answers)."""
    if o.token:
        secret_on_command_line("--token", "SMITH_OPERATOR_TOKEN")
    if o.cache_token:
        secret_on_command_line("--cache-token", "SMITH_CACHE_SHARED_SECRET (a token is minted from it)")
    out: dict[str, Any] = {}
    jobs: list[dict[str, Any]] = []
    for name in names:
        gather, show = _sections(o)[name]
        try:
            got: Any = gather()
        except Unreachable as exc:
            if len(names) == 1:
                fail(str(exc))
            out[name] = {"unavailable": str(exc)}
            if not json_out:
                console.print(f"[yellow]{name}: unavailable[/yellow]: {exc}", highlight=False)
            continue
        if name == "jobs":
            jobs, got = got
        out[name] = got
        if not json_out:
            show(got)
    if json_out:
        print_json(out if len(names) > 1 else out[names[0]])
    if all("unavailable" in v for v in out.values()):
        fail("no service answered")
    if plot is not None:
        from smith.cli.plot import plot_jobs

        console.print(f"plot: {plot_jobs(jobs, plot)}", highlight=False)


@app.command("jobs")
def jobs_cmd(
    base_url: str = BASE_URL,
    token: str = TOKEN,
    job_id: str = JOB_ID,
    limit: int = LIMIT,
    since: str = SINCE,
    json_out: bool = JSON,
    plot: Path = PLOT,
) -> None:
    """Queue health, jobs by state and class, p50/p95/p99 queue wait and duration, failures, hosts."""
    report(("jobs",), Options(base_url, token, job_id=job_id, limit=limit, since=since), json_out=json_out, plot=plot)


@app.command("cache")
def cache_cmd(
    cache_url: str = CACHE_URL, cache_token: str = CACHE_TOKEN, limit: int = LIMIT, json_out: bool = JSON
) -> None:
    """Cache hit rate, bytes and entries; the top orgs by bytes."""
    report(("cache",), Options(cache_url=cache_url, cache_token=cache_token, limit=limit), json_out=json_out)


@app.command("logs")
def logs_cmd(
    logs_url: str = LOGS_URL,
    token: str = TOKEN,
    job_id: str = JOB_ID,
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="Jobs to list, top by bytes"),
    since: str = SINCE,
    json_out: bool = JSON,
) -> None:
    """Log volume per job (or one job's, with --job-id) and the pipeline's counters."""
    o = Options(token=token, logs_url=logs_url, job_id=job_id, limit=limit, since=since)
    report(("logs",), o, json_out=json_out)


@app.command("overview")
def overview_cmd(
    base_url: str = BASE_URL,
    token: str = TOKEN,
    cache_url: str = CACHE_URL,
    cache_token: str = CACHE_TOKEN,
    logs_url: str = LOGS_URL,
    job_id: str = JOB_ID,
    limit: int = LIMIT,
    since: str = SINCE,
    plot: Path = PLOT,
    json_out: bool = JSON,
) -> None:
    """Jobs, cache and logs together; a service that does not answer is noted and the rest is shown."""
    o = Options(base_url, token, cache_url, cache_token, logs_url, job_id, limit, since)
    report(("jobs", "cache", "logs"), o, json_out=json_out, plot=plot)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="report")


if __name__ == "__main__":  # python -m smith.cli.report ...: the same commands as `smith report ...`
    from smith.cli.root import run

    run(app, "python -m smith.cli.report")
