"""A host's fallback cache token (SMITH_CACHE_TOKEN_SECRET / SMITH_CACHE_TOKEN_VALUE) reaches a job whose lease
carries no cache access, and never replaces the lease's own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smith import tokens
from smith.agent.cachetoken import fallback
from smith.agent.logsink import LocalFiles
from smith.agent.settings import AgentSettings
from smith.domain.vms import VMShape
from smith.ports import Machine
from smith.wire.guest import GuestConfig, GuestEvent
from tests.agent.onejob import OneJob, ScriptedVM, ScriptedVMs, job

SECRET = "fallback-cache-secret-0123456789abcdef"
EXIT = [GuestEvent(type="exit", ts=time.time(), exit_code=0)]


class Recording(ScriptedVMs):
    def __init__(self) -> None:
        super().__init__(EXIT)
        self.configs: list[GuestConfig] = []

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        outer = self

        class VM(ScriptedVM):
            async def assign(self, config: GuestConfig) -> None:
                outer.configs.append(config)

        return VM(vm_id, self.events)


async def run(tmp_path: Path, settings: AgentSettings, lease_extra: dict[str, Any] | None = None) -> GuestConfig:
    vmm = Recording()
    one = OneJob({**job("cf-1"), "repo": "acme/web", "org": "acme", "head_branch": "main"})
    if lease_extra:
        original = one.answer

        async def answer(request: Any) -> Any:
            resp = await original(request)
            if request.url.path == "/v1/agents/lease" and resp.status_code == 200:
                import httpx

                return httpx.Response(200, json={**resp.json(), **lease_extra})
            return resp

        one.answer = answer  # type: ignore[method-assign]
    await one.run(vmm, LocalFiles(tmp_path / "logs"), cache_fallback=fallback(settings))
    [config] = vmm.configs
    return config


async def test_minted_per_job_from_the_secret(tmp_path: Path) -> None:
    settings = AgentSettings(cache_url="http://cache:8090", cache_token_secret=SECRET)
    config = await run(tmp_path, settings)
    assert config.cache is not None and config.cache.url == "http://cache:8090"
    claims = tokens.verify(SECRET, config.cache.token, scope="cache")
    assert (claims["org"], claims["repo"], claims["ref"], claims["job_id"]) == (
        "acme",
        "web",
        "refs/heads/main",
        "cf-1",
    )


async def test_value_used_as_is(tmp_path: Path) -> None:
    settings = AgentSettings(cache_url="http://cache:8090", cache_token_value="a-pre-minted-token")
    config = await run(tmp_path, settings)
    assert config.cache is not None and config.cache.token == "a-pre-minted-token"


async def test_the_lease_cache_wins_and_nothing_without_settings(tmp_path: Path) -> None:
    settings = AgentSettings(cache_url="http://cache:8090", cache_token_value="host-token")
    lease_cache = {"cache": {"url": "http://control-given:8090", "token": "lease-token"}}
    config = await run(tmp_path / "a", settings, lease_cache)
    assert config.cache is not None and config.cache.token == "lease-token"
    assert fallback(AgentSettings(cache_url="http://cache:8090")) is None
    assert fallback(AgentSettings(cache_token_secret=SECRET)) is None
