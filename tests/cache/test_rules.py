"""Pure rules: key validation, lookup order, ranges, settings problems, `smith config check cache`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from smith.cache.auth import tenant_from_claims
from smith.cache.service import RangeNotSatisfiable, parse_range
from smith.cache.settings import CacheSettings
from smith.cli import app as cli
from smith.domain.cache import Tenant, check_key, lookup_order
from smith.errors import AuthError, InvalidInput


def test_lookup_order_is_own_ref_then_default_exact_before_prefix() -> None:
    t = Tenant(org="o", ref="refs/heads/f", read_refs=("refs/heads/f", "refs/heads/main"))
    assert lookup_order(t, "k", ["r-"]) == [
        ("refs/heads/f", "k", False),
        ("refs/heads/f", "k", True),
        ("refs/heads/f", "r-", False),
        ("refs/heads/f", "r-", True),
        ("refs/heads/main", "k", False),
        ("refs/heads/main", "k", True),
        ("refs/heads/main", "r-", False),
        ("refs/heads/main", "r-", True),
    ]
    with pytest.raises(InvalidInput):
        lookup_order(t, "k", [f"r{i}" for i in range(10)])


def test_keys_allow_what_workflows_use() -> None:
    assert (
        check_key("Linux-node-modules-8f14e45fceea167a5a36dedd4bea2543")
        == "Linux-node-modules-8f14e45fceea167a5a36dedd4bea2543"
    )
    assert check_key("setup-python-3.12.1-pip-v1") == "setup-python-3.12.1-pip-v1"
    # ${{ runner.os }}-${{ github.ref }}: GitHub allows any key of at most 512 characters without commas.
    for key in ("Linux-refs/heads/main", "win\\path\\key", "../up", "x" * 512):
        assert check_key(key) == key
    for bad in ("a,b", "x" * 513, ""):
        with pytest.raises(InvalidInput):
            check_key(bad)


def test_tokens_claims_to_tenant() -> None:
    t = tenant_from_claims(
        {
            "sub": "x",
            "org": "acme",
            "repo": "web",
            "ref": "refs/pull/1/merge",
            "base_ref": "refs/heads/dev",
            "default_ref": "refs/heads/main",
        }
    )
    assert t.read_refs == ("refs/pull/1/merge", "refs/heads/dev", "refs/heads/main")
    assert t.write_scope == "refs/pull/1/merge"
    with pytest.raises(InvalidInput):
        tenant_from_claims({"org": "../etc"})
    with pytest.raises(AuthError):
        tenant_from_claims({})


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)), ("bytes=90-500", (90, 99))],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=250-300"])
def test_unsatisfiable_ranges_are_416_with_the_size(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, 100)
    assert caught.value.status_code == 416
    assert caught.value.size == 100


@pytest.mark.parametrize(
    "header",
    ["bytes=5-1", "bytes=0-1,4-5", "items=0-1", "bytes=a-b", "bytes=-", "bytes 0-1", "bytes=1-2-3", "bytes=+1-2"],
)
def test_other_units_malformed_and_multi_ranges_are_ignored(header: str) -> None:
    """RFC 9110 14.2: a server ignores a Range it does not understand or will not serve; the answer is the whole."""
    assert parse_range(header, 100) is None


def test_settings_problems() -> None:
    problems = CacheSettings(cache_storage="s3", cache_max_entry_bytes=10, cache_org_quota_bytes=5).problems()
    joined = "\n".join(problems)
    assert "SMITH_CACHE_SHARED_SECRET" in joined
    assert "SMITH_CACHE_S3_BUCKET" in joined
    assert "SMITH_CACHE_MAX_ENTRY_BYTES" in joined
    s3 = CacheSettings(cache_s3_ca_bundle="/nonexistent/ca.pem", cache_s3_sse_kms_key_id="k").problems()
    assert any("CA_BUNDLE" in p for p in s3) and any("aws:kms" in p for p in s3)
    ok = CacheSettings(cache_shared_secret="s" * 40, redis_url="redis://x").problems()
    assert ok == []


def test_config_check_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMITH_CACHE_SHARED_SECRET", "short")
    out = CliRunner().invoke(cli, ["config", "check", "cache", "--json"])
    assert out.exit_code == 0, out.output
    assert "shorter than 32" in out.output
    assert "short" not in out.output.replace("shorter", "")
