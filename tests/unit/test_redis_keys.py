"""Every Redis key is spelled in a keys module (the control plane's or the cache server's), as the docs say."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "smith"
KEYS_MODULES = {"adapters/redis/keys.py", "cache/keys.py"}
KEY = re.compile(r"(\{smith\}|smith):[a-z]")  # "{smith}:job:", "smith:cache:", ... (not "smith: job stopped")


def test_no_module_but_the_keys_modules_spells_a_redis_key() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = str(path.relative_to(SRC))
        if name in KEYS_MODULES:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and id(node) not in docstrings and KEY.search(node.value):
                found.append(f"{name}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert found == []


def test_no_script_builds_a_key_of_its_own() -> None:
    """Every key a script touches is passed in KEYS (Redis Cluster and Dragonfly refuse undeclared keys): no
    script concatenates a key name."""
    from smith.adapters.redis import scripts, wfscripts
    from smith.cache import metadata

    bodies = [
        v for m in (scripts, wfscripts, metadata) for v in vars(m).values() if isinstance(v, str) and "redis.call" in v
    ]
    assert len(bodies) >= 10
    calls = [c for body in bodies for c in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", body)]
    assert len(calls) > 50
    # A Lua helper may take a key as a parameter (``local function finish(job, ...)``): every call of it must then
    # pass a KEYS entry in that place.
    params: dict[str, tuple[str, int]] = {}
    for body in bodies:
        for name, args in re.findall(r"local function (\w+)\(([^)]*)\)", body):
            for i, arg in enumerate(a.strip() for a in args.split(",")):
                if arg and any(first == arg for _, first in calls):  # a parameter used as a key
                    params[arg] = (name, i)
    for body in bodies:
        for name, i in params.values():
            for args in re.findall(rf"(?<!function ){name}\(([^)]*)\)", body):
                assert [a.strip() for a in args.split(",")][i].startswith("KEYS["), (name, args)
    # XGROUP's first argument is its subcommand; its key follows and is checked by the same rule.
    bad = [c for c in calls if not c[1].startswith("KEYS[") and c[0] != "XGROUP" and c[1] not in params]
    assert bad == []
