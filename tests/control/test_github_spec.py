"""The fake GitHub and the GitHub client against GitHub's own REST description (github-rest-subset.json):
the fake refuses what the description refuses, answers only what it declares, and the client's real
requests pass through it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smith.adapters.github import GitHubApp, RunnerScope
from smith.testing.github import FakeGitHub
from smith.testing.openapi import github_rest

APP_ID = "31337"
REPO, ORG = RunnerScope.repo("octo-org/app"), RunnerScope.org("octo-org")
JIT = "/repos/octo-org/app/actions/runners/generate-jitconfig"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fake(key: rsa.RSAPrivateKey) -> FakeGitHub:
    gh = FakeGitHub(APP_ID, key.public_key())
    gh.add_installation(11, "octo-org", ["octo-org/app"])
    return gh


@pytest.fixture
async def client(key: rsa.RSAPrivateKey, fake: FakeGitHub) -> AsyncIterator[GitHubApp]:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    app = GitHubApp(APP_ID, pem, transport=httpx.ASGITransport(app=fake.app), max_attempts=1)
    yield app
    await app.aclose()


@pytest.fixture
async def auth(client: GitHubApp) -> dict[str, str]:
    """Headers carrying a real installation token of installation 11."""
    return {"Authorization": f"Bearer {await client.installation_token(11)}"}


@pytest.fixture
async def http(fake: FakeGitHub) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.github.com") as h:
        h.headers["User-Agent"] = "test"
        yield h


def refusal(r: httpx.Response, status: int) -> str:
    """GitHub's error shape, with this status; its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"message", "documentation_url"}
    assert isinstance(body["message"], str)
    return str(body["message"])


def test_every_route_the_fake_serves_is_an_operation_of_githubs_description(fake: FakeGitHub) -> None:
    spec = github_rest()
    assert spec.version == "23.0.2"
    assert set(fake.handlers) <= set(spec.operations)


async def test_every_route_checks_its_request_before_answering(fake: FakeGitHub, http: httpx.AsyncClient) -> None:
    """An unknown query parameter is refused on every route, before authentication or the handler runs."""
    for method, template in fake.handlers:
        ids = {
            "installation_id": 11,
            "runner_id": 1,
            "job_id": 1,
            "run_id": 1,
            "check_run_id": 1,
            "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
        }
        path = template.format(owner="octo-org", repo="app", org="octo-org", **ids)
        r = await http.request(method, path, params={"nmae": "x"})
        assert "'nmae' is not a query parameter" in refusal(r, 422)
    assert fake.violations == []


