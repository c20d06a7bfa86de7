"""``smith logs``: read a job's lines, follow them, search across jobs, summarise; ``smith logs serve``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import typer

from smith.cli.common import (
    api_client,
    can_listen,
    check,
    client_settings,
    console,
    fail,
    local_operator_token,
    print_json,
    secret_on_command_line,
)

app: typer.Typer = typer.Typer(
    help=(
        "Job logs from the log pipeline. `smith logs --job-id ID` prints a job's lines (--tail N for the last N, "
        "--follow to stream until the job ends); `search`, `summary` and `serve` are subcommands."
    ),
    invoke_without_command=True,
)

URL = typer.Option(
    None, "--url", "--logs-url", help="Log pipeline URL [env SMITH_LOGS_URL, default http://127.0.0.1:8070]"
)
TOKEN = typer.Option(None, "--token", help="Operator token [env SMITH_OPERATOR_TOKEN]")
JSON = typer.Option(False, "--json", help="Print JSON (NDJSON with --follow) instead of text")


def _url(url: str | None) -> str:
    settings = client_settings()
    return url or settings.logs_url or f"http://127.0.0.1:{settings.logs_port}"


def _client(url: str | None, token: str | None, timeout: float = 30.0) -> Any:
    if token:
        secret_on_command_line("--token", "SMITH_OPERATOR_TOKEN")
    return api_client(
        _url(url),
        token or local_operator_token(),
        url_setting="SMITH_LOGS_URL",
        token_setting="SMITH_OPERATOR_TOKEN",
        timeout=timeout,
    )


def _get(c: Any, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET ``path`` and return its JSON; a clear error (not a traceback) when the pipeline cannot be reached."""
    import httpx

    try:
        return check(c.get(path, params=params))
    except httpx.HTTPError as exc:
        fail(f"cannot reach the log pipeline at {c.base_url}: {exc} (is `smith logs serve` running? SMITH_LOGS_URL)")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _print_line(r: dict[str, Any], *, job: bool = False) -> None:
    prefix = f"{r['job_id']} " if job else ""
    stream = "" if r["stream"] == "stdout" else f"[{r['stream']}] "
    console.print(f"[dim]{_when(r['ts'])} {prefix}#{r['seq']}[/dim] {stream}", end="", highlight=False)
    console.out(r["line"], highlight=False)


