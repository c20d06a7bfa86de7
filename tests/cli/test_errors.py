"""Every command fails the same way: one `smith: error: ...` line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from smith.adapters.redis.embedded import free_port
from tests.cli.conftest import assert_one_line_error, run_smith

SECRETS = {
    "SMITH_GITHUB_WEBHOOK_SECRET": "w" * 32,
    "SMITH_JWT_SECRET": "j" * 32,
    "SMITH_AGENT_TOKEN_SECRET": "a" * 32,
}


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["jobs", "recent"], "SMITH_CONTROL_URL"),
        (["jobs", "status"], "SMITH_CONTROL_URL"),
        (["logs", "search", "x"], "SMITH_LOGS_URL"),
        (["cache", "usage"], "SMITH_CACHE_URL"),
    ],
)
def test_server_down(args: list[str], setting: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {setting: url, "SMITH_OPERATOR_TOKEN": "x", "SMITH_CACHE_SHARED_SECRET": "c" * 32}
    result = run_smith(*args, env=env)
    assert_one_line_error(result, "cannot reach", url)
    assert result.code == 1


def test_bad_int_setting() -> None:
    result = run_smith("agent", "run", env={"SMITH_AGENT_VCPUS": "abc"})
    assert_one_line_error(result, "SMITH_AGENT_VCPUS", "'abc'", "integer")


def test_bad_enum_setting() -> None:
    result = run_smith("agent", "run", env={"SMITH_AGENT_BACKEND": "bogus"})
    assert_one_line_error(result, "SMITH_AGENT_BACKEND", "'bogus'", "sandbox")


def test_unreadable_github_app_key() -> None:
    env = {
        **SECRETS,
        "SMITH_REDIS_URL": f"redis://127.0.0.1:{free_port()}",
        "SMITH_GITHUB_APP_ID": "1",
        "SMITH_GITHUB_APP_PRIVATE_KEY_PATH": "/nonexistent/key.pem",
    }
    result = run_smith("control", "serve", env=env)
    assert_one_line_error(result, "/nonexistent/key.pem")


def test_usage_errors_exit_2_in_one_line() -> None:
    result = run_smith("jobs", "recent", "--no-such-option")
    assert_one_line_error(result, "--no-such-option", "smith jobs recent --help")
    assert result.code == 2


def test_debug_shows_the_traceback() -> None:
    result = run_smith("agent", "run", env={"SMITH_AGENT_VCPUS": "abc", "SMITH_DEBUG": "1"})
    assert result.code != 0 and "Traceback" in result.err


def test_a_json_setting_that_is_not_json() -> None:
    result = run_smith("agent", "run", env={"SMITH_AGENT_WARM_POOL": "notjson"})
    assert_one_line_error(result, "SMITH_AGENT_WARM_POOL", "JSON")
    checked = run_smith("config", "check", "control", env={"SMITH_RUNNER_CLASSES": "notjson"})
    assert checked.code == 1 and "invalid SMITH_RUNNER_CLASSES: not valid JSON" in checked.out


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["control", "serve", "--port", "{port}"], {**SECRETS, "SMITH_REDIS_URL": "redis://127.0.0.1:1"}),
        (["cache", "serve", "--port", "{port}"], {"SMITH_CACHE_SHARED_SECRET": "c" * 32}),
        (["logs", "serve", "--port", "{port}"], SECRETS),
        (["dev", "--only-control", "--port", "{port}"], {}),
        (["dev", "--port", "{free}"], {"SMITH_CACHE_PORT": "{port}"}),
    ],
)
def test_a_port_in_use(args: list[str], env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port, free = str(taken.getsockname()[1]), str(free_port())

        def fill(text: str) -> str:
            return text.format(port=port, free=free)

        result = run_smith(*map(fill, args), env={k: fill(v) for k, v in env.items()})
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_dev_with_a_damaged_secrets_file(tmp_path: Path) -> None:
    (tmp_path / "dev-secrets.json").write_text("{not json")
    result = run_smith("dev", "--only-control", "--port", str(free_port()), env={"SMITH_DATA_DIR": str(tmp_path)})
    assert_one_line_error(result, str(tmp_path / "dev-secrets.json"), "not JSON", "remove it")


def test_a_timeout_is_named_even_when_httpx_says_nothing() -> None:
    import httpx

    from smith.cli.errors import explain

    request = httpx.Request("GET", "http://127.0.0.1:1/v1/jobs")
    message, code = explain(httpx.ReadTimeout("", request=request))
    assert message == "cannot reach http://127.0.0.1:1/v1/jobs: ReadTimeout" and code == 1
