"""A fake GitHub REST API for the App endpoints Smith uses, as a Starlette app.

Serve it with ``smith.testing.servers.ThreadedServer(fake.app)`` or talk to it in-process through
``httpx.ASGITransport(fake.app)``. It is strict where GitHub is:

* App JWTs are verified for real: RS256 against the App's public key, ``iss`` = the App id, ``exp`` in the
  future and at most 10 minutes ahead, ``iat`` not in the future (60 s of drift allowed) -> else 401.
* Installation tokens (``ghs_...``) are issued with an expiry (``token_ttl``, by the fake's ``clock``) and checked
  on every later call: unknown, expired or revoked -> 401 ``Bad credentials``; a token of another installation
  -> 403 ``Resource not accessible by integration``; an unknown repository, organisation or installation -> 404.
* Every route is an operation of GitHub's REST description (``smith/testing/specs/github-rest-subset.json``,
  through ``smith.testing.openapi``), and every request is checked against it before anything else: an
  unknown path or method, or a path parameter of the wrong type, is 404 ``Not Found``; an unknown or
  ill-typed query parameter, or a body that breaks the operation's ``requestBody`` schema (a missing required
  field, a wrong type, a field the schema does not list: stricter than GitHub, which ignores unknown fields,
  so a renamed field is caught), is 422 ``Invalid request.``. Every response is checked too: its status must
  be one the operation declares (or an error status, which GitHub may answer anywhere) and its body must match
  the declared schema (errors: ``basic-error``). A response that does not is replaced by a 500 and kept in
  ``fake.violations``, so a test sees it.
* Status codes follow the description: 201 for tokens, JIT configs and registration tokens, 204 for deletes,
  409 ``Already exists`` for a runner name already registered in that scope, 404 for an unknown runner
  group or runner. Errors are ``{message, documentation_url, status}``.
* Every request is recorded (``fake.requests``), minus its Authorization header, for assertions.
* Failures can be injected for the next N matching requests: ``server_errors``, ``rate_limit`` (403 with
  ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset``), ``retry_after`` (429 with ``retry-after``),
  ``fail`` (any status), and ``expire_tokens`` makes every issued token answer 401 from now on.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from smith.testing.github_actions import Actions
from smith.testing.github_checks import CheckRuns
from smith.testing.github_runs import account as _account
from smith.testing.github_runs import id_of as _id_of
from smith.testing.github_runs import run_body
from smith.testing.openapi import OpenAPI, Operation, github_rest

DOCS = "https://docs.github.com/rest"
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth: str  # "jwt", "token", "none" or "bad"
    headers: dict[str, str]
    status: int = 0
    installation_id: int | None = None


@dataclass
class Installation:
    id: int
    account: str
    account_type: str
    repos: set[str]  # "owner/name", lower-case
    checks: bool = True  # the App's "checks: write" permission on this installation


@dataclass
class _Failure:
    status: int
    remaining: int
    headers: dict[str, str]
    message: str
    path: str | None


@dataclass
class _IssuedToken:
    installation_id: int
    expires_at: float
    revoked: bool = False


@dataclass
class FakeGitHub:
    """State of the fake: installations, repositories, runners, issued tokens, injected failures."""

    app_id: str
    public_key: RSAPublicKey | str | bytes
    token_ttl: float = 3600.0
    clock: Callable[[], float] = time.time
    runner_groups: set[int] = field(default_factory=lambda: {1})
    installations: dict[int, Installation] = field(default_factory=dict)
    runners: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # scope key -> id -> runner
    requests: list[Recorded] = field(default_factory=list)
    tokens: dict[str, _IssuedToken] = field(default_factory=dict)
    base_path: str = ""  # "/api/v3" to look like GitHub Enterprise Server
    spec: OpenAPI = field(default_factory=github_rest)
    violations: list[str] = field(default_factory=list)  # responses the fake sent against the description
    statuses: list[dict[str, Any]] = field(default_factory=list)  # commit statuses created, in order

    def __post_init__(self) -> None:
        self.app_id = str(self.app_id)
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._ids = itertools.count(1000)
        self.actions = Actions(self)
        self.checks = CheckRuns(self.clock)
        self.handlers = self._handlers()
        routes: list[BaseRoute] = [*self.actions.routes(), Route("/{path:path}", self._endpoint, methods=_METHODS)]
        self.app = Starlette(routes=[Mount(self.base_path, routes=routes)] if self.base_path else routes)

    # -- set-up ------------------------------------------------------------------------------------------

    def add_installation(
        self, installation_id: int, account: str, repos: Iterable[str] = (), *, account_type: str = "Organization"
    ) -> Installation:
        """Install the App on ``account`` with access to ``repos`` (``owner/name``, all under that account)."""
        names = {r.lower() for r in repos}
        if any(r.split("/")[0] != account.lower() for r in names):
            raise ValueError("every repository must belong to the installation's account")
        inst = Installation(installation_id, account, account_type, names)
        with self._lock:
            self.installations[installation_id] = inst
        return inst

    def fail(
        self, status: int, times: int = 1, *, headers: dict[str, str] | None = None, message: str = "", path: str = ""
    ) -> None:
        """Answer the next ``times`` requests (whose path contains ``path``) with this status."""
        with self._lock:
            self._failures.append(_Failure(status, times, headers or {}, message or f"injected {status}", path or None))

    def server_errors(self, times: int, status: int = 502, *, path: str = "") -> None:
        self.fail(status, times, message="Server Error", path=path)

    def rate_limit(self, reset_in: float, times: int = 1, *, path: str = "") -> None:
        """A primary rate limit: 403, ``x-ratelimit-remaining: 0``, reset ``reset_in`` seconds from now."""
        reset = int(self.clock() + reset_in)
        headers = {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-used": "5000",
            "x-ratelimit-reset": str(reset),
            "x-ratelimit-resource": "core",
        }
        self.fail(403, times, headers=headers, message="API rate limit exceeded for installation.", path=path)

    def retry_after(self, seconds: int, times: int = 1, *, status: int = 429, path: str = "") -> None:
        """A secondary rate limit with ``retry-after``."""
        message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
        self.fail(status, times, headers={"retry-after": str(seconds)}, message=message, path=path)

    def expire_tokens(self) -> None:
        """Every installation token issued so far is refused from now on (401), as after an expiry."""
        with self._lock:
            for token in self.tokens.values():
                token.revoked = True

    # -- queries for tests -------------------------------------------------------------------------------

    def calls(self, method: str = "", path_contains: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (not method or r.method == method) and (not path_contains or path_contains in r.path)
            ]

    def token_requests(self) -> list[Recorded]:
        return self.calls("POST", "/access_tokens")

    def add_runner(self, scope: str, name: str, *, status: str = "offline", busy: bool = False) -> dict[str, Any]:
        """A runner registered by someone else (another deployment, a person) in ``repo:o/r`` / ``org:o``."""
        with self._lock:
            runner_id = next(self._ids)
            runner = {
                "id": runner_id,
                "name": name,
                "os": "linux",
                "status": status,
                "busy": busy,
                "ephemeral": True,
                "runner_group_id": 1,
                "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}],
            }
            self.runners.setdefault(scope.lower(), {})[runner_id] = runner
        return runner

    def runners_in(self, scope: str) -> list[dict[str, Any]]:
        """``scope`` is ``repo:owner/name`` or ``org:login``."""
        with self._lock:
            return list(self.runners.get(scope.lower(), {}).values())

    # -- the app -----------------------------------------------------------------------------------------

    def _handlers(self) -> dict[tuple[str, str], Handler]:
        """What the fake serves, by GitHub's own operation (method, path template)."""
        handlers: dict[tuple[str, str], Handler] = {
            ("POST", "/app/installations/{installation_id}/access_tokens"): self._access_token,
        }
        runners = "/actions/runners"
        for prefix in ("/repos/{owner}/{repo}", "/orgs/{org}"):
            handlers[("POST", f"{prefix}{runners}/generate-jitconfig")] = self._jitconfig
            handlers[("POST", f"{prefix}{runners}/registration-token")] = self._registration_token
            handlers[("GET", f"{prefix}{runners}")] = self._list_runners
            handlers[("DELETE", f"{prefix}{runners}/{{runner_id}}")] = self._delete_runner
            handlers[("GET", f"{prefix}/installation")] = self._installation_of
        handlers[("GET", "/repos/{owner}/{repo}/actions/jobs/{job_id}")] = self._workflow_job
        handlers[("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}")] = self._workflow_run
        handlers[("POST", "/repos/{owner}/{repo}/statuses/{sha}")] = self._create_status
        handlers[("POST", "/repos/{owner}/{repo}/check-runs")] = self._check_run
        handlers[("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}")] = self._check_run
        return handlers

    async def _endpoint(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        rec = Recorded(
            request.method,
            request.url.path,
            dict(request.query_params),
            body,
            "none",
            {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
        )
        request.state.rec = rec
        with self._lock:
            self.requests.append(rec)
        path = "/" + request.path_params["path"]
        op, params = self.spec.match(request.method, path)
        handler = self.handlers.get((op.method, op.template)) if op else None
        if op is None or handler is None:
            response = _error(404, "Not Found")
        else:
            refused = self._injected(rec.path) or self._check_headers(request)
            refused = refused or self._check_request(op, params, rec.query, raw)
            if refused is None:
                request.scope["path_params"] = params
            response = self._check_response(op, refused or await handler(request))
        rec.status = response.status_code
        return response

    def _check_request(
        self, op: Operation, params: dict[str, str], query: dict[str, str], raw: bytes
    ) -> Response | None:
        """GitHub's answer to a request its description refuses, or None."""
        if self.spec.path_problems(op, params):
            return _error(404, "Not Found")  # (at GitHub, a path parameter of the wrong type matches no route)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _error(400, "Problems parsing JSON")
        problems = self.spec.request_problems(op, query, body)
        if problems:
            return _error(422, "Invalid request.\n\n" + "\n".join(problems))
        return None

    def _check_response(self, op: Operation, response: Response) -> Response:
        body = json.loads(bytes(response.body)) if response.body else None
        problems = self.spec.response_problems(op, response.status_code, body)
        if not problems:
            return response
        message = f"the fake answered {op.method} {op.template} against GitHub's description: " + "; ".join(problems)
        with self._lock:
            self.violations.append(message)
        return _error(500, message)

    def _injected(self, path: str) -> Response | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and (failure.path is None or failure.path in path):
                    failure.remaining -= 1
                    return _error(failure.status, failure.message, failure.headers)
        return None

    @staticmethod
    def _check_headers(request: Request) -> Response | None:
        if not request.headers.get("user-agent"):
            return _error(
                403, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header."
            )
        return None

    # -- authentication ----------------------------------------------------------------------------------

    def _app_auth(self, request: Request) -> Response | None:
        """None when the request carries a valid App JWT, else GitHub's 401."""
        rec: Recorded = request.state.rec
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return _error(401, "Requires authentication")
        try:
            claims = jwt.decode(
                credential,
                self.public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            rec.auth = "bad"
            return _error(401, "A JSON web token could not be decoded")
        rec.auth = "jwt"
        now = self.clock()
        if str(claims["iss"]) != self.app_id:
            return _error(401, "Integration not found")
        if claims["exp"] <= now:
            return _error(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
                "the assertion expires",
            )
        if claims["exp"] > now + 600:
            return _error(401, "'Expiration time' claim ('exp') is too far in the future")
        if claims["iat"] > now + 60:
            return _error(
                401, "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
            )
        return None

    def _installation_auth(self, request: Request) -> tuple[Installation | None, Response | None]:
        rec: Recorded = request.state.rec
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or not credential:
            return None, _error(401, "Requires authentication")
        with self._lock:
            issued = self.tokens.get(credential)
        if issued is None or issued.revoked or issued.expires_at <= self.clock():
            rec.auth = "bad"
            return None, _error(401, "Bad credentials")
        rec.auth = "token"
        rec.installation_id = issued.installation_id
        inst = self.installations.get(issued.installation_id)
        if inst is None:
            return None, _error(401, "Bad credentials")
        return inst, None

    def _scope(self, request: Request, inst: Installation | None) -> tuple[str, Response | None]:
        """The scope key (``repo:o/r`` / ``org:o``) of the path, checked against the installation's access."""
        p = request.path_params
        if "org" in p:
            org = str(p["org"]).lower()
            known = any(i.account.lower() == org for i in self.installations.values())
            if not known:
                return "", _error(404, "Not Found")
            if inst is not None and inst.account.lower() != org:
                return "", _error(403, "Resource not accessible by integration")
            return f"org:{org}", None
        repo = f"{p['owner']}/{p['repo']}".lower()
        known = any(repo in i.repos for i in self.installations.values())
        if not known:
            return "", _error(404, "Not Found")
        if inst is not None and repo not in inst.repos:
            return "", _error(403, "Resource not accessible by integration")
        return f"repo:{repo}", None

    def _authorized_scope(self, request: Request) -> tuple[str, Response | None]:
        """An installation token, then the path's scope within that installation's reach."""
        inst, denied = self._installation_auth(request)
        if denied:
            return "", denied
        return self._scope(request, inst)

    # -- endpoints ---------------------------------------------------------------------------------------

    async def _access_token(self, request: Request) -> Response:
        denied = self._app_auth(request)
        if denied:
            return denied
        inst = self.installations.get(int(request.path_params["installation_id"]))
        if inst is None:
            return _error(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(27)
        expires_at = self.clock() + self.token_ttl
        with self._lock:
            self.tokens[token] = _IssuedToken(inst.id, expires_at)
        return JSONResponse(
            {
                "token": token,
                "expires_at": _iso(expires_at),
                "permissions": {
                    "actions": "read",
                    "administration": "write",
                    "metadata": "read",
                    "organization_self_hosted_runners": "write",
                },
                "repository_selection": "selected",
            },
            status_code=201,
        )

    async def _installation_of(self, request: Request) -> Response:
        denied = self._app_auth(request)
        if denied:
            return denied
        p = request.path_params
        if "org" in p:
            found = [i for i in self.installations.values() if i.account.lower() == str(p["org"]).lower()]
        else:
            repo = f"{p['owner']}/{p['repo']}".lower()
            found = [i for i in self.installations.values() if repo in i.repos]
        if not found:
            return _error(404, "Not Found")
        return JSONResponse(self._installation_body(found[0]))

    def _installation_body(self, inst: Installation) -> dict[str, Any]:
        """An installation as GitHub describes it (every field its schema requires)."""
        api, created = "https://api.github.com", _iso(0)
        return {
            "id": inst.id,
            "account": _account(inst.account, inst.account_type),
            "app_id": int(self.app_id) if self.app_id.isdigit() else 0,
            "app_slug": "smith",
            "target_id": _id_of(inst.account),
            "target_type": inst.account_type,
            "single_file_name": None,
            "repository_selection": "selected",
            "access_tokens_url": f"{api}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{api}/installation/repositories",
            "html_url": f"https://github.com/settings/installations/{inst.id}",
            "permissions": {"administration": "write", "organization_self_hosted_runners": "write"},
            "events": ["workflow_job"],
            "created_at": created,
            "updated_at": created,
            "suspended_by": None,
            "suspended_at": None,
        }

    async def _jitconfig(self, request: Request) -> Response:
        scope, denied = self._authorized_scope(request)
        if denied:
            return denied
        body = request.state.rec.body
        if body["runner_group_id"] not in self.runner_groups:
            return _error(404, "Not Found")
        with self._lock:
            existing = self.runners.setdefault(scope, {})
            if any(r["name"] == body["name"] for r in existing.values()):
                return _error(409, f"Already exists - A runner with the name {body['name']} already exists.")
            runner_id = next(self._ids)
            runner = {
                "id": runner_id,
                "name": body["name"],
                "os": "unknown",
                "status": "offline",
                "busy": False,
                "ephemeral": True,
                "runner_group_id": body["runner_group_id"],
                "labels": [{"id": i + 1, "name": n, "type": "custom"} for i, n in enumerate(body["labels"])],
            }
            existing[runner_id] = runner
        encoded = self._encoded_jit_config(request, scope, runner)
        return JSONResponse({"runner": runner, "encoded_jit_config": encoded}, status_code=201)

    def _encoded_jit_config(self, request: Request, scope: str, runner: dict[str, Any]) -> str:
        """As GitHub encodes it: base64 of a JSON object mapping each file the runner writes into its own
        directory (``.runner``, ``.credentials``, ``.credentials_rsaparams``) to that file's content, base64."""
        secret = secrets.token_urlsafe(24)
        with self._lock:
            self.actions.credentials[secret] = (scope, runner["id"])
        service = f"{request.url.scheme}://{request.url.netloc}/_actions"
        name = scope.partition(":")[2]
        files = {
            ".runner": {
                "agentId": runner["id"],
                "agentName": runner["name"],
                "poolId": runner["runner_group_id"],
                "poolName": "Default",
                "serverUrl": service,
                "serverUrlV2": service,
                "useV2Flow": True,
                "gitHubUrl": f"https://github.com/{name}",
                "workFolder": request.state.rec.body.get("work_folder", "_work"),
                "ephemeral": True,
            },
            ".credentials": {
                "scheme": "OAuth",
                "data": {"clientId": str(uuid.uuid4()), "requireFipsCryptography": "False"},
            },
            ".credentials_rsaparams": {"d": secret},
        }
        encoded = {k: base64.b64encode(json.dumps(v).encode()).decode() for k, v in files.items()}
        return base64.b64encode(json.dumps(encoded).encode()).decode()

    async def _workflow_job(self, request: Request) -> Response:
        scope, denied = self._authorized_scope(request)
        if denied:
            return denied
        with self._lock:
            job = self.actions.jobs.get(int(request.path_params["job_id"]))
            if job is None or f"repo:{job.repo.lower()}" != scope:
                return _error(404, "Not Found")
            return JSONResponse(self.actions.job_body(job))

    async def _workflow_run(self, request: Request) -> Response:
        scope, denied = self._authorized_scope(request)
        if denied:
            return denied
        exclude = request.query_params.get("exclude_pull_requests") == "true"
        with self._lock:
            run = self.actions.runs.get(int(request.path_params["run_id"]))
            if run is None or f"repo:{run.repo.lower()}" != scope:
                return _error(404, "Not Found")
            return JSONResponse(run_body(run, status=self.actions.run_status(run), exclude_pull_requests=exclude))

    async def _create_status(self, request: Request) -> Response:
        """A commit status, kept in ``statuses`` (GitHub's 422 for a state outside its four is the spec check's)."""
        _, denied = self._authorized_scope(request)
        if denied:
            return denied
        body = json.loads(await request.body())
        p = request.path_params
        now = _iso(self.clock())
        with self._lock:
            status_id = next(self._ids)
            entry = {
                "url": f"https://api.github.com/repos/{p['owner']}/{p['repo']}/statuses/{p['sha']}",
                "avatar_url": None,
                "id": status_id,
                "node_id": base64.b64encode(f"04:StatusContext{status_id}".encode()).decode(),
                "state": body["state"],
                "description": body.get("description"),
                "target_url": body.get("target_url"),
                "context": body.get("context") or "default",
                "created_at": now,
                "updated_at": now,
                "creator": _account(f"app-{self.app_id}[bot]", "Bot"),
            }
            self.statuses.append({**entry, "repo": f"{p['owner']}/{p['repo']}", "sha": p["sha"]})
        return JSONResponse(entry, status_code=201)

    async def _check_run(self, request: Request) -> Response:
        """Create or update a check run (``github_checks.py``); 403 without the checks permission."""
        inst, denied = self._installation_auth(request)
        if denied:
            return denied
        scope, denied = self._scope(request, inst)
        if denied:
            return denied
        if inst is not None and not inst.checks:
            return _error(403, "Resource not accessible by integration")
        repo = scope.removeprefix("repo:")
        run_id = int(request.path_params.get("check_run_id") or 0)
        sent = json.loads(await request.body())
        status, body = self.checks.update(repo, run_id, sent) if run_id else self.checks.create(repo, sent)
        return _error(status, body["message"]) if status >= 400 else JSONResponse(body, status_code=status)

    async def _registration_token(self, request: Request) -> Response:
        _, denied = self._authorized_scope(request)
        if denied:
            return denied
        return JSONResponse(
            {"token": "A" + secrets.token_hex(14).upper(), "expires_at": _iso(self.clock() + 3600)}, status_code=201
        )

    async def _list_runners(self, request: Request) -> Response:
        scope, denied = self._authorized_scope(request)
        if denied:
            return denied
        name = request.query_params.get("name")
        with self._lock:
            found = [r for r in self.runners.get(scope, {}).values() if name is None or r["name"] == name]
        return JSONResponse({"total_count": len(found), "runners": found})

    async def _delete_runner(self, request: Request) -> Response:
        scope, denied = self._authorized_scope(request)
        if denied:
            return denied
        runner_id = int(request.path_params["runner_id"])
        with self._lock:
            runner = self.runners.get(scope, {}).get(runner_id)
            if runner is None:
                return _error(404, "Not Found")
            if runner["busy"]:
                return _error(422, f"Bad request - Runner {runner['name']} is still running a job")
            del self.runners[scope][runner_id]
        return Response(status_code=204)


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"message": message, "documentation_url": DOCS, "status": str(status)}, status_code=status, headers=headers
    )
