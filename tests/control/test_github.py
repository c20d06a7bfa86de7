"""The GitHub App client against the fake GitHub API (real RS256 JWTs, real HTTP handling, fake clock/sleep)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from smith.adapters import github
from smith.adapters.github import GitHubApp, GitHubError, RunnerScope
from smith.control.settings import ControlSettings
from smith.domain.jobs import Job, JobState
from smith.errors import ConfigError, InvalidInput, RateLimited, Unavailable
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer

APP_ID = "31337"
T0 = 1_700_000_000.0


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Clock:
    """Wall clock for both sides; ``sleep`` records the wait and moves time on instead of waiting."""

    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(app_key: rsa.RSAPrivateKey, clock: Clock) -> Iterator[FakeGitHub]:
    gh = FakeGitHub(APP_ID, app_key.public_key(), clock=clock)
    gh.add_installation(11, "octo-org", ["octo-org/app", "octo-org/lib"])
    gh.add_installation(22, "other-org", ["other-org/site"])
    yield gh
    assert gh.violations == []  # the fake answered nothing GitHub's description does not declare


@pytest.fixture
async def make_client(
    app_key: rsa.RSAPrivateKey, fake: FakeGitHub, clock: Clock
) -> AsyncIterator[Callable[..., GitHubApp]]:
    """Clients on the fake's ASGI app, sharing the test's clock and sleep; closed after the test."""
    made: list[GitHubApp] = []

    def make(**kw: Any) -> GitHubApp:
        kw.setdefault("transport", httpx.ASGITransport(app=fake.app))
        client = GitHubApp(APP_ID, kw.pop("key", _pem(app_key)), clock=clock, sleep=clock.sleep, **kw)
        made.append(client)
        return client

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
def client(make_client: Callable[..., GitHubApp]) -> GitHubApp:
    return make_client()


def job(**kw: Any) -> Job:
    base = dict(
        id="j1",
        state=JobState.ASSIGNED,
        runner_class="smith-2vcpu",
        vcpus=2,
        memory_mib=4096,
        labels=("self-hosted", "smith-2vcpu", "gpu"),
        repo="octo-org/app",
        org="octo-org",
        installation_id=11,
    )
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


# -- authentication ---------------------------------------------------------------------------------------


async def test_app_jwt_follows_githubs_rules(client: GitHubApp, app_key: rsa.RSAPrivateKey) -> None:
    claims = jwt.decode(client.app_jwt(), app_key.public_key(), algorithms=["RS256"], options={"verify_exp": False})
    assert claims["iss"] == APP_ID
    assert claims["iat"] == int(T0) - 60
    assert int(T0) < claims["exp"] <= int(T0) + 600


async def test_one_token_request_for_many_calls_and_the_headers_github_wants(
    client: GitHubApp, fake: FakeGitHub
) -> None:
    for n in range(5):
        await client.for_job(job(id=f"j{n}"), f"smith-j{n}-1")
    assert len(fake.token_requests()) == 1
    assert fake.token_requests()[0].auth == "jwt"
    assert len(fake.runners_in("repo:octo-org/app")) == 5
    for rec in fake.requests:
        assert rec.headers["accept"] == "application/vnd.github+json"
        assert rec.headers["x-github-api-version"] == "2022-11-28"
        assert rec.headers["user-agent"].startswith("smith/")
    assert {r.auth for r in fake.calls(path_contains="generate-jitconfig")} == {"token"}


async def test_token_is_refreshed_shortly_before_it_expires(client: GitHubApp, fake: FakeGitHub, clock: Clock) -> None:
    await client.installation_token(11)
    clock.now = T0 + 3600 - 301  # still more than 5 minutes left
    await client.installation_token(11)
    assert len(fake.token_requests()) == 1
    clock.now = T0 + 3600 - 299  # inside the refresh margin
    token = await client.installation_token(11)
    assert len(fake.token_requests()) == 2
    await client.for_job(job(), "smith-j1-1")  # and the new token is accepted
    assert fake.tokens[token].installation_id == 11


async def test_tokens_are_cached_per_installation(client: GitHubApp, fake: FakeGitHub) -> None:
    a = await client.installation_token(11)
    b = await client.installation_token(22)
    assert a != b
    assert [r.path for r in fake.token_requests()] == [
        "/app/installations/11/access_tokens",
        "/app/installations/22/access_tokens",
    ]


async def test_ten_concurrent_jobs_share_one_token_request(client: GitHubApp, fake: FakeGitHub) -> None:
    creds = await asyncio.gather(*(client.for_job(job(id=f"c{n}"), f"smith-c{n}-1") for n in range(10)))
    assert len(fake.token_requests()) == 1
    assert len({c.value for c in creds}) == 10
    assert len(fake.runners_in("repo:octo-org/app")) == 10


async def test_a_key_github_does_not_know_is_refused(make_client: Callable[..., GitHubApp], fake: FakeGitHub) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client = make_client(key=_pem(other))
    with pytest.raises(GitHubError) as err:
        await client.for_job(job(), "smith-j1-1")
    assert err.value.status == 401
    assert err.value.github_message == "A JSON web token could not be decoded"
    assert not err.value.retryable
    assert len(fake.token_requests()) == 1  # a bad App JWT is not retried


# -- runner credentials -----------------------------------------------------------------------------------


async def test_jit_config_for_a_repository(client: GitHubApp, fake: FakeGitHub) -> None:
    cred = await client.for_job(job(), "smith-j1-1")
    [call] = fake.calls("POST", "generate-jitconfig")
    assert call.path == "/repos/octo-org/app/actions/runners/generate-jitconfig"
    assert call.status == 201
    assert call.body == {
        "name": "smith-j1-1",
        "runner_group_id": 1,
        "labels": ["self-hosted", "smith-2vcpu", "gpu"],
        "work_folder": "_work",
    }
    assert cred.kind == "jit"
    assert cred.runner_name == "smith-j1-1"
    assert cred.url == "https://github.com/octo-org/app"
    files = json.loads(base64.b64decode(cred.value))  # GitHub's encoding: each runner file, base64
    assert json.loads(base64.b64decode(files[".runner"]))["agentName"] == "smith-j1-1"
    [runner] = fake.runners_in("repo:octo-org/app")
    assert runner["name"] == "smith-j1-1" and runner["ephemeral"]


async def test_jit_config_for_an_organisation_with_a_runner_group(
    make_client: Callable[..., GitHubApp], fake: FakeGitHub
) -> None:
    fake.runner_groups.add(7)
    client = make_client(org_runners=True, runner_group_id=7)
    cred = await client.for_job(job(labels=("self-hosted",)), "smith-j1-1")
    [call] = fake.calls("POST", "generate-jitconfig")
    assert call.path == "/orgs/octo-org/actions/runners/generate-jitconfig"
    assert call.body["runner_group_id"] == 7
    assert call.body["labels"] == ["self-hosted"]  # the job's labels only: no class name
    assert cred.url == "https://github.com/octo-org"
    assert fake.runners_in("org:octo-org")[0]["runner_group_id"] == 7
    assert fake.runners_in("repo:octo-org/app") == []


async def test_registration_token_for_repository_and_organisation(
    make_client: Callable[..., GitHubApp], fake: FakeGitHub
) -> None:
    repo_client = make_client(mode="registration")
    org_client = make_client(mode="registration", org_runners=True)
    repo_cred = await repo_client.for_job(job(), "smith-j1-1")
    org_cred = await org_client.for_job(job(), "smith-j1-1")
    assert [c.path for c in fake.calls("POST", "registration-token")] == [
        "/repos/octo-org/app/actions/runners/registration-token",
        "/orgs/octo-org/actions/runners/registration-token",
    ]
    assert all(c.body is None and c.status == 201 for c in fake.calls("POST", "registration-token"))
    assert repo_cred.kind == org_cred.kind == "registration"
    assert repo_cred.url == "https://github.com/octo-org/app"
    assert org_cred.url == "https://github.com/octo-org"
    assert repo_cred.expires_at and github.parse_timestamp(repo_cred.expires_at) == T0 + 3600
    assert fake.runners_in("repo:octo-org/app") == []  # nothing is registered until config.sh runs


async def test_installation_is_looked_up_when_the_webhook_had_none(client: GitHubApp, fake: FakeGitHub) -> None:
    await client.for_job(job(installation_id=0), "smith-a-1")
    await client.for_job(job(installation_id=0, id="b"), "smith-b-1")
    [lookup] = fake.calls("GET", "/installation")
    assert lookup.path == "/repos/octo-org/app/installation" and lookup.auth == "jwt"
    assert fake.token_requests()[0].path == "/app/installations/11/access_tokens"


async def test_org_installation_lookup(make_client: Callable[..., GitHubApp], fake: FakeGitHub) -> None:
    client = make_client(org_runners=True)
    await client.for_job(job(installation_id=0, repo="other-org/site", org="other-org"), "smith-j1-1")
    assert [c.path for c in fake.calls("GET", "/installation")] == ["/orgs/other-org/installation"]
    assert fake.token_requests()[0].path == "/app/installations/22/access_tokens"


async def test_a_stale_runner_of_the_same_name_is_replaced(client: GitHubApp, fake: FakeGitHub) -> None:
    first = await client.for_job(job(), "smith-j1-1")
    second = await client.for_job(job(), "smith-j1-1")  # GitHub answers 409, the stale runner goes
    assert [c.status for c in fake.calls("POST", "generate-jitconfig")] == [201, 409, 201]
    assert len(fake.calls("DELETE")) == 1
    [runner] = fake.runners_in("repo:octo-org/app")
    files = json.loads(base64.b64decode(second.value))
    assert json.loads(base64.b64decode(files[".runner"]))["agentId"] == runner["id"]
    assert first.value != second.value


async def test_release_removes_the_runner_of_a_job_that_will_not_run(client: GitHubApp, fake: FakeGitHub) -> None:
    await client.for_job(job(), "smith-j1-1")
    assert await client.release(job(), "smith-j1-1") is True
    assert fake.runners_in("repo:octo-org/app") == []
    [delete] = fake.calls("DELETE")
    assert delete.status == 204
    assert await client.release(job(), "smith-j1-1") is False  # already gone: nothing to do


async def test_remove_runner_that_is_gone_is_false(client: GitHubApp) -> None:
    assert await client.remove_runner(RunnerScope.repo("octo-org/app"), 11, 999_999) is False


# -- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo", ["octo-org", "octo-org/../x", "a/b/c", "octo org/app", "/app", "-x/app"])
async def test_a_bad_repository_name_is_refused_before_any_request(
    client: GitHubApp, fake: FakeGitHub, repo: str
) -> None:
    with pytest.raises(InvalidInput):
        await client.for_job(job(repo=repo), "smith-j1-1")
    assert fake.requests == []


async def test_a_job_with_neither_repo_nor_org_is_refused(client: GitHubApp) -> None:
    with pytest.raises(InvalidInput, match="neither"):
        await client.for_job(job(repo="", org=""), "smith-j1-1")


async def test_labels_are_the_jobs_own_deduplicated_and_bounded(client: GitHubApp) -> None:
    """Exactly the job's runs-on labels: GitHub gives a job to any idle runner that has all its labels, so a
    runner with its class name added would take the smaller jobs that class's labels also cover."""
    assert GitHubApp.labels_for(job(labels=("Self-Hosted", "self-hosted", "gpu"), runner_class="smith-8vcpu")) == [
        "Self-Hosted",
        "gpu",
    ]
    with pytest.raises(InvalidInput, match="1 to 100"):
        await client.generate_jit_config(
            RunnerScope.repo("octo-org/app"), 11, name="x", labels=[f"l{n}" for n in range(101)]
        )


