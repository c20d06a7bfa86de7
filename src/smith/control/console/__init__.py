"""The web console at ``/ui``: server-rendered pages (Jinja2, htmx vendored in ``static/``) behind operator login.

``mount(app, ...)`` adds its routes to the control plane's app. Pages poll small fragments (``hx-trigger``) for
live state; the job page's log follows the log pipeline through the control plane (``upstream.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from smith.adapters.redis.jobs import RedisJobs
from smith.control.console.session import COOKIE, Session, Sessions, check_csrf, same_origin
from smith.control.console.upstream import Upstream
from smith.control.console.views import FINAL, HERE, environment, hit_rate
from smith.control.service import ControlPlane, job_view
from smith.control.settings import ControlSettings
from smith.domain.jobs import JobState
from smith.errors import AuthError, SmithError
from smith.http import read_body

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send "Origin: null" on our own forms
    "Cache-Control": "no-store",
}
FORM_MAX_BYTES = 16 * 1024
STATES = [s.value for s in JobState]


class LoginRequired(Exception):
    pass


def mount(app: FastAPI, settings: ControlSettings, plane: ControlPlane, jobs: RedisJobs) -> Upstream:
    """Add the console's routes; returns the upstream reader, to be closed with the app."""
    env = environment()
    sessions = Sessions(
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else None, settings.console_session_ttl_seconds
    )
    upstream = Upstream(settings)
    classes = sorted(rc.name for rc in plane.classes)

    def page(name: str, request: Request, session: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(request_path=request.url.path, session=session, **ctx)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def operator(request: Request) -> Session:
        session = sessions.from_request(request)
        if session is None:
            raise LoginRequired
        return session

    async def form(request: Request) -> dict[str, str]:
        body = await read_body(request, FORM_MAX_BYTES)
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=10).items()}

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired) -> Response:
        if request.headers.get("hx-request"):  # a fragment's poll: have htmx load the login page
            return Response(status_code=401, headers={**HEADERS, "HX-Redirect": "/ui/login"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/ui/login?" + urlencode({"next": target}), 303, headers=HEADERS)

    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")

    # -- login ---------------------------------------------------------------------------------------------

    def safe_next(target: str | None) -> str:
        # Only a path of the console itself: never another site (no open redirect).
        if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
            return target
        return "/ui/jobs"

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/ui/jobs", 303)

    @app.get("/ui/login", include_in_schema=False)
    async def login_page(request: Request, next: str = "") -> Response:
        if sessions.from_request(request):
            return RedirectResponse(safe_next(next), 303)
        return page("login.html", request, None, error="", next=safe_next(next))

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        same_origin(request)
        fields = await form(request)
        try:
            value, session = sessions.login(fields.get("token", ""))
        except AuthError as exc:
            return page("login.html", request, None, 401, error=exc.message, next=safe_next(fields.get("next")))
        done = RedirectResponse(safe_next(fields.get("next")), 303, headers=HEADERS)
        done.set_cookie(
            COOKIE,
            value,
            max_age=max(1, int(session.expires_at - time.time())),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=settings.console_cookie_secure
            if settings.console_cookie_secure is not None
            else request.url.scheme == "https",
        )
        return done

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = operator(request)
        same_origin(request)
        check_csrf(session, (await form(request)).get("csrf") or request.headers.get("x-csrf-token"))
        done = RedirectResponse("/ui/login", 303, headers=HEADERS)
        done.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return done

    # -- jobs ----------------------------------------------------------------------------------------------

    def filters(state: str, runner_class: str, repo: str) -> dict[str, str]:
        return {
            "state": state if state in STATES else "",
            "runner_class": runner_class if runner_class in classes else "",
            "repo": repo.strip()[:256],
        }

    async def job_rows(f: dict[str, str], limit: int) -> list[Any]:
        found = await jobs.recent(
            limit=limit, state=f["state"] or None, repo=f["repo"] or None, runner_class=f["runner_class"] or None
        )
        return [job_view(j) for j in found]

    async def jobs_list(
        request: Request,
        state: str = "",
        runner_class: str = "",
        repo: str = "",
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        session = operator(request)
        f = filters(state, runner_class, repo)
        rows = request.url.path.endswith("/rows")  # the polled table body alone
        return page(
            "_job_rows.html" if rows else "jobs.html",
            request,
            session,
            jobs=await job_rows(f, limit),
            filters=f,
            query=urlencode({**f, "limit": limit}),
            states=STATES,
            classes=classes,
            now=time.time(),
        )

    app.add_api_route("/ui/jobs", jobs_list, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/jobs/rows", jobs_list, methods=["GET"], include_in_schema=False)

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    async def job_page(request: Request, job_id: str) -> Response:
        session = operator(request)
        job = job_view(await jobs.get(job_id))
        return page("job.html", request, session, job=job, now=time.time(), logs=bool(upstream.logs_url))

    @app.get("/ui/jobs/{job_id}/detail", include_in_schema=False)
    async def job_detail(request: Request, job_id: str) -> Response:
        session = operator(request)
        job = job_view(await jobs.get(job_id))
        # 286 tells htmx to stop polling: a final job changes no more.
        return page("_job_detail.html", request, session, 286 if job.state in FINAL else 200, job=job, now=time.time())

    @app.get("/ui/jobs/{job_id}/log", include_in_schema=False)
    async def job_log(request: Request, job_id: str, after: int = Query(0, ge=0, lt=2**63)) -> Response:
        session = operator(request)
        await jobs.get(job_id)  # 404 for a job that does not exist
        try:
            got = await upstream.log_page(job_id, after, session.operator)
            error = ""
        except SmithError as exc:
            got, error = {"lines": [], "next_after": after, "complete": False}, exc.message
        return page(
            "_log.html",
            request,
            session,
            job_id=job_id,
            lines=got["lines"],
            next_after=got["next_after"],
            complete=got["complete"],
            error=error,
        )

    @app.post("/ui/jobs/{job_id}/cancel", include_in_schema=False)
    async def job_cancel(request: Request, job_id: str) -> Response:
        session = operator(request)
        same_origin(request)
        check_csrf(session, (await form(request)).get("csrf") or request.headers.get("x-csrf-token"))
        await jobs.cancel(job_id, f"cancelled by operator ({session.operator}, console)")
        return RedirectResponse(f"/ui/jobs/{job_id}", 303, headers=HEADERS)

    # -- hosts, queue, cache -------------------------------------------------------------------------------

    def polled(path: str, title: str, every: str, load: Callable[[], Any]) -> None:
        """A page at ``path`` whose table (``path/table``, template ``_<name>.html``) is polled ``every``."""
        fragment = f"_{path.rsplit('/', 1)[-1]}.html"

        async def full(request: Request) -> Response:
            session = operator(request)
            ctx: dict[str, Any] = dict(fragment=fragment, title=title, every=every, now=time.time())
            return page("polled.html", request, session, **ctx, **await load())

        async def part(request: Request) -> Response:
            session = operator(request)
            return page(fragment, request, session, now=time.time(), **await load())

        app.add_api_route(path, full, methods=["GET"], include_in_schema=False)
        app.add_api_route(path + "/table", part, methods=["GET"], include_in_schema=False)

    async def hosts() -> dict[str, Any]:
        return {"hosts": sorted(await jobs.hosts_alive(settings.host_ttl_seconds), key=lambda h: h["agent_id"])}

    async def queue() -> dict[str, Any]:
        return {"health": await plane.queue_health()}

    async def cache() -> dict[str, Any]:
        try:
            usage = await upstream.cache_usage("console")
            rows = sorted(usage.items(), key=lambda kv: -int(kv[1].get("bytes", 0)))
            return {"orgs": [(org, u, hit_rate(u)) for org, u in rows], "error": ""}
        except SmithError as exc:
            return {"orgs": [], "error": exc.message}

    polled("/ui/hosts", "Hosts", "3s", hosts)
    polled("/ui/queue", "Queue", "3s", queue)
    polled("/ui/cache", "Cache", "10s", cache)
    return upstream
