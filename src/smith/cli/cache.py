"""``smith cache``: serve the actions/cache-compatible cache, mint tokens, show usage, purge entries."""

from __future__ import annotations

import getpass
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import typer
from rich.table import Table

from smith.cli.common import (
    can_listen,
    check,
    client_settings,
    console,
    fail,
    print_json,
    secret_on_command_line,
    whole,
)

app: typer.Typer = typer.Typer(
    help=(
        "The artifact cache next to the runners: speaks the protocol of the unmodified actions/cache step. "
        "`--org-id ORG [--secret S] [--ttl N]` without a command mints a cache token (as `token`)."
    ),
    no_args_is_help=True,
    invoke_without_command=True,
)
SECRET = typer.Option(None, "--secret", help="Signing secret [env SMITH_CACHE_SHARED_SECRET; prefer the env]")
TTL = typer.Option(6 * 3600, "--ttl", help="Lifetime in seconds")
AS_JSON = typer.Option(False, "--json", help="Print the token, its scope and lifetime as JSON")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cache")


@app.callback()
def default(
    ctx: typer.Context,
    org_id: str = typer.Option(None, "--org-id", help="Mint a cache token for this org (as `token`)"),
    repo: str = typer.Option("", help="Repository inside the org, or owner/name"),
    secret: str = SECRET,
    ttl: int = TTL,
    as_json: bool = AS_JSON,
) -> None:
    """`--org-id ORG [--secret S] [--ttl N]` with no command: a cache token, as `token` mints it."""
    if ctx.invoked_subcommand is not None:
        return
    if not org_id:
        fail("give a command (serve, token, usage, purge) or --org-id")
    token(org_id, repo, "", "", "", ttl, False, as_json, secret)


def _secret(given: str | None = None) -> str:
    from smith.cache.settings import CacheSettings

    if given:
        secret_on_command_line("--secret", "SMITH_CACHE_SHARED_SECRET")
        return given

    settings = CacheSettings()
    secret = settings.secret()
    if not secret:
        fail("SMITH_CACHE_SHARED_SECRET is not set")
    return secret


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on [env SMITH_CACHE_HOST, default 127.0.0.1]"),
    port: int = typer.Option(None, help="Port to listen on [env SMITH_CACHE_PORT, default 8090]"),
) -> None:
    """Serve the cache: v2 Twirp (actions/cache 4+), legacy REST (3.x), signed blob URLs, /usage.

    Storage is SMITH_CACHE_STORAGE=filesystem (SMITH_CACHE_STORAGE_PATH) or s3 (SMITH_CACHE_S3_*); metadata goes
    to SMITH_REDIS_URL, or to an embedded Valkey under SMITH_DATA_DIR when unset.
    """
    from smith import serving
    from smith.cache.app import create_app
    from smith.cache.limits import uvicorn_options
    from smith.cache.settings import CacheSettings
    from smith.logging import configure

    settings = CacheSettings()
    h, p = host or settings.cache_host, port or settings.cache_port
    can_listen(h, p)
    configure(settings.log_level, json=settings.log_json)
    for problem in settings.problems():
        typer.echo(f"warning: {problem}", err=True)
    serving.run(
        create_app(settings),
        settings,
        host=h,
        port=p,
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings.cache_max_header_bytes),
    )


