"""The web console over plain HTTP: login and sessions, CSRF, escaping, each page, the log proxy.
(tests/control/test_console_browser.py drives it in a real Chromium.)"""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie

import httpx
import pytest

from smith import tokens
from smith.control.console.session import COOKIE, Sessions
from tests.control.conftest import OPERATOR_SECRET, Control, agent_token, operator_token, queued_payload
from tests.control.console_support import PlayedAgent, console, logs_url  # noqa: F401 (fixtures)

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def login(control: Control, token: str | None = None) -> httpx.Response:
    return httpx.post(control.url + "/ui/login", data={"token": token or operator_token(), "next": "/ui/hosts"})


def session_client(control: Control) -> httpx.Client:
    got = login(control)
    assert got.status_code == 303, got.text
    return httpx.Client(base_url=control.url, cookies={COOKIE: got.cookies[COOKIE]}, timeout=30)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


def test_every_page_needs_a_login(control: Control) -> None:
    for path in ("/ui/jobs", "/ui/jobs/rows", "/ui/hosts", "/ui/queue/table", "/ui/cache", "/ui/jobs/1/log"):
        r = httpx.get(control.url + path)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next="), path
    polled = httpx.get(control.url + "/ui/jobs/rows", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["hx-redirect"] == "/ui/login"
    assert httpx.get(control.url + "/ui/login").status_code == 200
    assert httpx.get(control.url + "/ui/static/htmx.min.js").status_code == 200  # the login page needs it


def test_only_an_operator_token_logs_in(control: Control) -> None:
    stranger = tokens.mint("other-secret-0123456789abcdef0123456789", scope="operator", subject="x", ttl_seconds=60)
    for bad in ("not-a-token", agent_token("host-a"), stranger):
        r = login(control, bad)
        assert r.status_code == 401 and COOKIE not in r.cookies
        assert 'id="login-error"' in r.text


def test_the_session_cookie_is_httponly_strict_scoped_and_not_a_token(control: Control) -> None:
    got = login(control, operator_token(ttl=600))
    assert got.status_code == 303 and got.headers["location"] == "/ui/hosts"
    cookie = SimpleCookie(got.headers["set-cookie"])[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "strict" and cookie["path"] == "/ui"
    assert not cookie["secure"]  # plain HTTP here; Secure over HTTPS (below)
    assert 0 < int(cookie["max-age"]) <= 600  # never outlives the operator token it was made from
    with control.client(cookie.value) as api:  # the cookie is no operator token
        assert api.get("/v1/jobs").status_code in (401, 403)
    secure = httpx.post(
        control.url + "/ui/login", data={"token": operator_token()}, headers={"X-Forwarded-Proto": "https"}
    )
    assert SimpleCookie(secure.headers["set-cookie"])[COOKIE]["secure"]  # a TLS proxy on this host said https


def test_secure_cookie_when_configured(control_factory) -> None:  # type: ignore[no-untyped-def]
    control = control_factory(console_cookie_secure=True)
    cookie = SimpleCookie(login(control).headers["set-cookie"])[COOKIE]
    assert cookie["secure"]


def test_an_expired_or_forged_session_is_refused(control: Control) -> None:
    sessions = Sessions(OPERATOR_SECRET, 3600)
    assert sessions._key is not None
    old = tokens.mint(sessions._key, scope="console", subject="x", ttl_seconds=60, now=time.time() - 3600, sid="s")
    guess = "guessed-secret-0123456789abcdef0123456789"
    forged = tokens.mint(guess, scope="console", subject="x", ttl_seconds=60, sid="s")
    for value in (old, forged, operator_token()):  # an operator token is no session cookie either
        r = httpx.get(control.url + "/ui/jobs", cookies={COOKIE: value})
        assert r.status_code == 303, value


def test_login_from_another_site_and_open_redirects_are_refused(control: Control) -> None:
    r = httpx.post(
        control.url + "/ui/login", data={"token": operator_token()}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403 and COOKIE not in r.cookies
    for target in ("//evil.example/", "https://evil.example/ui/", "/ui/\\evil", "/v1/jobs"):
        r = httpx.post(control.url + "/ui/login", data={"token": operator_token(), "next": target})
        assert r.headers["location"] == "/ui/jobs", target


def test_logout_needs_the_csrf_token_and_clears_the_cookie(control: Control) -> None:
    with session_client(control) as c:
        page = c.get("/ui/jobs")
        assert page.status_code == 200
        assert c.post("/ui/logout", data={}).status_code == 403
        assert c.post("/ui/logout", data={"csrf": "0" * 64}).status_code == 403
        out = c.post("/ui/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        cleared = SimpleCookie(out.headers["set-cookie"])[COOKIE]
        assert cleared.value in ("", '""') and cleared["max-age"] == "0"


def test_pages_render_with_security_headers(control: Control) -> None:
    control.deliver(queued_payload(8101))
    agent = PlayedAgent(control, "host-pages")
    with session_client(control) as c:
        for path, text in (
            ("/ui/jobs", "8101"),
            ("/ui/jobs/rows?state=queued", "8101"),
            ("/ui/jobs/8101", "smith-2vcpu"),
            ("/ui/hosts", "host-pages"),
            ("/ui/queue", 'id="queued-total">1<'),
            ("/ui/cache", "no cache server is configured"),
        ):
            r = c.get(path)
            assert r.status_code == 200 and text in r.text, path
            assert "script-src 'self'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
        assert "8101" not in c.get("/ui/jobs/rows?state=succeeded").text
        agent.lease()
        assert "host-pages" in c.get("/ui/jobs/rows").text  # the host it runs on


def test_a_job_name_from_a_webhook_is_escaped(control: Control) -> None:
    payload = queued_payload(8201)
    payload["workflow_job"]["name"] = XSS
    payload["workflow_job"]["workflow_name"] = "<b>bold</b>"
    assert control.deliver(payload).json()["outcome"] == "queued"
    with session_client(control) as c:
        for path in ("/ui/jobs", "/ui/jobs/8201", "/ui/jobs/8201/detail"):
            html = c.get(path).text
            assert "&lt;script&gt;window.__xss=2&lt;/script&gt;" in html, path
            assert "<script>window" not in html and "<img src=x" not in html and "<b>bold" not in html


def test_the_job_log_is_read_through_the_control_plane(console: Control) -> None:  # noqa: F811
    console.deliver(queued_payload(8301))
    agent = PlayedAgent(console)
    job = agent.lease()
    agent.ship(job, ["hello", "<script>x()</script>"])
    with session_client(console) as c:
        first = c.get(f"/ui/jobs/{job}/log", params={"after": 0}).text
        assert "hello" in first and "&lt;script&gt;x()" in first and "<script>x()" not in first
        assert 'after=2"' in first and "end of log" not in first  # polls on from the last seq
        agent.ship(job, ["bye"], first_seq=3, last=True)
        rest = c.get(f"/ui/jobs/{job}/log", params={"after": 2}).text
        assert "bye" in rest and "hello" not in rest and 'id="log-end"' in rest
        page = c.get(f"/ui/jobs/{job}").text
        for html in (page, first, rest):  # no token of any kind reaches the browser (JWTs start "eyJ")
            assert "eyJ" not in html and agent.leases[job]["logs_token"] not in html
        assert c.get("/ui/jobs/99999/log").status_code == 404


def test_cancel_from_the_console_needs_csrf(control: Control) -> None:
    control.deliver(queued_payload(8401))
    with session_client(control) as c:
        page = c.get("/ui/jobs/8401")
        assert c.post("/ui/jobs/8401/cancel", data={}).status_code == 403
        api = {"Authorization": f"Bearer {operator_token()}"}
        assert c.get("/v1/jobs/8401", headers=api).json()["state"] == "queued"
        done = c.post("/ui/jobs/8401/cancel", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 303
        job = c.get("/v1/jobs/8401", headers=api).json()
    assert job["state"] == "cancelled" and "console" in job["reason"]


def test_a_bearer_operator_token_reads_pages_too(control: Control) -> None:
    with control.client(operator_token()) as c:
        assert c.get("/ui/queue/table").status_code == 200


@pytest.mark.parametrize("path", ["/ui/static/htmx.min.js", "/ui/static/htmx.LICENSE", "/ui/static/console.css"])
def test_assets_are_vendored(control: Control, path: str) -> None:
    assert httpx.get(control.url + path).status_code == 200


def test_the_job_list_filters_by_state_class_and_repository(control: Control) -> None:
    control.deliver(queued_payload(8501, ["self-hosted", "smith-2vcpu"]))
    other = queued_payload(8502, ["self-hosted", "smith-4vcpu"])
    other["repository"]["full_name"] = "octo/other"
    control.deliver(other)
    with session_client(control) as c:

        def shown(**params: str) -> set[str]:
            html = c.get("/ui/jobs/rows", params=params).text
            return set(re.findall(r'<tr id="job-(\d+)"', html))

        assert shown() == {"8501", "8502"}
        assert shown(runner_class="smith-4vcpu") == {"8502"}
        assert shown(repo="octo/other") == {"8502"}
        assert shown(repo="Codertocat/Hello-World", runner_class="smith-2vcpu") == {"8501"}
        assert shown(state="running") == set()
        assert shown(state="no-such-state") == {"8501", "8502"}  # an unknown value filters nothing
        page = c.get("/ui/jobs", params={"runner_class": "smith-4vcpu"}).text
        assert 'hx-get="/ui/jobs/rows?state=&amp;runner_class=smith-4vcpu' in page  # the poll keeps the filter
