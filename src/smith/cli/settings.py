"""What the ``smith`` client commands read (``smith jobs``, ``smith logs``, ``smith cache usage``...).

The servers' own settings live in their packages; these are the ones a command on an operator's machine needs to
find a server and prove who it is.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from smith.settings import CommonSettings, Port


class ClientSettings(CommonSettings):
    control_url: str | None = Field(None, description="Control plane URL (default: `smith dev`'s on this machine)")
    operator_token: SecretStr | None = Field(
        None, description="Operator token (default: one signed with this machine's `smith dev` secret)"
    )
    port: Port = Field(8080, description="The local control plane's port, when SMITH_CONTROL_URL is not set")
    logs_url: str | None = Field(None, description="Log pipeline URL (default: http://127.0.0.1:SMITH_LOGS_PORT)")
    logs_port: Port = Field(8070, description="The local log pipeline's port, when SMITH_LOGS_URL is not set")
    cache_url: str | None = Field(None, description="Cache server URL (default: SMITH_CACHE_HOST:SMITH_CACHE_PORT)")
    debug: bool = Field(False, description="Failed commands print their traceback (also: smith --debug)")
    action_mirror: Path | None = Field(
        None, description="`smith run`: a directory of owner/repo@ref checkouts of remote actions"
    )
    cache_token: SecretStr | None = Field(
        None, description="`smith run`: a cache token (`smith cache token`) for SMITH_CACHE_URL's actions/cache"
    )
    llm_url: str | None = Field(
        None, description="`smith run`: an Ollama-API endpoint asked for commands for a step it cannot run (off)"
    )
    llm_model: str = Field("llama3.1", description="`smith run`: the model SMITH_LLM_URL is asked with")
    llm_enabled: bool = Field(
        False, description="`smith run`: run what the LLM proposes (else the proposal is only shown in the log)"
    )