async def test_the_fake_refuses_a_jit_body_without_runner_group(client: GitHubApp, fake: FakeGitHub) -> None:
    token = await client.installation_token(11)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="https://api.github.com") as h:
        r = await h.post(
            "/repos/octo-org/app/actions/runners/generate-jitconfig",
            json={"name": "x", "labels": ["a"]},
            headers={"Authorization": f"Bearer {token}", "User-Agent": "t"},
        )
        assert r.status_code == 422
        assert r.json()["message"] == "Invalid request.\n\nbody: 'runner_group_id' is a required property"
        r = await h.post(
            "/repos/other-org/site/actions/runners/registration-token",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "t"},
        )
        assert r.status_code == 403  # a token of installation 11 does not reach installation 22's repos


# -- errors, retries, rate limits -------------------------------------------------------------------------


async def test_unknown_repository_is_an_upstream_error_with_githubs_message(
    client: GitHubApp, fake: FakeGitHub
) -> None:
    with pytest.raises(GitHubError) as err:
        await client.for_job(job(repo="octo-org/nope", installation_id=0), "smith-j1-1")
    assert err.value.status == 404
    assert err.value.github_message == "Not Found"
    assert "Not Found" in err.value.message
    assert not err.value.retryable
    assert len(fake.calls(path_contains="/installation")) == 1  # a 404 is not retried