@app.command()
def token(
    org_id: str = typer.Option(..., "--org-id", help="Org the token may read and write"),
    repo: str = typer.Option("", help="Repository name inside the org, or owner/name (entries are scoped to it)"),
    ref: str = typer.Option("", help="Git ref the job runs on (writes go there; reads also see the two below)"),
    base_ref: str = typer.Option("", help="For a pull request: the ref it merges into (readable)"),
    default_ref: str = typer.Option("", help="The repository's default branch ref, readable from every ref"),
    ttl: int = TTL,
    admin: bool = typer.Option(False, "--admin", help="An admin token for /usage of every org and purge"),
    as_json: bool = AS_JSON,
    secret: str = SECRET,
) -> None:
    """Mint a cache token (HS256, SMITH_CACHE_SHARED_SECRET). Jobs get it as ACTIONS_RUNTIME_TOKEN."""
    from smith import tokens
    from smith.domain.cache import check_name, check_ref
    from smith.errors import InvalidInput

    if ttl <= 0:
        fail("--ttl must be positive")
    owner, _, repo = repo.rpartition("/")
    if owner and owner != org_id:
        fail(f"--repo {owner}/{repo} is not in org {org_id}")
    try:
        check_name(org_id, what="org")
        if repo:
            check_name(repo, what="repo")
        for value in (ref, base_ref, default_ref):
            check_ref(value)
    except InvalidInput as exc:
        fail(exc.message)
    claims: dict[str, Any] = {} if admin else {"org": org_id, "repo": repo}
    for claim, value in (("ref", ref), ("base_ref", base_ref), ("default_ref", default_ref)):
        if value and not admin:
            claims[claim] = value
    scope = "cache-admin" if admin else "cache"
    tok = tokens.mint(_secret(secret), scope=scope, subject=org_id, ttl_seconds=ttl, **claims)
    if as_json:
        print_json({"token": tok, "scope": scope, "org": org_id, "expires_in": ttl})
    else:
        typer.echo(tok)


def _client(url: str | None) -> httpx.Client:
    from smith import tokens

    base = url or client_settings().cache_url
    if not base:
        from smith.cache.settings import CacheSettings

        s = CacheSettings()
        base = f"http://{s.cache_host}:{s.cache_port}"
    admin = tokens.mint(_secret(), scope="cache-admin", subject=getpass.getuser(), ttl_seconds=300)
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=60)


@app.command()
def usage(
    org: str = typer.Option("", help="Only this org"),
    url: str = typer.Option(None, help="Cache server [env SMITH_CACHE_URL, default from SMITH_CACHE_HOST/PORT]"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Per-org bytes, entries, hits, misses and last access, from a running cache server."""
    client = _client(url)
    data = check(client.get("/usage", params={"org": org} if org else None))
    if as_json:
        print_json(data)
        return
    table = whole(Table("org", "bytes", "entries", "hits", "misses", "last access"), 0, data["orgs"])
    for name, u in sorted(data["orgs"].items()):
        last = datetime.fromtimestamp(u["last_access"], UTC).isoformat(timespec="seconds") if u["last_access"] else "-"
        table.add_row(name, f"{u['bytes']:,}", str(u["entries"]), str(u["hits"]), str(u["misses"]), last)
    console.print(table)


@app.command()
def purge(
    org: str = typer.Option(..., help="Org whose entries go"),
    repo: str = typer.Option(None, help="Only this repository"),
    prefix: str = typer.Option(None, help="Only keys starting with this"),
    url: str = typer.Option(None, help="Cache server [env SMITH_CACHE_URL]"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Delete entries (and their bytes) of an org, optionally one repository and/or a key prefix."""
    client = _client(url)
    body: dict[str, str] = {"org": org}
    if repo:
        body["repo"] = repo
    if prefix:
        body["prefix"] = prefix
    data = check(client.post("/admin/purge", json=body))
    if as_json:
        print_json(data)
    else:
        console.print(f"deleted {data['deleted']} entries")


def dev_service(env: dict[str, str]) -> Coroutine[Any, Any, None] | None:
    """`smith dev`: the cache on the filesystem under the data dir, metadata in dev's Valkey."""
    from smith.cache.app import create_app
    from smith.cache.limits import uvicorn_options
    from smith.cache.settings import CacheSettings
    from smith.cli.common import serve_app

    settings = CacheSettings()
    if not settings.cache_shared_secret:
        return None
    can_listen(settings.cache_host, settings.cache_port)
    options = uvicorn_options(settings.cache_max_header_bytes)  # the header cap and sendfile downloads, as served
    return serve_app(create_app(settings), settings, settings.cache_host, settings.cache_port, **options)


if __name__ == "__main__":  # python -m smith.cli.cache ...: the same commands as `smith cache ...`
    from smith.cli.root import run

    run(app, "python -m smith.cli.cache")
