"""``smith auth``: mint tokens for agents and operators from the secrets in the environment."""

from __future__ import annotations

import typer

from smith import tokens
from smith.cli.common import fail, print_json
from smith.domain.jobs import check_agent_id

app = typer.Typer(help="Mint signed tokens (agent, operator).", no_args_is_help=True)


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


def _secret(env: str) -> str:
    from smith.cli.common import _dev_secret

    value = _dev_secret(env)
    if not value:
        fail(f"{env} is not set: the token must be signed with the same secret the server uses")
    return value


@app.command("agent-token")
def agent_token(
    agent_id: str = typer.Option(..., "--agent-id", help="The host agent's id (e.g. the machine's hostname)"),
    ttl: str = typer.Option("30d", "--ttl", help="Lifetime: 90s, 15m, 12h, 30d"),
    json_out: bool = typer.Option(False, "--json", help="Print the token and its expiry as JSON"),
) -> None:
    """Mint a bearer token for a host agent, signed with SMITH_AGENT_TOKEN_SECRET."""
    seconds = parse_ttl(ttl)
    try:
        check_agent_id(agent_id)
    except ValueError as exc:
        fail(str(exc))
    tok = tokens.mint(
        _secret("SMITH_AGENT_TOKEN_SECRET"), scope="agent", subject=agent_id, ttl_seconds=seconds, agent_id=agent_id
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