@app.callback()
def logs(
    ctx: typer.Context,
    job_id: str = typer.Option(None, "--job-id", "-j", help="The job whose lines to print"),
    limit: int = typer.Option(100, min=1, max=10_000, help="Lines per page"),
    after: int = typer.Option(0, min=0, help="Start after this sequence number"),
    tail: int = typer.Option(None, min=1, max=10_000, help="The last N lines instead of the first"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Print a job's log lines (operator token)."""
    if ctx.invoked_subcommand is not None:
        return
    if not job_id:
        console.print(ctx.get_help())
        raise typer.Exit(2)
    if follow:
        _follow(job_id, after, tail, url, token, json_out)
        return
    params: dict[str, Any] = {"limit": limit, "after": after}
    if tail:
        params = {"tail": tail}
    with _client(url, token) as c:
        page = _get(c, f"/v1/jobs/{job_id}/logs", params)
    if json_out:
        print_json(page)
        return
    for r in page["lines"]:
        _print_line(r)
    if not page["complete"] and not tail and len(page["lines"]) == limit:
        console.print(f"[dim]more: --after {page['next_after']}[/dim]")


def _follow(job_id: str, after: int, tail: int | None, url: str | None, token: str | None, json_out: bool) -> None:
    import httpx

    params: dict[str, Any] = {"follow": "true", "after": after}
    if tail:
        params["tail"] = tail
    last_id = ""
    connected = False
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with (
                _client(url, token, timeout=None) as c,  # type: ignore[arg-type]
                c.stream("GET", f"/v1/jobs/{job_id}/logs", params=params, headers=headers) as resp,
            ):
                if resp.status_code >= 400:
                    resp.read()
                    check(resp)
                connected = True
                event = ""
                for raw in resp.iter_lines():
                    if raw.startswith("event:"):
                        event = raw[6:].strip()
                    elif raw.startswith("id:"):
                        last_id = raw[3:].strip()
                    elif raw.startswith("data:") and event == "line":
                        r = json.loads(raw[5:])
                        if json_out:
                            sys.stdout.write(json.dumps(r) + "\n")
                            sys.stdout.flush()
                        else:
                            _print_line(r)
                    elif raw.startswith("data:") and event == "end":
                        return
        except httpx.TransportError as exc:
            if not connected:
                fail(f"cannot reach the log pipeline: {exc} (is `smith logs serve` running? SMITH_LOGS_URL)")
            console.print(f"[yellow]connection lost ({exc}); reconnecting[/yellow]", highlight=False)
            import time

            time.sleep(1)


@app.command()
def search(
    text: str = typer.Argument("", help="Text to find in lines (any case); empty: every line"),
    since: str = typer.Option(
        None, help="How far back: 30m, 1h, 2d, or epoch seconds [default: the server's window, 24h, unless --job-id]"
    ),
    until: str = typer.Option(None, help="Up to when: same forms as --since"),
    repo: str = typer.Option(None, help="Only this repository (owner/name)"),
    host: str = typer.Option(None, help="Only lines from this host agent"),
    job_id: str = typer.Option(None, "--job-id", "-j", help="Only this job"),
    limit: int = typer.Option(100, min=1, max=10_000, help="At most this many lines"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Search lines across jobs, newest first."""
    params: dict[str, Any] = {"q": text, "limit": limit}
    for k, v in (("since", since), ("until", until), ("repo", repo), ("host", host), ("job_id", job_id)):
        if v:
            params[k] = v
    with _client(url, token) as c:
        result = _get(c, "/v1/logs/search", params)
    if json_out:
        print_json(result)
        return
    for r in result["hits"]:
        _print_line(r, job=True)
    if result["limited"]:
        console.print(f"[dim]more than {limit} matches; narrow the search or raise --limit[/dim]")
    if not since and not job_id and result.get("since") is not None:
        console.print(f"[dim]searched since {_when(result['since'])} (the default window; --since to go further)[/dim]")


@app.command()
def summary(
    job_id: str = typer.Option(..., "--job-id", "-j", help="The job"),
    url: str = URL,
    token: str = TOKEN,
    json_out: bool = JSON,
) -> None:
    """Line count, bytes, first/last timestamps and error lines of a job."""
    with _client(url, token) as c:
        s = _get(c, f"/v1/jobs/{job_id}/logs/summary")
    if json_out:
        print_json(s)
        return
    console.print(
        f"job {s['job_id']}: {s['lines']} lines, {s['bytes']} bytes, {s['error_lines']} error lines "
        f"({s['stderr_lines']} on stderr), {s['truncated_lines']} truncated\n"
        f"  first {_when(s['first_ts'])}  last {_when(s['last_ts'])}  "
        f"{'complete' if s['complete'] else 'still running'} (last seq {s['last_seq']})",
        highlight=False,
    )


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on [env SMITH_LOGS_HOST, default 127.0.0.1]"),
    port: int = typer.Option(None, help="Port [env SMITH_LOGS_PORT, default 8070]"),
) -> None:
    """Serve the log pipeline: ClickHouse at SMITH_CLICKHOUSE_URL, else chdb in the data directory."""
    from smith import serving
    from smith.logging import configure
    from smith.logs.app import create_app
    from smith.logs.settings import LogsSettings

    settings = LogsSettings()
    h, p = host or settings.logs_host, port or settings.logs_port
    can_listen(h, p)
    configure(settings.log_level, json=settings.log_json)
    for problem in settings.problems():
        typer.echo(f"warning: {problem}", err=True)
    import gc

    # Ingestion makes ~12 short-lived objects per line; the default thresholds run a collection every few
    # hundred lines, which costs about a third of the parsing time. Nothing here makes long-lived cycles.
    gc.set_threshold(200_000, 20, 100)
    serving.run(create_app(settings), settings, host=h, port=p, timeout_graceful_shutdown=10)


def dev_service(env: dict[str, str]) -> Coroutine[Any, Any, None] | None:
    """`smith dev`: serve the log pipeline (chdb under the data dir) and tell the others where it is."""
    from smith.logs.settings import LogsSettings

    settings = LogsSettings()
    can_listen(settings.logs_host, settings.logs_port)
    os.environ.setdefault("SMITH_LOGS_URL", f"http://127.0.0.1:{settings.logs_port}")
    console.print(f"  logs:    {os.environ['SMITH_LOGS_URL']}  (chdb unless SMITH_CLICKHOUSE_URL)")

    async def serve_logs() -> None:
        from smith.cli.common import serve_app
        from smith.logs.app import create_app

        await serve_app(create_app(settings), settings, settings.logs_host, settings.logs_port)

    return serve_logs()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="logs")


if __name__ == "__main__":  # python -m smith.cli.logs ...: the same commands as `smith logs ...`
    from smith.cli.root import run

    run(app, "python -m smith.cli.logs")
