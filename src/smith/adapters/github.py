"""GitHub App client: installation tokens and ephemeral runner credentials, on httpx.

What GitHub's REST API (version ``2022-11-28``) says, and what this module does with it:

* **App JWT.** An App authenticates as itself with a JWT signed RS256 by its private key: ``iss`` = the App's
  id, ``iat`` = now - 60 s (GitHub allows for clock drift), ``exp`` at most 10 minutes after now. Only the
  ``/app/...`` and ``.../installation`` endpoints take it; we mint a new one per call (one RSA signature).
* **Installation token.** ``POST /app/installations/{id}/access_tokens`` -> ``201 {token, expires_at,
  permissions, repository_selection}``; the token lives one hour. It is cached per installation and renewed
  ``token_refresh_margin`` seconds (5 min) before ``expires_at``; concurrent callers wait on one refresh (a
  lock per installation). A 401 on a later call drops that token and the call is retried once.
* **Finding the installation.** ``GET /repos/{owner}/{repo}/installation`` and ``GET /orgs/{org}/installation``
  (App JWT) -> ``200 {id, account: {login, ...}, app_id, ...}``; 404 when the App is not installed there.
  Used when the webhook carried no ``installation.id``; answers are cached for ``installation_cache_seconds``.
* **JIT runner config.** ``POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig`` or
  ``POST /orgs/{org}/actions/runners/generate-jitconfig`` with ``{name, runner_group_id, labels, work_folder}``
  (``name``, ``runner_group_id`` and 1..100 ``labels`` are required; ``work_folder`` defaults to ``_work``)
  -> ``201 {runner: {id, name, os, status, busy, labels, runner_group_id, ephemeral}, encoded_jit_config}``.
  The runner exists (offline) from that moment; ``run.sh --jitconfig <encoded_jit_config>`` runs one job
  and GitHub removes it afterwards. A name already registered in that scope answers ``409 Already exists``:
  since our names are unique per job attempt, that is our own earlier request whose answer was lost (a
  timeout, a 5xx after the fact), so the stale runner is deleted and the config generated once more.
  404 = no such repo/org/group for this installation, 422 = invalid body, 403 = not allowed (e.g. GitHub's
  hosted runner group).
* **Registration token.** ``POST /repos/{owner}/{repo}/actions/runners/registration-token`` or
  ``POST /orgs/{org}/actions/runners/registration-token`` (no body) -> ``201 {token, expires_at}``; valid one
  hour, for ``config.sh --url <repo or org URL> --token <token> --ephemeral``.
* **Removing a runner.** ``DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}`` or
  ``DELETE /orgs/{org}/actions/runners/{runner_id}`` -> 204 (404 if gone, 422 if it is busy). Finding one by
  name: ``GET .../actions/runners?name=<name>`` -> ``200 {total_count, runners: [...]}``. A job cancelled before
  its VM ran leaves a registered offline JIT runner otherwise.
* **Workflow runs.** ``GET /repos/{owner}/{repo}/actions/runs/{run_id}`` (needs "Actions: read") -> ``200`` a
  workflow run: ``event``, ``head_branch``, ``repository`` and ``head_repository`` (a fork's for a fork's pull
  request) and ``pull_requests`` (``[]`` for a fork's; for other events, open pull requests that merely share the
  head). What the cache scope of a job needs (``run_origin``); cached per run id, since none of it changes.
* **Errors and limits.** Error bodies are ``{message, documentation_url[, status, errors]}``. The primary rate
  limit answers 403 or 429 with ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` (epoch seconds); a
  secondary limit answers 403/429 with ``retry-after`` (seconds), or with neither header (wait >= 60 s). We wait
  what GitHub says when that is at most ``max_rate_limit_wait``, else raise :class:`smith.errors.RateLimited`
  carrying ``retry_after``. 5xx and connection errors are retried with exponential backoff and jitter, up to
  ``max_attempts``. Any other 4xx raises :class:`GitHubError` (an ``UpstreamError``, not retryable) with
  GitHub's ``message``.

Every request sends ``Accept: application/vnd.github+json``, ``X-GitHub-Api-Version: 2022-11-28`` and a
User-Agent (GitHub refuses requests without one). Tokens, JWTs and JIT configs never reach a log line.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from pydantic import SecretStr

from smith import __version__ as _smith_version
from smith.domain.cache import RunOrigin
from smith.domain.jobs import Job
from smith.errors import ConfigError, InvalidInput, RateLimited, SmithError, Unavailable, UpstreamError
from smith.logging import get_logger
from smith.retry import RetryPolicy, retry_after
from smith.wire.agent import RunnerCredential

log = get_logger("smith.github")

API_VERSION = "2022-11-28"
USER_AGENT = f"smith/{_smith_version} (+self-hosted GitHub Actions runners)"
RunnerMode = Literal["jit", "registration"]

_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class GitHubError(UpstreamError):
    """GitHub answered with an error. ``status`` is its HTTP status, ``github_message`` its ``message``."""

    def __init__(self, message: str, *, status: int, github_message: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.github_message = github_message


@dataclass(frozen=True)
class RunnerScope:
    """Where a runner registers: a repository (``owner/name``) or an organisation."""

    kind: Literal["repo", "org"]
    name: str

    @classmethod
    def repo(cls, full_name: str) -> RunnerScope:
        owner, _, repo = full_name.partition("/")
        if not (_OWNER.match(owner) and _REPO.match(repo)) or repo in (".", ".."):
            raise InvalidInput(f"not a GitHub repository name (owner/name): {full_name!r}")
        return cls("repo", f"{owner}/{repo}")

    @classmethod
    def org(cls, login: str) -> RunnerScope:
        if not _OWNER.match(login):
            raise InvalidInput(f"not a GitHub organisation name: {login!r}")
        return cls("org", login)

    @property
    def api_prefix(self) -> str:
        return f"/repos/{self.name}" if self.kind == "repo" else f"/orgs/{self.name}"

    def web_url(self, web_base: str) -> str:
        return f"{web_base.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class JitConfig:
    runner_id: int
    runner_name: str
    encoded_jit_config: str

    def __repr__(self) -> str:  # the config is a credential: keep it out of tracebacks and logs
        return f"JitConfig(runner_id={self.runner_id}, runner_name={self.runner_name!r}, encoded_jit_config=***)"


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    expires_at: str

    def __repr__(self) -> str:
        return f"RegistrationToken(token=***, expires_at={self.expires_at!r})"


@dataclass
class _Token:
    value: str
    expires_at: float  # epoch seconds


class _AppAuth:
    """Marker: authenticate this call with the App JWT."""


APP = _AppAuth()
Auth = _AppAuth | int  # the App itself, or an installation id


def parse_timestamp(text: str) -> float:
    """GitHub's ISO 8601 timestamps (``2016-07-11T22:14:10Z``, ``2020-01-22T12:13:35.123-08:00``) -> epoch."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError) as exc:
        raise UpstreamError(f"GitHub sent an unreadable timestamp: {text!r}") from exc


