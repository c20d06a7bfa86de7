"""An OpenAPI 3.0 description as a checker: which operations exist, and whether a request or a response agrees.

Used by the fake GitHub (``smith.testing.github``) against GitHub's own REST description, the way the fake
Firecracker checks requests against Firecracker's swagger file. ``$ref``s resolve into the document's
``components``; OpenAPI's ``nullable: true`` becomes "or null" for jsonschema (Draft 4, which OpenAPI 3.0's
schema object extends). Request bodies are checked strictly: an object that lists its properties takes no
others, so a field renamed on either side is refused rather than silently dropped.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SPECS = Path(__file__).resolve().parent / "specs"
GITHUB_REST = SPECS / "github-rest-subset.json"  # origin and licence: specs/README.md


_BASIC_ERROR = {"$ref": "#/components/schemas/basic-error"}  # GitHub's error shape, for any undeclared error


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" or "query"
    required: bool
    schema: dict[str, Any]


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    params: tuple[Param, ...]
    body: dict[str, Any] | None  # the JSON request body's schema
    body_required: bool
    responses: dict[str, dict[str, Any] | None]  # status -> body schema (None: no body)


class OpenAPI:
    """One OpenAPI 3.0 document (JSON)."""

    def __init__(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        self.version = str(doc["info"]["version"])
        self._doc = doc
        schemas = _nullable(doc.get("components", {}).get("schemas", {}))
        self._schemas = {False: schemas, True: strict(schemas)}
        self._validators: dict[tuple[int, bool], jsonschema.Draft4Validator] = {}
        self.operations: dict[tuple[str, str], Operation] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template, item in doc["paths"].items():
            regex = "^" + re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(template)) + "$"
            self._patterns.append((re.compile(regex), template))
            shared = item.get("parameters", [])
            for method, op in item.items():
                if method == "parameters":
                    continue
                self.operations[(method.upper(), template)] = self._operation(method.upper(), template, shared, op)

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self._doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _operation(self, method: str, template: str, shared: list[Any], op: dict[str, Any]) -> Operation:
        params = []
        for raw in [*shared, *op.get("parameters", [])]:
            p = self._resolve(raw)
            if p["in"] in ("path", "query"):
                params.append(Param(p["name"], p["in"], bool(p.get("required")), _nullable(p.get("schema", {}))))
        body, body_required = None, False
        if "requestBody" in op:
            rb = self._resolve(op["requestBody"])
            body = _nullable(rb.get("content", {}).get("application/json", {}).get("schema"))
            body_required = bool(rb.get("required"))
        responses: dict[str, dict[str, Any] | None] = {}
        for status, raw in op.get("responses", {}).items():
            content = self._resolve(raw).get("content", {}).get("application/json")
            responses[status] = _nullable(content["schema"]) if content and "schema" in content else None
        return Operation(method, template, tuple(params), body, body_required, responses)

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str]]:
        """The operation for ``method path`` (None if either is unknown) and its path parameters by name."""
        for pattern, template in self._patterns:
            m = pattern.match(path)
            if m:
                names = re.findall(r"\{([^}]+)\}", template)
                return self.operations.get((method.upper(), template)), dict(zip(names, m.groups(), strict=True))
        return None, {}

    def path_problems(self, op: Operation, path_params: dict[str, str]) -> list[str]:
        """Path parameters that break their schema (at GitHub such a path matches no route)."""
        return self._param_problems(op, "path", path_params)

    def request_problems(self, op: Operation, query: dict[str, str], body: Any) -> list[str]:
        """What the description says is wrong with this request's query and body (empty when they agree)."""
        known = {p.name for p in op.params if p.where == "query"}
        problems = [f"{q!r} is not a query parameter of {op.method} {op.template}" for q in query if q not in known]
        problems += self._param_problems(op, "query", query)
        if op.body is None:
            if body is not None:
                problems.append(f"{op.method} {op.template} takes no request body")
        elif body is None:
            if op.body_required:
                problems.append("a request body is required")
        else:
            problems += self._errors(op.body, body, closed=True)
        return problems

    def _param_problems(self, op: Operation, where: str, given: dict[str, str]) -> list[str]:
        problems = []
        for p in op.params:
            if p.where != where:
                continue
            if p.name not in given:
                if p.required:
                    problems.append(f"{where} parameter {p.name!r} is required")
                continue
            value = _coerce(given[p.name], p.schema)
            problems += self._errors(p.schema, value, closed=False, label=f"{where} parameter {p.name!r}")
        return problems

    def response_problems(self, op: Operation, status: int, body: Any) -> list[str]:
        """What is wrong with answering ``status`` and ``body`` to ``op``. An error status the operation does not
        list (GitHub answers 401, 403, 404, 429 and 5xx anywhere) must still be GitHub's ``basic-error``."""
        key = str(status)
        if key not in op.responses:
            if status < 400:
                return [f"{op.method} {op.template} never answers {status}"]
            schema: dict[str, Any] | None = _BASIC_ERROR
        else:
            schema = op.responses[key]
        if schema is None:
            return [] if body is None else [f"{op.method} {op.template} answers {status} without a body"]
        if body is None:
            return [f"{op.method} {op.template} answers {status} with a JSON body"]
        return self._errors(schema, body, closed=False)

    def _errors(self, schema: dict[str, Any], value: Any, *, closed: bool, label: str = "body") -> list[str]:
        key = (id(schema), closed)  # (the schemas are the operations' own, alive as long as this object)
        validator = self._validators.get(key)
        if validator is None:
            root = {**(strict(schema) if closed else schema), "components": {"schemas": self._schemas[closed]}}
            validator = self._validators[key] = jsonschema.Draft4Validator(root)
        return [
            f"{'/'.join([label, *(str(p) for p in e.absolute_path)])}: {e.message}"
            for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        ]


@cache
def github_rest() -> OpenAPI:
    """GitHub's REST description (``specs/github-rest-subset.json``), loaded once per process."""
    return OpenAPI(GITHUB_REST)


def _coerce(text: str, schema: dict[str, Any]) -> Any:
    """A path or query string as the type its schema names (what GitHub's router does before checking)."""
    kind = schema.get("type")
    if kind == "integer" and re.fullmatch(r"-?\d+", text):
        return int(text)
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema: the schema, or null."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def strict(node: Any) -> Any:
    """A copy where objects that list their properties take no others (Firecracker's serde
    ``deny_unknown_fields``; for GitHub, a renamed or unknown field is refused instead of ignored)."""
    out = copy.deepcopy(node)

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            if n.get("type") == "object" and "properties" in n and "additionalProperties" not in n:
                n["additionalProperties"] = False
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(out)
    return out
