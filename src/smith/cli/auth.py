"""``smith auth``: mint tokens for agents and operators from the secrets in the environment."""

from __future__ import annotations

import typer

from smith import tokens
from smith.cli.common import fail, print_json, secret_on_command_line
from smith.domain.jobs import check_agent_id

app: typer.Typer = typer.Typer(
    help="Mint signed tokens (agent, operator). `--agent-id ID` without a command mints an agent token.",
    no_args_is_help=True,
    invoke_without_command=True,
)
SECRET = typer.Option(None, "--secret", help="Signing secret [env SMITH_AGENT_TOKEN_SECRET; prefer the env]")


def parse_ttl(text: str) -> int:
    """'90s', '15m', '12h', '30d' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        fail(f"cannot read duration {text!r}: use e.g. 90s, 15m, 12h, 30d")
    if value <= 0:
        fail("duration must be positive")
    return int(value)


def _secret(env: str, given: str | None = None) -> str:
    from smith.cli.common import _dev_secret

    if given:
        secret_on_command_line("--secret", env)
        return given
    value = _dev_secret(env)
    if not value:
        fail(f"{env} is not set: the token must be signed with the same secret the server uses")
    return value


AGENT_ID = typer.Option(..., "--agent-id", help="The host agent's id (e.g. the machine's hostname)")
AGENT_TTL = typer.Option("30d", "--ttl", help="Lifetime: 90s, 15m, 12h, 30d, or seconds")
JSON = typer.Option(False, "--json", help="Print the token and its expiry as JSON")


@app.callback()
def default(
    ctx: typer.Context,
    agent_id: str = typer.Option(None, "--agent-id", help="Mint an agent token for this id (as agent-token)"),
    secret: str = SECRET,
    ttl: str = AGENT_TTL,
    json_out: bool = JSON,
) -> None:
    """`--agent-id ID [--secret S] [--ttl 3600]` with no command: an agent token, as `agent-token` mints it."""
    if ctx.invoked_subcommand is not None:
        return
    if not agent_id:
        fail("give a command (agent-token, operator-token) or --agent-id")
    agent_token(agent_id, ttl, json_out, secret)


@app.command("agent-token")
def agent_token(agent_id: str = AGENT_ID, ttl: str = AGENT_TTL, json_out: bool = JSON, secret: str = SECRET) -> None:
    """Mint a bearer token for a host agent, signed with SMITH_AGENT_TOKEN_SECRET."""
    seconds = parse_ttl(ttl)
    try:
        check_agent_id(agent_id)
    except ValueError as exc:
        fail(str(exc))
    tok = tokens.mint(
        _secret("SMITH_AGENT_TOKEN_SECRET", secret),
        scope="agent",
        subject=agent_id,
        ttl_seconds=seconds,
        agent_id=agent_id,
    )
    if json_out:
        print_json({"token": tok, "agent_id": agent_id, "expires_in": seconds})
    else:
        print(tok)


@app.command("operator-token")
def operator_token(
    name: str = typer.Option("operator", "--name", help="Who the token is for (shown in audit logs)"),
    ttl: str = typer.Option("12h", "--ttl", help="Lifetime: 90s, 15m, 12h, 30d"),
    json_out: bool = typer.Option(False, "--json", help="Print the token and its expiry as JSON"),
) -> None:
    """Mint a bearer token for the operator API, signed with SMITH_JWT_SECRET."""
    seconds = parse_ttl(ttl)
    tok = tokens.mint(_secret("SMITH_JWT_SECRET"), scope="operator", subject=name, ttl_seconds=seconds)
    if json_out:
        print_json({"token": tok, "name": name, "expires_in": seconds})
    else:
        print(tok)


if __name__ == "__main__":  # python -m smith.cli.auth ...: the same commands as `smith auth ...`
    from smith.cli.root import run

    run(app, "python -m smith.cli.auth")