def web_url_for(api_url: str) -> str:
    """``https://api.github.com`` -> ``https://github.com``; GitHub Enterprise ``https://h/api/v3`` -> ``https://h``."""
    url = api_url.rstrip("/")
    if url.endswith("/api/v3"):
        return url[: -len("/api/v3")]
    return url.replace("://api.", "://", 1)


def load_private_key(pem: str | bytes) -> RSAPrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("the GitHub App private key is not a readable unencrypted PEM key") from exc
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError("the GitHub App private key must be an RSA key (GitHub signs App JWTs with RS256)")
    return key


class GitHubApp:
    """An App's view of GitHub: installation tokens, runner credentials. Implements ``ports.RunnerCredentials``.

    ``clock`` (wall-clock epoch seconds) and ``sleep`` are injectable so tests drive expiry and back-off without
    waiting; ``transport`` is passed to httpx (``httpx.ASGITransport(fake.app)`` in tests).
    """

    def __init__(
        self,
        app_id: str | int,
        private_key: str | bytes | RSAPrivateKey,
        *,
        api_url: str = "https://api.github.com",
        web_url: str | None = None,
        mode: RunnerMode = "jit",
        org_runners: bool = False,
        runner_group_id: int = 1,
        default_installation_id: int | None = None,
        work_folder: str = "_work",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_rate_limit_wait: float = 60.0,
        token_refresh_margin: float = 300.0,
        installation_cache_seconds: float = 600.0,
        jit_per_minute: float = 170.0,
    ) -> None:
        if mode not in ("jit", "registration"):
            raise ConfigError(f"runner mode must be 'jit' or 'registration', not {mode!r}")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        self.app_id = str(app_id)
        self._key = private_key if isinstance(private_key, RSAPrivateKey) else load_private_key(private_key)
        self.api_url = api_url.rstrip("/")
        self.web_url = (web_url or web_url_for(self.api_url)).rstrip("/")
        self.mode: RunnerMode = mode
        self.org_runners = org_runners
        self.runner_group_id = runner_group_id
        self.default_installation_id = default_installation_id
        self.work_folder = work_folder
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.backoff = RetryPolicy(max_attempts - 1, base=backoff_base, max=backoff_max, jitter=0.5)
        self.max_rate_limit_wait = max_rate_limit_wait
        # GitHub's secondary limit allows roughly 180 JIT configs a minute: stay under it, per process.
        self.jit_interval = 60.0 / jit_per_minute if jit_per_minute > 0 else 0.0
        self._jit_next = 0.0
        self.scopes_used: dict[RunnerScope, int] = {}  # where runners were minted: what the sweep looks at
        self.token_refresh_margin = token_refresh_margin
        self.installation_cache_seconds = installation_cache_seconds
        self._tokens: dict[int, _Token] = {}
        self._token_locks: dict[int, asyncio.Lock] = {}
        self._installations: dict[RunnerScope, tuple[int, float]] = {}
        self._runs: dict[int, RunOrigin] = {}  # run id -> its origin (never changes), the newest RUNS_CACHED
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION},
        )
        self._http.headers["User-Agent"] = USER_AGENT

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GitHubApp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- authentication ----------------------------------------------------------------------------------

    def app_jwt(self) -> str:
        """A fresh App JWT: ``iat`` 60 s in the past (clock drift), ``exp`` 9 minutes ahead (GitHub caps 10)."""
        now = int(self._clock())
        return jwt.encode({"iat": now - 60, "exp": now + 540, "iss": self.app_id}, self._key, algorithm="RS256")

    async def installation_token(self, installation_id: int) -> str:
        """The installation's access token, from the cache unless it expires within the refresh margin."""
        cached = self._fresh_token(installation_id)
        if cached is not None:
            return cached
        lock = self._token_locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            cached = self._fresh_token(installation_id)
            if cached is not None:
                return cached
            resp = await self._request("POST", f"/app/installations/{installation_id}/access_tokens", APP)
            data = _json(resp)
            try:
                token = _Token(str(data["token"]), parse_timestamp(str(data["expires_at"])))
            except KeyError as exc:
                raise UpstreamError(f"GitHub's installation token answer lacks {exc}") from exc
            self._tokens[installation_id] = token
            log.info("installation token minted", installation_id=installation_id, expires_at=data["expires_at"])
            return token.value

    def _fresh_token(self, installation_id: int) -> str | None:
        token = self._tokens.get(installation_id)
        if token is not None and self._clock() < token.expires_at - self.token_refresh_margin:
            return token.value
        return None

    async def installation_for(self, scope: RunnerScope) -> int:
        """The installation id of this App on a repository or organisation (cached)."""
        hit = self._installations.get(scope)
        if hit is not None and self._clock() < hit[1]:
            return hit[0]
        resp = await self._request("GET", f"{scope.api_prefix}/installation", APP)
        data = _json(resp)
        if not isinstance(data.get("id"), int):
            raise UpstreamError("GitHub's installation answer has no id")
        installation_id = int(data["id"])
        self._installations[scope] = (installation_id, self._clock() + self.installation_cache_seconds)
        return installation_id

    # -- runners -----------------------------------------------------------------------------------------

    async def generate_jit_config(
        self, scope: RunnerScope, installation_id: int, *, name: str, labels: list[str]
    ) -> JitConfig:
        """Register an ephemeral runner and get its one-time config; a stale runner of that name is replaced."""
        if not 1 <= len(labels) <= 100:
            raise InvalidInput(f"a JIT runner needs 1 to 100 labels, not {len(labels)}")
        body = {
            "name": name,
            # Runner groups are an organisation's: a repository's runners are always in its Default group (1).
            "runner_group_id": self.runner_group_id if scope.kind == "org" else 1,
            "labels": labels,
            "work_folder": self.work_folder,
        }
        path = f"{scope.api_prefix}/actions/runners/generate-jitconfig"
        await self._pace_jit()
        try:
            resp = await self._request("POST", path, installation_id, json=body)
        except GitHubError as exc:
            if exc.status != 409:
                raise
            # Our own earlier request whose answer was lost, since names are unique per deployment, job and lease.
            # Never delete it while it runs a job (it does GitHub's work; GitHub would refuse anyway: 422).
            found = await self.find_runner_entry(scope, installation_id, name)
            if found is not None and found.get("busy"):
                raise GitHubError(
                    f"a busy runner is already registered as {name} in {scope.name}", status=409, retryable=True
                ) from exc
            log.warning("runner name already registered: replacing the stale runner", scope=scope.name, name=name)
            if found is not None:
                await self.remove_runner(scope, installation_id, int(found["id"]))
            resp = await self._request("POST", path, installation_id, json=body)
        data = _json(resp)
        try:
            runner = data["runner"]
            return JitConfig(int(runner["id"]), str(runner.get("name", name)), str(data["encoded_jit_config"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError("GitHub's JIT config answer lacks runner.id or encoded_jit_config") from exc

    async def _pace_jit(self) -> None:
        """Space JIT requests ``jit_interval`` apart (a slot each, taken in call order)."""
        now = self._clock()
        slot = max(now, self._jit_next)
        self._jit_next = slot + self.jit_interval
        if slot > now:
            await self._sleep(slot - now)

    async def registration_token(self, scope: RunnerScope, installation_id: int) -> RegistrationToken:
        resp = await self._request("POST", f"{scope.api_prefix}/actions/runners/registration-token", installation_id)
        data = _json(resp)
        try:
            return RegistrationToken(str(data["token"]), str(data["expires_at"]))
        except KeyError as exc:
            raise UpstreamError(f"GitHub's registration token answer lacks {exc}") from exc

    async def find_runner(self, scope: RunnerScope, installation_id: int, name: str) -> int | None:
        """The id of the runner registered under this exact name, or None."""
        found = await self.find_runner_entry(scope, installation_id, name)
        return None if found is None else int(found["id"])

    async def find_runner_entry(self, scope: RunnerScope, installation_id: int, name: str) -> dict[str, Any] | None:
        """GitHub's record of the runner registered under this exact name (id, status, busy...), or None."""
        resp = await self._request(
            "GET", f"{scope.api_prefix}/actions/runners", installation_id, params={"name": name, "per_page": 100}
        )
        for runner in _json(resp).get("runners") or []:
            if isinstance(runner, dict) and runner.get("name") == name and isinstance(runner.get("id"), int):
                return dict(runner)
        return None

    async def list_runners(self, scope: RunnerScope, installation_id: int, max_pages: int = 50) -> list[dict[str, Any]]:
        """Every runner registered in ``scope`` (100 a page)."""
        out: list[dict[str, Any]] = []
        for page in range(1, max_pages + 1):
            params = {"per_page": 100, "page": page}
            resp = await self._request("GET", f"{scope.api_prefix}/actions/runners", installation_id, params=params)
            runners = [r for r in _json(resp).get("runners") or [] if isinstance(r, dict)]
            out += runners
            if len(runners) < 100:
                break
        return out

    def minted_scopes(self) -> dict[str, int]:
        """Where this client minted runners: ``repo:owner/name`` or ``org:login`` -> installation id."""
        return {f"{scope.kind}:{scope.name}": inst for scope, inst in self.scopes_used.items()}

    async def minted_runners(self, scopes: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """The runners registered in ``scopes`` (``minted_scopes``' form; default: this client's own), each with
        ``scope`` and ``installation_id`` added, for the sweep. A scope GitHub will not list is skipped."""
        out = []
        for key, installation_id in (self.minted_scopes() if scopes is None else scopes).items():
            kind, _, name = key.partition(":")
            try:
                scope = RunnerScope.repo(name) if kind == "repo" else RunnerScope.org(name)
                runners = await self.list_runners(scope, installation_id)
            except SmithError as exc:
                log.warning("could not list a scope's runners", scope=key, error=exc.message)
                continue
            out += [{**runner, "scope": scope, "installation_id": installation_id} for runner in runners]
        return out

    async def remove_listed(self, runner: dict[str, Any]) -> bool:
        """Remove a runner ``minted_runners`` listed; False if GitHub no longer has it. 422 if it is busy."""
        return await self.remove_runner(runner["scope"], int(runner["installation_id"]), int(runner["id"]))

    async def remove_runner(self, scope: RunnerScope, installation_id: int, runner_id: int) -> bool:
        """Deregister a runner. False when GitHub no longer knows it (it ran its job, or was removed)."""
        try:
            await self._request("DELETE", f"{scope.api_prefix}/actions/runners/{int(runner_id)}", installation_id)
        except GitHubError as exc:
            if exc.status == 404:
                return False
            raise
        log.info("runner removed", scope=scope.name, runner_id=runner_id)
        return True

    async def workflow_job(self, repo: str, job_id: int | str, installation_id: int) -> dict[str, Any]:
        """GitHub's view of one job (``GET /repos/{o}/{r}/actions/jobs/{id}``): status, conclusion, runner."""
        scope = RunnerScope.repo(repo)
        return dict(
            _json(await self._request("GET", f"{scope.api_prefix}/actions/jobs/{int(job_id)}", installation_id))
        )

    async def workflow_run(self, repo: str, run_id: int, installation_id: int) -> dict[str, Any]:
        """GitHub's view of one workflow run (``GET /repos/{o}/{r}/actions/runs/{id}``)."""
        scope = RunnerScope.repo(repo)
        return _json(await self._request("GET", f"{scope.api_prefix}/actions/runs/{int(run_id)}", installation_id))

    async def run_origin(self, job: Job) -> RunOrigin | None:
        """Why the job's run ran and where its code comes from (cached per run id); None without a run id."""
        if not job.repo or not job.run_id:
            return None
        hit = self._runs.get(job.run_id)
        if hit is not None:
            return hit
        scope = RunnerScope.repo(job.repo)
        body = await self.workflow_run(job.repo, job.run_id, await self.installation_for_job(job, scope))
        origin = self._runs[job.run_id] = run_origin_of(body, job)
        while len(self._runs) > RUNS_CACHED:
            del self._runs[next(iter(self._runs))]
        return origin

    async def commit_status(
        self, repo: str, sha: str, state: str, context: str, description: str, installation_id: int = 0
    ) -> None:
        """``POST /repos/{o}/{r}/statuses/{sha}``: a commit status (pending, success, failure, error)."""
        scope = RunnerScope.repo(repo)
        installation = installation_id or await self.installation_for(scope)
        body = {"state": state, "context": context, "description": description}
        await self._request("POST", f"{scope.api_prefix}/statuses/{sha}", installation, json=body)
        log.info("commit status", repo=repo, sha=sha[:12], state=state, context=context)

    async def create_check_run(
        self, repo: str, head_sha: str, name: str, fields: dict[str, Any], installation_id: int = 0
    ) -> int:
        """``POST /repos/{o}/{r}/check-runs`` (needs the App's "Checks: write"; 403 without): the new run's id."""
        scope = RunnerScope.repo(repo)
        installation = installation_id or await self.installation_for(scope)
        body = {"name": name, "head_sha": head_sha, **fields}
        resp = await self._request("POST", f"{scope.api_prefix}/check-runs", installation, json=body)
        check_id = int(_json(resp)["id"])
        log.info("check run", repo=repo, sha=head_sha[:12], name=name, check_run=check_id, status=fields.get("status"))
        return check_id

    async def update_check_run(
        self, repo: str, check_run_id: int, fields: dict[str, Any], installation_id: int = 0
    ) -> None:
        """``PATCH /repos/{o}/{r}/check-runs/{id}``: its status, conclusion, output."""
        scope = RunnerScope.repo(repo)
        installation = installation_id or await self.installation_for(scope)
        await self._request("PATCH", f"{scope.api_prefix}/check-runs/{int(check_run_id)}", installation, json=fields)

    async def remove_runner_named(self, scope: RunnerScope, installation_id: int, name: str) -> bool:
        runner_id = await self.find_runner(scope, installation_id, name)
        if runner_id is None:
            return False
        return await self.remove_runner(scope, installation_id, runner_id)

    # -- the RunnerCredentials port ----------------------------------------------------------------------

    def scope_for(self, job: Job) -> RunnerScope:
        """Org scope when ``org_runners`` (or the job has no repo), else the job's repository."""
        if self.org_runners or not job.repo:
            org = job.org or job.repo.partition("/")[0]
            if not org:
                raise InvalidInput(f"job {job.id} names neither a repository nor an organisation")
            return RunnerScope.org(org)
        return RunnerScope.repo(job.repo)

    async def installation_for_job(self, job: Job, scope: RunnerScope) -> int:
        if job.installation_id:
            return job.installation_id
        if self.default_installation_id:
            return self.default_installation_id
        return await self.installation_for(scope)

    @staticmethod
    def labels_for(job: Job) -> list[str]:
        """The job's ``runs-on`` labels, once each (case-insensitively), in order: exactly what the job asked
        for. GitHub gives a queued job to any idle runner whose labels include all of the job's, so a runner with
        more labels (its class's name, say) would also take smaller jobs and leave the one it was made for."""
        seen: set[str] = set()
        labels = []
        for label in job.labels:
            if label and label.lower() not in seen:
                seen.add(label.lower())
                labels.append(label)
        return labels

    async def for_job(self, job: Job, runner_name: str) -> RunnerCredential:
        scope = self.scope_for(job)
        installation_id = await self.installation_for_job(job, scope)
        if self.mode == "registration":
            reg = await self.registration_token(scope, installation_id)
            return RunnerCredential(
                kind="registration",
                value=reg.token,
                url=scope.web_url(self.web_url),
                runner_name=runner_name,
                expires_at=reg.expires_at,
            )
        self.scopes_used[scope] = installation_id
        jit = await self.generate_jit_config(scope, installation_id, name=runner_name, labels=self.labels_for(job))
        log.info("jit runner registered", job_id=job.id, scope=scope.name, runner_id=jit.runner_id)
        return RunnerCredential(
            kind="jit", value=jit.encoded_jit_config, url=scope.web_url(self.web_url), runner_name=jit.runner_name
        )

    async def job_state(self, job: Job) -> tuple[str, str, str] | None:
        """GitHub's view of a job from the jobs API (needs "Actions: read"): status, conclusion, runner."""
        if not job.repo or not job.id.isdigit():
            return None
        scope = RunnerScope.repo(job.repo)
        seen = await self.workflow_job(job.repo, job.id, await self.installation_for_job(job, scope))
        return str(seen.get("status") or ""), str(seen.get("conclusion") or ""), str(seen.get("runner_name") or "")

    async def release(self, job: Job, runner_name: str) -> bool:
        """Remove the runner registered for a job that will not run (cancelled before its VM started)."""
        if self.mode != "jit":
            return False  # a registration token registers nothing until config.sh runs
        scope = self.scope_for(job)
        return await self.remove_runner_named(scope, await self.installation_for_job(job, scope), runner_name)

    # -- HTTP with retries -------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        auth: Auth,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One API call: retried on 5xx/connection errors, waits out short rate limits, re-mints on 401."""
        failures = 0
        rate_waits = 0
        reauthed = False
        while True:
            if isinstance(auth, _AppAuth):
                credential = self.app_jwt()
            else:
                credential = await self.installation_token(auth)
            headers = {"Authorization": f"Bearer {credential}"}
            try:
                resp = await self._http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as exc:
                failures += 1
                if failures >= self.max_attempts:
                    raise Unavailable(f"GitHub unreachable ({method} {path}): {type(exc).__name__}") from exc
                await self._backoff(failures, method, path, type(exc).__name__)
                continue
            status = resp.status_code
            if status < 300:
                return resp
            if status >= 500:
                failures += 1
                if failures >= self.max_attempts:
                    raise _error(resp, method, path, retryable=True)
                await self._backoff(failures, method, path, status)
                continue
            wait = self._rate_limit_wait(resp)
            if wait is not None:
                rate_waits += 1
                if wait > self.max_rate_limit_wait or rate_waits > self.max_attempts:
                    raise RateLimited(
                        f"GitHub rate limit on {method} {path}: retry in {wait:.0f}s", retry_after=max(wait, 1.0)
                    )
                log.warning("github rate limited; waiting", method=method, path=path, wait_seconds=round(wait, 1))
                await self._sleep(wait)
                continue
            if status == 401 and not isinstance(auth, _AppAuth) and not reauthed:
                reauthed = True
                token = self._tokens.get(auth)
                if token is not None and token.value == credential:
                    del self._tokens[auth]
                log.warning("installation token refused (401); minting a new one", installation_id=auth)
                continue
            raise _error(resp, method, path, retryable=False)

    async def _backoff(self, failures: int, method: str, path: str, why: object) -> None:
        delay = self.backoff.delay(failures, self._rng)
        log.warning("github call failed; retrying", method=method, path=path, why=str(why), retry_in=round(delay, 2))
        await self._sleep(delay)

    def _rate_limit_wait(self, resp: httpx.Response) -> float | None:
        """Seconds GitHub asks us to wait, or None when this 4xx is not a rate limit."""
        if resp.status_code not in (403, 429):
            return None
        h = resp.headers
        wait = retry_after(h.get("retry-after"), self._clock())
        if wait is not None:
            return wait
        if h.get("x-ratelimit-remaining") == "0":
            reset = _number(h.get("x-ratelimit-reset"))
            if reset is not None:
                return max(0.0, reset - self._clock()) + 1.0  # the reset second itself, plus a margin
        message = _message(resp).lower()
        if resp.status_code == 429 or "rate limit" in message:
            return 60.0  # secondary limit without a header: GitHub says wait at least a minute
        return None


# -- helpers -------------------------------------------------------------------------------------------------


RUNS_CACHED = 4096


def run_origin_of(run: dict[str, Any], job: Job) -> RunOrigin:
    """A workflow run's origin from GitHub's answer. ``pull_requests`` counts only for pull_request* events, and
    then the one whose head is the run's branch (GitHub lists every open pull request from that head)."""
    repo = _full_name(run.get("repository")) or job.repo
    head_branch = str(run.get("head_branch") or job.head_branch)
    event = str(run.get("event") or "")
    number, base = 0, ""
    if event.startswith("pull_request"):
        prs = [p for p in run.get("pull_requests") or [] if isinstance(p, dict) and isinstance(p.get("number"), int)]
        mine = [p for p in prs if (p.get("head") or {}).get("ref") == head_branch] or prs
        if mine:
            number, base = int(mine[0]["number"]), str((mine[0].get("base") or {}).get("ref") or "")
    head_repo = _full_name(run.get("head_repository")) or repo
    return RunOrigin(event, repo, head_repo, head_branch, number, base)


def _full_name(repository: Any) -> str:
    return str(repository.get("full_name") or "") if isinstance(repository, dict) else ""


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as exc:
        raise UpstreamError(f"GitHub answered {resp.status_code} with a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamError(f"GitHub answered {resp.status_code} with JSON that is not an object")
    return data


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return ""


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _error(resp: httpx.Response, method: str, path: str, *, retryable: bool) -> GitHubError:
    message = _message(resp)
    return GitHubError(
        f"GitHub answered {resp.status_code} to {method} {path}: {message or resp.reason_phrase}",
        status=resp.status_code,
        github_message=message,
        retryable=retryable,
    )


class GitHubAppSettings(Protocol):
    """The settings fields ``from_settings`` reads (``smith.control.settings.ControlSettings`` has them)."""

    github_api_url: str
    github_app_id: str | None
    github_app_private_key: SecretStr | None
    github_app_private_key_path: str | None
    github_installation_id: int | None
    github_runner_mode: Literal["jit", "registration"]
    github_runner_group_id: int
    github_org_runners: bool
    github_jit_per_minute: float


def from_settings(settings: GitHubAppSettings, **kw: Any) -> GitHubApp | None:
    """The App client the settings describe, or None when no App is configured (no ``SMITH_GITHUB_APP_ID``)."""
    if not settings.github_app_id:
        return None
    if settings.github_app_private_key is not None:
        pem = settings.github_app_private_key.get_secret_value()
    elif settings.github_app_private_key_path:
        path = Path(settings.github_app_private_key_path).expanduser()
        try:
            pem = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the GitHub App private key at {path}: {exc.strerror}") from exc
    else:
        raise ConfigError("SMITH_GITHUB_APP_ID is set but no private key (SMITH_GITHUB_APP_PRIVATE_KEY[_PATH])")
    mode = settings.github_runner_mode
    if mode not in ("jit", "registration"):
        raise ConfigError(f"SMITH_GITHUB_RUNNER_MODE must be 'jit' or 'registration', not {mode!r}")
    return GitHubApp(
        settings.github_app_id,
        pem,
        api_url=settings.github_api_url,
        mode="jit" if mode == "jit" else "registration",
        org_runners=settings.github_org_runners,
        runner_group_id=settings.github_runner_group_id,
        default_installation_id=settings.github_installation_id,
        jit_per_minute=settings.github_jit_per_minute,
        **kw,
    )


__all__ = [
    "APP",
    "GitHubApp",
    "GitHubAppSettings",
    "GitHubError",
    "JitConfig",
    "RegistrationToken",
    "RunnerScope",
    "from_settings",
    "load_private_key",
    "parse_timestamp",
    "web_url_for",
]