async def test_a_renamed_or_missing_field_is_refused(
    fake: FakeGitHub, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    good = {"name": "r1", "runner_group_id": 1, "labels": ["self-hosted"], "work_folder": "_work"}
    renamed = {"runner_name": "r1"} | {k: v for k, v in good.items() if k != "name"}
    message = refusal(await http.post(JIT, json=renamed, headers=auth), 422)
    assert "'name' is a required property" in message
    assert "'runner_name' was unexpected" in message
    for body, why in [
        ({k: v for k, v in good.items() if k != "labels"}, "'labels' is a required property"),
        (good | {"labels": []}, "should be non-empty"),
        (good | {"runner_group_id": "1"}, "is not of type 'integer'"),
        (good | {"workfolder": "_w"}, "'workfolder' was unexpected"),
    ]:
        assert why in refusal(await http.post(JIT, json=body, headers=auth), 422)
    assert fake.runners_in("repo:octo-org/app") == []  # nothing refused reached the handler
    assert "Problems parsing JSON" in refusal(await http.post(JIT, content=b"{", headers=auth), 400)
    # A token request naming a permission GitHub does not have.
    r = await http.post(
        "/app/installations/11/access_tokens", json={"permissions": {"administrator": "write"}}, headers=auth
    )
    assert "'administrator' was unexpected" in refusal(r, 422)
    assert (await http.post(JIT, json=good, headers=auth)).status_code == 201


async def test_unknown_routes_and_ill_typed_path_parameters_are_githubs_404(http: httpx.AsyncClient) -> None:
    assert refusal(await http.delete("/repos/octo-org/app/actions/runners/abc"), 404) == "Not Found"
    assert refusal(await http.get("/repos/octo-org/app/actions/runner"), 404) == "Not Found"
    assert refusal(await http.put("/repos/octo-org/app/actions/runners"), 404) == "Not Found"  # not a method


async def test_the_clients_real_requests_pass(client: GitHubApp, fake: FakeGitHub) -> None:
    spec = github_rest()
    for scope in (REPO, ORG):
        installation = await client.installation_for(scope)
        jit = await client.generate_jit_config(scope, installation, name="smith-1", labels=["self-hosted"])
        await client.registration_token(scope, installation)
        assert await client.find_runner(scope, installation, "smith-1") == jit.runner_id
        assert await client.remove_runner(scope, installation, jit.runner_id)
        assert not await client.remove_runner(scope, installation, jit.runner_id)  # GitHub's 404: gone already
    job = fake.actions.queue_job("octo-org/app", ["self-hosted"])
    assert (await client.workflow_job("octo-org/app", job.id, 11))["status"] == "queued"
    assert (await client.workflow_run("octo-org/app", job.run_id, 11))["event"] == "push"
    pr = fake.actions.start_run("octo-org/app", event="pull_request", head_branch="f", pull_number=3, base_branch="d")
    fork = fake.actions.start_run("octo-org/app", event="pull_request", head_repo="eve/app", pull_number=4)
    assert (await client.workflow_run("octo-org/app", pr.id, 11))["pull_requests"][0]["base"]["ref"] == "d"
    seen = await client.workflow_run("octo-org/app", fork.id, 11)
    assert (seen["pull_requests"], seen["head_repository"]["full_name"]) == ([], "eve/app")  # as GitHub: none
    sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
    await client.commit_status("octo-org/app", sha, "pending", "smith/CI", "queued", 11)
    assert [(s["state"], s["context"], s["sha"]) for s in fake.statuses] == [("pending", "smith/CI", sha)]
    check = await client.create_check_run("octo-org/app", sha, "CI / build", {"status": "queued"}, 11)
    await client.update_check_run("octo-org/app", check, {"status": "in_progress"}, 11)
    await client.update_check_run("octo-org/app", check, {"status": "completed", "conclusion": "success"}, 11)
    [run] = fake.checks.named("CI / build")
    assert (run["status"], run["conclusion"], run["head_sha"]) == ("completed", "success", sha)
    used = set()
    for rec in fake.requests:
        op, _ = spec.match(rec.method, rec.path)
        assert op is not None
        used.add((op.method, op.template))
        assert rec.status < 400 or (rec.method, rec.status) == ("DELETE", 404)
    assert used == set(fake.handlers)  # the client exercised every route the fake serves
    assert fake.violations == []


async def test_a_response_against_the_description_is_a_500_and_a_violation(
    fake: FakeGitHub, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    served = fake.handlers[("GET", "/repos/{owner}/{repo}/actions/runners")]

    async def runner_without_os(request: Request) -> Response:
        return JSONResponse({"total_count": 1, "runners": [{"id": 1, "name": "r", "status": "online", "busy": False}]})

    async def undeclared_status(request: Request) -> Response:
        response = await served(request)
        response.status_code = 201
        return response

    for handler, problem in [
        (runner_without_os, "'os' is a required property"),
        (undeclared_status, "never answers 201"),
    ]:
        fake.handlers[("GET", "/repos/{owner}/{repo}/actions/runners")] = handler
        assert problem in refusal(await http.get("/repos/octo-org/app/actions/runners", headers=auth), 500)
        assert problem in fake.violations.pop()


def test_openapi_nullable_and_refs() -> None:
    spec = github_rest()
    op, params = spec.match("GET", "/repos/octo-org/app/installation")
    assert op is not None and params == {"owner": "octo-org", "repo": "app"}
    body: dict[str, Any] = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
    assert spec.response_problems(op, 404, body) == []
    assert spec.response_problems(op, 404, {"message": 404}) != []
    # runner.version is nullable in the description: null is fine, a number is not.
    op, _ = spec.match("GET", "/orgs/o/actions/runners")
    assert op is not None
    runner = {"id": 1, "name": "r", "os": "linux", "status": "online", "busy": False, "labels": [], "version": None}
    assert spec.response_problems(op, 200, {"total_count": 1, "runners": [runner]}) == []
    assert spec.response_problems(op, 200, {"total_count": 1, "runners": [runner | {"version": 2}]}) != []


async def test_check_runs_refuse_what_github_refuses(
    fake: FakeGitHub, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    url = "/repos/octo-org/app/check-runs"
    sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
    made = await http.post(url, headers=auth, json={"name": "CI / a", "head_sha": sha, "status": "queued"})
    assert made.status_code == 201 and made.json()["status"] == "queued", made.text
    check = f"{url}/{made.json()['id']}"
    # The description: required fields, enums, no unknown field; a completed update needs a conclusion.
    refusal(await http.post(url, headers=auth, json={"name": "x"}), 422)
    refusal(await http.post(url, headers=auth, json={"name": "x", "head_sha": sha, "status": "done"}), 422)
    refusal(await http.post(url, headers=auth, json={"name": "x", "head_sha": sha, "state": "queued"}), 422)
    refusal(await http.patch(check, headers=auth, json={"status": "completed"}), 422)
    # GitHub's words: a completed run needs a conclusion when created too, and only GitHub sets "stale".
    assert "conclusion" in refusal(await http.post(url, headers=auth, json={"name": "x", "head_sha": sha,
                                                                            "status": "completed"}), 422)  # fmt: skip
    refusal(await http.patch(check, headers=auth, json={"conclusion": "stale"}), 422)
    refusal(await http.patch(f"{url}/999999", headers=auth, json={"status": "in_progress"}), 404)
    done = await http.patch(check, headers=auth, json={"conclusion": "failure"})  # a conclusion completes it
    assert (done.json()["status"], done.json()["conclusion"]) == ("completed", "failure")
    # An installation without the checks permission: 403, as GitHub answers an App installed without it.
    fake.installations[11].checks = False
    assert "not accessible" in refusal(await http.post(url, headers=auth, json={"name": "y", "head_sha": sha}), 403)
    assert fake.violations == []
