"""GitHub Actions expressions (``${{ ... }}``): a tokenizer, a recursive-descent parser and an evaluator.

The rules are GitHub's ("Evaluate expressions in workflows and actions"): literals (null, booleans, JSON numbers
and hex/exponent forms, single-quoted strings with ``''``), the operators ``( ) [ ] . ! < <= > >= == != && ||``
(``&&``/``||`` return an operand, not a boolean), loose equality (different types are compared as numbers: null
0, booleans 0/1, strings parsed, arrays and objects NaN), case-insensitive string comparison, property
dereference of a missing key giving null, object filters (``a.*.b``), and the functions. Pure: no I/O except
``hashFiles``, which reads the workspace given to it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smith.workflows.errors import ExpressionError

Value = Any  # None | bool | float | str | list | dict


class Filtered(list[Any]):
    """The result of an object filter (``.*``): a following property dereference maps over it."""


# ---------------------------------------------------------------- tokens

TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>(?:0x[0-9a-fA-F]+)|(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
    | (?P<str>'(?:[^']|'')*')
    | (?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,*])
    | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)


@dataclass
class Tok:
    kind: str
    text: str


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN.match(text, pos)
        if not m:
            raise ExpressionError(f"unexpected {text[pos:].strip()[:20]!r} in expression {text!r}")
        kind = m.lastgroup or ""
        tok = m.group(kind)
        if kind == "num" and tok[0] in "+-" and toks and toks[-1].kind in ("num", "str", "ident", ")", "]"):
            raise ExpressionError(f"unexpected {tok!r} in expression {text!r}")
        toks.append(Tok(tok if kind == "op" else kind, tok))
        pos = m.end()
    return toks


# ---------------------------------------------------------------- AST


@dataclass
class Node:
    kind: str  # lit, ctx, prop, index, star, not, bin, and, or, call
    value: Any = None
    args: list[Node] = field(default_factory=list)


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i].kind if self.i < len(self.toks) else ""

    def take(self, kind: str | None = None) -> Tok:
        if self.i >= len(self.toks):
            raise ExpressionError(f"unexpected end of expression {self.text!r}")
        tok = self.toks[self.i]
        if kind is not None and tok.kind != kind:
            raise ExpressionError(f"expected {kind!r} but found {tok.text!r} in expression {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.toks:
            raise ExpressionError("empty expression")
        node = self.or_()
        if self.i != len(self.toks):
            raise ExpressionError(f"unexpected {self.toks[self.i].text!r} in expression {self.text!r}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek() == "||":
            self.take()
            node = Node("or", args=[node, self.and_()])
        return node

    def and_(self) -> Node:
        node = self.eq()
        while self.peek() == "&&":
            self.take()
            node = Node("and", args=[node, self.eq()])
        return node

    def eq(self) -> Node:
        node = self.cmp()
        while self.peek() in ("==", "!="):
            op = self.take().kind
            node = Node("bin", op, [node, self.cmp()])
        return node

    def cmp(self) -> Node:
        node = self.unary()
        while self.peek() in ("<", "<=", ">", ">="):
            op = self.take().kind
            node = Node("bin", op, [node, self.unary()])
        return node

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            return Node("not", args=[self.unary()])
        return self.postfix(self.primary())

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "(":
            node = self.or_()
            self.take(")")
            return node
        if tok.kind == "num":
            return Node("lit", parse_number(tok.text))
        if tok.kind == "str":
            return Node("lit", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "ident":
            low = tok.text.lower()
            if self.peek() == "(":
                self.take()
                args: list[Node] = []
                if self.peek() != ")":
                    args.append(self.or_())
                    while self.peek() == ",":
                        self.take()
                        args.append(self.or_())
                self.take(")")
                return Node("call", low, args)
            # the keywords are case-sensitive: `True` or `NULL` is a (missing) named value, as on GitHub
            if tok.text in ("true", "false"):
                return Node("lit", tok.text == "true")
            if tok.text == "null":
                return Node("lit", None)
            if tok.text in ("NaN", "Infinity"):
                return Node("lit", math.nan if tok.text == "NaN" else math.inf)
            return Node("ctx", low)
        raise ExpressionError(f"unexpected {tok.text!r} in expression {self.text!r}")

    def postfix(self, node: Node) -> Node:
        while self.peek() in (".", "["):
            if self.take().kind == ".":
                if self.peek() == "*":
                    self.take()
                    node = Node("star", args=[node])
                else:
                    node = Node("prop", self.take("ident").text, [node])
            else:
                if self.peek() == "*":
                    self.take()
                    node = Node("star", args=[node])
                else:
                    node = Node("index", args=[node, self.or_()])
                self.take("]")
        return node


def parse_number(text: str) -> float:
    t = text.strip()
    try:
        if t.lower().startswith(("0x", "+0x", "-0x")):
            return float(int(t, 16))
        if t.lower().startswith(("0o", "+0o", "-0o")):
            return float(int(t, 8))
        return float(t)
    except ValueError:
        return math.nan


# ---------------------------------------------------------------- coercion


def to_number(v: Value) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if s == "":
            return 0.0
        if s in ("Infinity", "+Infinity"):
            return math.inf
        if s == "-Infinity":
            return -math.inf
        if re.fullmatch(r"[+-]?(0x[0-9a-fA-F]+|0o[0-7]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)", s):
            return parse_number(s)
        return math.nan
    return math.nan


def to_str(v: Value) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return format_number(float(v))
    if isinstance(v, str):
        return v
    return "Array" if isinstance(v, list) else "Object"


def format_number(n: float) -> str:
    """A number as GitHub prints it: .NET's ``G15`` (15 significant digits, exponent form ``1E+20`` when the
    exponent is below -5 or at least 15)."""
    if math.isnan(n):
        return "NaN"
    if math.isinf(n):
        return "Infinity" if n > 0 else "-Infinity"
    text = format(n, ".15G")
    if "E" in text:
        mantissa, exp = text.split("E")
        return f"{mantissa}E{exp[0]}{exp[1:].rjust(2, '0')}"
    return text


def is_primitive(v: Value) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def truthy(v: Value) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, bool):
        return True
    if isinstance(v, int | float):
        return not (v == 0 or math.isnan(v))
    if isinstance(v, str):
        return v != ""
    return True


def _kind(v: Value) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "num"
    if isinstance(v, str):
        return "str"
    return "obj"


def loose_equal(a: Value, b: Value) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        return to_number(a) == to_number(b)
    if ka == "str":
        return bool(a.upper() == b.upper())
    if ka == "num":
        return float(a) == float(b)
    if ka == "obj":
        return a is b
    return bool(a == b)


def compare(op: str, a: Value, b: Value) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka == kb == "str":
        x, y = a.upper(), b.upper()
    elif ka == "obj" or kb == "obj":
        return False
    else:
        x, y = to_number(a), to_number(b)
        if math.isnan(x) or math.isnan(y):
            return False
    return bool({"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op])


# ---------------------------------------------------------------- evaluation


@dataclass
class Scope:
    """What an expression can see: contexts by lower-case name, the job's status, and the workspace for
    hashFiles."""

    contexts: Mapping[str, Value]
    status: str = "success"  # success | failure | cancelled: the job's state so far
    workspace: Path | None = None
    extra_functions: dict[str, Callable[..., Value]] = field(default_factory=dict)


def deref(obj: Value, key: Value) -> Value:
    if isinstance(obj, Filtered):
        # over a filter's result: each item's value where the item has the key (a null value too, as on GitHub)
        out = Filtered()
        for item in obj:
            found, v = lookup(item, key)
            if found:
                out.append(v)
        return out
    return lookup(obj, key)[1]


def lookup(obj: Value, key: Value) -> tuple[bool, Value]:
    """Whether ``obj`` (an object or array) has ``key`` (objects: case-insensitively), and its value."""
    if isinstance(obj, dict):
        if not isinstance(key, str):
            key = to_str(key)
        if key in obj:
            return True, obj[key]
        low = key.lower()
        for k, v in obj.items():
            if isinstance(k, str) and k.lower() == low:
                return True, v
        return False, None
    if isinstance(obj, list) and not isinstance(key, str):
        n = to_number(key)
        if math.isnan(n) or n < 0 or int(n) >= len(obj):
            return False, None
        return True, obj[int(n)]
    return False, None


def star(obj: Value) -> Filtered:
    if isinstance(obj, Filtered):
        out = Filtered()
        for item in obj:
            out.extend(star(item))
        return out
    if isinstance(obj, list):
        return Filtered(obj)
    if isinstance(obj, dict):
        return Filtered(obj.values())
    return Filtered()


def evaluate_node(node: Node, scope: Scope) -> Value:
    k = node.kind
    if k == "lit":
        return node.value
    if k == "ctx":
        if node.value not in scope.contexts:
            raise ExpressionError(f"unrecognized named-value: {node.value!r}")
        return scope.contexts[node.value]
    if k == "prop":
        return deref(evaluate_node(node.args[0], scope), node.value)
    if k == "index":
        return deref(evaluate_node(node.args[0], scope), evaluate_node(node.args[1], scope))
    if k == "star":
        return star(evaluate_node(node.args[0], scope))
    if k == "not":
        return not truthy(evaluate_node(node.args[0], scope))
    if k == "and":
        left = evaluate_node(node.args[0], scope)
        return evaluate_node(node.args[1], scope) if truthy(left) else left
    if k == "or":
        left = evaluate_node(node.args[0], scope)
        return left if truthy(left) else evaluate_node(node.args[1], scope)
    if k == "bin":
        a, b = evaluate_node(node.args[0], scope), evaluate_node(node.args[1], scope)
        if node.value == "==":
            return loose_equal(a, b)
        if node.value == "!=":
            return not loose_equal(a, b)
        return compare(node.value, a, b)
    if k == "call":
        if node.value == "case" and "case" not in scope.extra_functions:
            return case(node.args, scope)
        return call(node.value, [evaluate_node(a, scope) for a in node.args], scope)
    raise ExpressionError(f"cannot evaluate {k}")  # pragma: no cover


ARITY = {
    "case": (3, 255),
    "contains": (2, 2),
    "startswith": (2, 2),
    "endswith": (2, 2),
    "format": (1, 255),
    "join": (1, 2),
    "tojson": (1, 1),
    "fromjson": (1, 1),
    "hashfiles": (1, 255),
    "success": (0, 0),
    "failure": (0, 0),
    "always": (0, 0),
    "cancelled": (0, 0),
}


def call(name: str, args: list[Value], scope: Scope) -> Value:
    if name in scope.extra_functions:
        return scope.extra_functions[name](*args)
    if name not in ARITY:
        raise ExpressionError(f"unrecognized function: {name!r}")
    lo, hi = ARITY[name]
    if not lo <= len(args) <= hi:
        raise ExpressionError(f"{name}() takes {lo}..{hi} arguments, got {len(args)}")
    if name == "contains":
        hay, needle = args
        if isinstance(hay, list):
            return any(loose_equal(item, needle) for item in hay)
        if not (is_primitive(hay) and is_primitive(needle)):
            return False  # an object, or a primitive searched for an array or object: never found
        return to_str(needle).upper() in to_str(hay).upper()
    if name in ("startswith", "endswith"):
        if not (is_primitive(args[0]) and is_primitive(args[1])):
            return False
        text, part = to_str(args[0]).upper(), to_str(args[1]).upper()
        return text.startswith(part) if name == "startswith" else text.endswith(part)
    if name == "format":
        return format_string(to_str(args[0]), [to_str(a) for a in args[1:]])
    if name == "join":
        sep = to_str(args[1]) if len(args) > 1 and is_primitive(args[1]) else ","
        if isinstance(args[0], list):
            return sep.join(to_str(x) for x in args[0])
        return to_str(args[0]) if is_primitive(args[0]) else ""
    if name == "tojson":
        return to_json(args[0])
    if name == "fromjson":
        try:
            return from_json(json.loads(to_str(args[0])))
        except ValueError as exc:
            raise ExpressionError(f"fromJSON: invalid JSON {to_str(args[0])[:60]!r}: {exc}") from exc
    if name == "hashfiles":
        from smith.workflows.hashfiles import hash_files

        github = scope.contexts.get("github")
        guest = str(github.get("workspace") or "") if isinstance(github, dict) else ""
        return hash_files(scope.workspace, [to_str(a) for a in args], guest)
    if name == "success":
        return scope.status == "success"
    if name == "failure":
        return scope.status == "failure"
    if name == "cancelled":
        return scope.status == "cancelled"
    return True  # always()


def case(nodes: list[Node], scope: Scope) -> Value:
    """``case(pred1, value1, pred2, value2, ..., default)``: the value of the first predicate that is true,
    else the default; predicates must be booleans, and only the chosen value is evaluated."""
    if len(nodes) % 2 == 0:
        raise ExpressionError("case() takes an odd number of arguments: predicate/value pairs and a default")
    for pred, value in zip(nodes[:-1:2], nodes[1::2], strict=True):
        chosen = evaluate_node(pred, scope)
        if not isinstance(chosen, bool):
            raise ExpressionError("case(): a predicate must evaluate to a boolean")
        if chosen:
            return evaluate_node(value, scope)
    return evaluate_node(nodes[-1], scope)


def to_json(v: Value, level: int = 0) -> str:
    """GitHub's toJSON: two-space indentation, numbers as GitHub prints them (``1``, ``1.5``, ``1E+20``)."""
    pad = "  " * (level + 1)
    if isinstance(v, dict) and v:
        items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {to_json(x, level + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    if isinstance(v, list) and v:
        return "[\n" + ",\n".join(pad + to_json(x, level + 1) for x in v) + "\n" + "  " * level + "]"
    if isinstance(v, dict | list):
        return "{}" if isinstance(v, dict) else "[]"
    if v is None or isinstance(v, bool):
        return to_str(v) or "null"
    if isinstance(v, int | float):
        return format_number(float(v))
    return json.dumps(str(v), ensure_ascii=False)


def from_json(v: Any) -> Value:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return {str(k): from_json(x) for k, x in v.items()}


def format_string(fmt: str, args: list[str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "{":
            if fmt.startswith("{{", i):
                out.append("{")
                i += 2
                continue
            m = re.match(r"\{(\d+)\}", fmt[i:])
            if not m:
                raise ExpressionError(f"format: invalid format string {fmt!r}")
            n = int(m.group(1))
            if n >= len(args):
                raise ExpressionError(f"format: {fmt!r} refers to argument {n}, but only {len(args)} given")
            out.append(args[n])
            i += len(m.group(0))
            continue
        if c == "}":
            if fmt.startswith("}}", i):
                out.append("}")
                i += 2
                continue
            raise ExpressionError(f"format: invalid format string {fmt!r}")
        out.append(c)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------- entry points

_CACHE: dict[str, Node] = {}


def compile_expression(text: str) -> Node:
    node = _CACHE.get(text)
    if node is None:
        node = Parser(text).parse()
        if len(_CACHE) < 4096:
            _CACHE[text] = node
    return node


def evaluate(text: str, scope: Scope) -> Value:
    """The value of one expression (the text inside ``${{ }}``)."""
    return evaluate_node(compile_expression(text), scope)


STATUS_FUNCTIONS = ("success", "failure", "always", "cancelled")


def evaluate_if(condition: str | bool | float | None, scope: Scope) -> bool:
    """An ``if:`` condition: ``${{ }}`` optional; without a status function it means ``success() && (...)``."""
    if condition is None:
        return scope.status == "success"
    if isinstance(condition, bool | int | float):
        return truthy(condition) and scope.status == "success"
    text = condition.strip()
    whole = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.S)
    if whole and "${{" not in whole.group(1):
        text = whole.group(1).strip()
    elif "${{" in text:
        text = "'" + interpolate(text, scope).replace("'", "''") + "'"
    if not text:
        return scope.status == "success"
    node = compile_expression(text)
    if not _uses_status(node):
        node = Node("and", args=[Node("call", "success"), node])
    return truthy(evaluate_node(node, scope))


def _uses_status(node: Node) -> bool:
    if node.kind == "call" and node.value in STATUS_FUNCTIONS:
        return True
    return any(_uses_status(a) for a in node.args)


EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def _find_end(text: str, start: int) -> int:
    """The index of the ``}}`` closing the expression opened at ``start`` (``}}`` inside strings does not count)."""
    i = start
    in_str = False
    while i < len(text):
        c = text[i]
        if c == "'":
            in_str = not in_str
        elif not in_str and text.startswith("}}", i):
            return i
        i += 1
    raise ExpressionError(f"unclosed '${{{{' in {text[:80]!r}")


def named_values(text: str) -> set[str]:
    """The contexts (lower-case) that the ``${{ }}`` expressions in ``text`` read, without evaluating them; raises
    ``ExpressionError`` for one that does not parse."""
    found: set[str] = set()

    def walk(node: Node) -> None:
        if node.kind == "ctx":
            found.add(node.value)
        for arg in node.args:
            walk(arg)

    pos = 0
    while (start := text.find("${{", pos)) >= 0:
        end = _find_end(text, start + 3)
        walk(compile_expression(text[start + 3 : end].strip()))
        pos = end + 2
    return found


def interpolate_value(text: str, scope: Scope) -> Value:
    """A whole-value string: ``${{ x }}`` alone keeps x's type; otherwise every expression becomes a string."""
    stripped = text.strip()
    if stripped.startswith("${{") and stripped.endswith("}}"):
        end = _find_end(stripped, 3)
        if end == len(stripped) - 2:
            return evaluate(stripped[3:end].strip(), scope)
    return interpolate(text, scope)


def interpolate(text: str, scope: Scope) -> str:
    """``text`` with every ``${{ expr }}`` replaced by its value as a string."""
    if "${{" not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("${{", pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = _find_end(text, start + 3)
        out.append(to_str(evaluate(text[start + 3 : end].strip(), scope)))
        pos = end + 2
    return "".join(out)


def interpolate_tree(value: Any, scope: Scope) -> Any:
    """Every string in a YAML tree interpolated (whole-expression strings keep their type)."""
    if isinstance(value, str):
        return interpolate_value(value, scope)
    if isinstance(value, list):
        return [interpolate_tree(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: interpolate_tree(v, scope) for k, v in value.items()}
    return value
