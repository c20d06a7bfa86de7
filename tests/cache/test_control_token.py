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
from tests.cache.test_protocol import restore_v2, save_v2
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