async def test_an_unknown_runner_group_is_404(make_client: Callable[..., GitHubApp]) -> None:
    client = make_client(runner_group_id=99, org_runners=True)  # (a group applies at organisation scope only)
    with pytest.raises(GitHubError) as err:
        await client.for_job(job(), "smith-j1-1")
    assert err.value.status == 404


async def test_5xx_is_retried_with_growing_jittered_backoff(client: GitHubApp, fake: FakeGitHub, clock: Clock) -> None:
    fake.server_errors(2, path="generate-jitconfig")
    cred = await client.for_job(job(), "smith-j1-1")
    assert cred.kind == "jit"
    assert [c.status for c in fake.calls("POST", "generate-jitconfig")] == [502, 502, 201]
    first, second = clock.slept
    assert 0.25 <= first <= 0.5  # base 0.5 s: half fixed, half jitter
    assert 0.5 <= second <= 1.0  # doubled


async def test_5xx_gives_up_after_max_attempts_as_retryable(
    make_client: Callable[..., GitHubApp], fake: FakeGitHub, clock: Clock
) -> None:
    client = make_client(max_attempts=3)
    fake.server_errors(10, status=503, path="generate-jitconfig")
    with pytest.raises(GitHubError) as err:
        await client.for_job(job(), "smith-j1-1")
    assert err.value.status == 503 and err.value.retryable
    assert len(fake.calls("POST", "generate-jitconfig")) == 3
    assert len(clock.slept) == 2


