"""Fixtures for the control plane: a real app under uvicorn on loopback against the real Valkey."""

from __future__ import annotations

import contextlib
import copy
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smith import tokens
from smith.adapters.github import GitHubApp
from smith.control.app import create_app
from smith.control.settings import ControlSettings
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from tests.conftest import webhook_payload

WEBHOOK_SECRET = "webhook-secret-for-tests"
AGENT_SECRET = "agent-secret-for-tests-0123456789abcdef"
OPERATOR_SECRET = "operator-secret-for-tests-0123456789abcdef"


def make_settings(redis_url: str, **overrides: Any) -> ControlSettings:
    base: dict[str, Any] = dict(
        redis_url=redis_url,
        github_webhook_secret=WEBHOOK_SECRET,
        agent_token_secret=AGENT_SECRET,
        jwt_secret=OPERATOR_SECRET,
        lease_ttl_seconds=2.0,
        reclaim_interval_seconds=0.2,
        host_ttl_seconds=30,
        max_attempts=3,
    )
    base.update(overrides)
    return ControlSettings(**base)


def control_env(redis_url: str, data_dir: Path, **more: str) -> dict[str, str]:
    """The environment of a `smith control serve` process for tests: this one's minus SMITH_*/PROMETHEUS_*, plus
    the test secrets, the Valkey and a data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMITH_", "PROMETHEUS_"))}
    return env | {
        "SMITH_REDIS_URL": redis_url,
        "SMITH_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET,
        "SMITH_JWT_SECRET": OPERATOR_SECRET,
        "SMITH_DATA_DIR": str(data_dir),
        "SMITH_LOG_LEVEL": "WARNING",
        **more,
    }


def agent_token(agent_id: str, ttl: float = 3600, now: float | None = None) -> str:
    return tokens.mint(AGENT_SECRET, scope="agent", subject=agent_id, ttl_seconds=ttl, now=now, agent_id=agent_id)


def operator_token(ttl: float = 3600) -> str:
    return tokens.mint(OPERATOR_SECRET, scope="operator", subject="tester", ttl_seconds=ttl)


def queued_payload(job_id: int, labels: list[str] | None = None, action: str = "queued") -> dict[str, Any]:
    """The real queued payload from shared/, with its id and labels set for the test."""
    p = copy.deepcopy(webhook_payload("workflow_job", "queued.payload"))
    p["action"] = action
    p["workflow_job"]["id"] = job_id
    p["workflow_job"]["labels"] = labels if labels is not None else ["self-hosted", "smith-2vcpu"]
    if action != "queued":
        p["workflow_job"]["status"] = action
    return p


def signed(
    body: bytes, event: str = "workflow_job", delivery: str | None = None, secret: str = WEBHOOK_SECRET
) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": tokens.github_signature(secret.encode(), body),
        "Content-Type": "application/json",
    }


@dataclass
class Control:
    url: str
    settings: ControlSettings
    server: ThreadedServer

    def client(self, token: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def deliver(
        self, payload: dict[str, Any], event: str = "workflow_job", delivery: str | None = None
    ) -> httpx.Response:
        body = orjson.dumps(payload)
        return httpx.post(self.url + "/webhooks/github", content=body, headers=signed(body, event, delivery))

    def agent(
        self, agent_id: str, vcpus: int = 8, memory_mib: int = 32768, labels: list[str] | None = None
    ) -> httpx.Client:
        c = self.client(agent_token(agent_id))
        r = c.post(
            "/v1/agents/register",
            json={
                "hostname": agent_id,
                "vcpus": vcpus,
                "memory_mib": memory_mib,
                "max_vms": 16,
                "labels": labels or [],
            },
        )
        assert r.status_code == 200, r.text
        return c


@pytest.fixture
def control_factory(redis_url: str) -> Iterator[Callable[..., Control]]:
    started: list[ThreadedServer] = []

    def start(**overrides: Any) -> Control:
        settings = make_settings(overrides.pop("redis_url", redis_url), **overrides)
        srv = ThreadedServer(create_app(settings))
        srv.start()
        started.append(srv)
        return Control(srv.url, settings, srv)

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def control(control_factory: Callable[..., Control]) -> Control:
    return control_factory()


APP_ID = "4242"
INSTALLATION = 3456996  # what the shared workflow_job payloads carry


@contextlib.contextmanager
def github_app() -> Iterator[tuple[FakeGitHub, GitHubApp]]:
    """The fake GitHub API with a GitHub App installed where the shared workflow_job payloads come from
    (Codertocat/Hello-World), served on loopback, and a real ``GitHubApp`` client holding the App's key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    fake = FakeGitHub(APP_ID, key.public_key())
    fake.add_installation(INSTALLATION, "Codertocat", ["Codertocat/Hello-World"], account_type="User")
    with ThreadedServer(fake.app) as gh:
        yield fake, GitHubApp(APP_ID, pem, api_url=gh.url, web_url="https://github.com", max_attempts=2)
    assert fake.violations == []  # the fake answered nothing GitHub's description does not declare
