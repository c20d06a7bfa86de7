"""The token the control plane mints for a leased job is accepted by the cache and scoped to the job's branch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from smith import tokens
from smith.cache.auth import tenant_from_claims
from smith.control.app import create_app
from smith.testing.servers import ThreadedServer
from tests.cache.conftest import SECRET, client
from tests.cache.test_protocol import TWIRP, VERSION, restore_v2, save_v2
from tests.control.conftest import Control, make_settings, queued_payload

LEASE = {"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 5}


@pytest.fixture
def control_with_cache(redis_url: str, serve: Any) -> Iterator[tuple[Control, Any]]:
    cache = serve()
    settings = make_settings(redis_url, cache_url=cache.url, cache_shared_secret=SECRET)
    with ThreadedServer(create_app(settings)) as srv:
        yield Control(srv.url, settings, srv), cache


def leased_token(control: Control, job_id: int, branch: str) -> str:
    payload = queued_payload(job_id)
    payload["workflow_job"]["head_branch"] = branch
    assert control.deliver(payload).status_code == 202
    r = control.agent(f"a{job_id}").post("/v1/agents/lease", json=LEASE)
    assert r.status_code == 200, r.text
    return str(r.json()["cache"]["token"])


def test_a_leased_jobs_cache_token_works_and_is_scoped_to_its_branch(
    control_with_cache: tuple[Control, Any],
) -> None:
    control, cache = control_with_cache
    on_default = leased_token(control, 9101, "master")  # the fixture repository's default branch
    on_feature = leased_token(control, 9102, "feature")
    claims = tokens.verify(SECRET, on_feature, scope="cache")
    who = tenant_from_claims(claims)
    assert (who.org, who.repo, who.write_scope) == ("Codertocat", "Hello-World", "refs/heads/feature")
    assert who.read_refs == ("refs/heads/feature", "refs/heads/master")
    default, feature = client(cache, on_default), client(cache, on_feature)
    save_v2(default, "deps", b"from master")  # 400 while the token carried repo as owner/name
    assert restore_v2(feature, "deps") == ("deps", b"from master")
    save_v2(feature, "feature-only", b"from feature")
    assert restore_v2(default, "feature-only") is None
    save_v2(feature, "deps", b"feature's own")
    assert restore_v2(default, "deps") == ("deps", b"from master")


def test_the_lease_names_the_download_host_the_caches_urls_carry(redis_url: str, serve: Any) -> None:
    """SMITH_CACHE_DOWNLOAD_HOST is one deployment-wide setting: the cache puts it in download URLs, the control
    plane in leases (the guest maps it to the cache)."""
    host = "smith.blob.core.windows.net"
    cache = serve(cache_download_host=host)
    settings = make_settings(redis_url, cache_url=cache.url, cache_shared_secret=SECRET, cache_download_host=host)
    with ThreadedServer(create_app(settings)) as srv:
        control = Control(srv.url, settings, srv)
        control.deliver(queued_payload(9103))
        lease = control.agent("a1").post("/v1/agents/lease", json=LEASE).json()
    assert lease["cache"]["download_host"] == host
    c = client(cache, lease["cache"]["token"])
    save_v2(c, "deps", b"x")
    r = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "deps", "restore_keys": [], "version": VERSION})
    assert r.json()["signed_download_url"].startswith(f"http://{host}:{cache.url.rsplit(':', 1)[1]}/")