async def test_connection_errors_are_retried_then_unavailable(
    make_client: Callable[..., GitHubApp], clock: Clock
) -> None:
    attempts = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("connection refused", request=request)

    client = make_client(transport=httpx.MockTransport(refuse), max_attempts=3)
    with pytest.raises(Unavailable) as err:
        await client.installation_token(11)
    assert err.value.retryable
    assert attempts == 3 and len(clock.slept) == 2


async def test_429_retry_after_is_waited_out(client: GitHubApp, fake: FakeGitHub, clock: Clock) -> None:
    fake.retry_after(7, path="generate-jitconfig")
    await client.for_job(job(), "smith-j1-1")
    assert clock.slept == [7.0]
    assert [c.status for c in fake.calls("POST", "generate-jitconfig")] == [429, 201]


async def test_429_retry_after_as_an_http_date_is_waited_out(client: GitHubApp, fake: FakeGitHub, clock: Clock) -> None:
    later = formatdate(clock.now + 12, usegmt=True)
    fake.fail(429, headers={"retry-after": later}, message="secondary rate limit", path="generate-jitconfig")
    await client.for_job(job(), "smith-j1-1")
    assert clock.slept == [12.0]


async def test_403_primary_rate_limit_waits_until_the_reset(client: GitHubApp, fake: FakeGitHub, clock: Clock) -> None:
    fake.rate_limit(reset_in=30, path="generate-jitconfig")
    await client.for_job(job(), "smith-j1-1")
    assert clock.slept == [31.0]  # until x-ratelimit-reset, plus one second
    assert [c.status for c in fake.calls("POST", "generate-jitconfig")] == [403, 201]


async def test_a_reset_too_far_away_raises_rate_limited(client: GitHubApp, fake: FakeGitHub, clock: Clock) -> None:
    fake.rate_limit(reset_in=1800, path="generate-jitconfig")
    with pytest.raises(RateLimited) as err:
        await client.for_job(job(), "smith-j1-1")
    assert err.value.retryable
    assert err.value.retry_after == pytest.approx(1801)
    assert clock.slept == []


async def test_a_403_that_is_not_a_rate_limit_is_not_waited_on(
    client: GitHubApp, fake: FakeGitHub, clock: Clock
) -> None:
    fake.fail(403, message="Resource not accessible by integration", path="generate-jitconfig")
    with pytest.raises(GitHubError) as err:
        await client.for_job(job(), "smith-j1-1")
    assert err.value.status == 403
    assert err.value.github_message == "Resource not accessible by integration"
    assert clock.slept == []


async def test_401_drops_the_token_and_retries_once(client: GitHubApp, fake: FakeGitHub) -> None:
    await client.for_job(job(id="a"), "smith-a-1")
    fake.expire_tokens()  # the cached token is refused from now on
    await client.for_job(job(id="b"), "smith-b-1")
    assert len(fake.token_requests()) == 2
    assert [c.status for c in fake.calls("POST", "generate-jitconfig")] == [201, 401, 201]


async def test_a_401_that_persists_is_raised_after_one_refresh(client: GitHubApp, fake: FakeGitHub) -> None:
    fake.fail(401, times=5, message="Bad credentials", path="generate-jitconfig")
    with pytest.raises(GitHubError) as err:
        await client.for_job(job(), "smith-j1-1")
    assert err.value.status == 401
    assert len(fake.token_requests()) == 2
    assert len(fake.calls("POST", "generate-jitconfig")) == 2


async def test_no_token_or_jit_config_reaches_the_logs(client: GitHubApp, fake: FakeGitHub) -> None:
    fake.server_errors(1, path="generate-jitconfig")
    with capture_logs() as logs:
        cred = await client.for_job(job(), "smith-j1-1")
        await client.release(job(), "smith-j1-1")
    text = json.dumps(logs, default=str)
    assert logs  # it did log (retry, registration, removal)
    assert cred.value not in text
    for token in fake.tokens:
        assert token not in text
    assert "encoded_jit_config=***" in repr(github.JitConfig(1, "n", "secret"))


# -- settings and a real server ---------------------------------------------------------------------------


def test_from_settings_without_an_app_is_none() -> None:
    assert github.from_settings(ControlSettings()) is None


async def test_from_settings_reads_the_key_file_and_options(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text(_pem(app_key))
    settings = ControlSettings(
        github_app_id=APP_ID,
        github_app_private_key_path=str(key_file),
        github_api_url="https://ghe.example.com/api/v3",
        github_runner_mode="registration",
        github_runner_group_id=3,
        github_org_runners=True,
        github_installation_id=11,
    )
    ghes = FakeGitHub(APP_ID, app_key.public_key(), clock=clock, base_path="/api/v3")
    ghes.add_installation(11, "octo-org", ["octo-org/app"])
    client = github.from_settings(settings, transport=httpx.ASGITransport(app=ghes.app), clock=clock)
    assert client is not None
    assert (client.mode, client.runner_group_id, client.org_runners) == ("registration", 3, True)
    cred = await client.for_job(job(installation_id=0), "smith-j1-1")
    assert cred.url == "https://ghe.example.com/octo-org"
    assert ghes.token_requests()[0].path == "/api/v3/app/installations/11/access_tokens"
    [reg] = ghes.calls("POST", "registration-token")
    assert reg.path == "/api/v3/orgs/octo-org/actions/runners/registration-token"
    await client.aclose()


def test_from_settings_with_a_bad_or_missing_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        github.from_settings(
            ControlSettings(github_app_id=APP_ID, github_app_private_key_path=str(tmp_path / "none.pem"))
        )
    with pytest.raises(ConfigError, match="PEM"):
        github.from_settings(ControlSettings(github_app_id=APP_ID, github_app_private_key="not a key"))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(ConfigError, match="RSA"):
        github.from_settings(ControlSettings(github_app_id=APP_ID, github_app_private_key=ec_pem))
    with pytest.raises(ConfigError, match="private key"):
        github.from_settings(ControlSettings(github_app_id=APP_ID))


def test_web_url_is_derived_from_the_api_url() -> None:
    assert github.web_url_for("https://api.github.com") == "https://github.com"
    assert github.web_url_for("https://ghe.corp/api/v3/") == "https://ghe.corp"


async def test_over_real_http_against_the_threaded_fake(app_key: rsa.RSAPrivateKey) -> None:
    gh = FakeGitHub(APP_ID, app_key.public_key())
    gh.add_installation(11, "octo-org", ["octo-org/app"])
    with ThreadedServer(gh.app) as srv:
        async with GitHubApp(APP_ID, _pem(app_key), api_url=srv.url, web_url="https://github.com") as client:
            cred = await client.for_job(replace(job(), installation_id=0), "smith-j1-1")
    assert cred.kind == "jit"
    assert [r.status for r in gh.requests] == [200, 201, 201]


async def test_jit_configs_are_paced_under_githubs_secondary_limit(
    make_client: Callable[..., GitHubApp], clock: Clock
) -> None:
    client = make_client(jit_per_minute=60)
    for n in range(3):
        await client.generate_jit_config(RunnerScope.repo("octo-org/app"), 11, name=f"r{n}", labels=["self-hosted"])
    assert clock.slept == [1.0, 1.0]  # one a second at 60 a minute; the default is 170 (GitHub allows ~180)
    assert GitHubApp(APP_ID, _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))).jit_interval == (
        60 / 170
    )
