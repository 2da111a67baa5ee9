"""Pythonic call lists (``[f(a=1), g.h(b="x")]``, ToolACE's and BFCL's call syntax) <-> name + JSON
arguments, through ``ast`` (nothing is evaluated).

Real tool lists use names that Python cannot parse, in two places:

* tool names with spaces or punctuation (``Flight Search API``, ``Stock/Quote (v2)``) in call position;
* argument names that are keywords (``from=``), hyphenated (``sort-by=``) or carry ``$`` (``$top=``).

Both are rewritten to stand-in identifiers before ``ast.parse`` and mapped back afterwards, but only
names the row's own tools declare, and only in code: string literals are masked first, so the same
text inside an argument (``note="see [Flight Search API(x)]"``) comes back byte for byte.

Stdlib only.
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import re
import warnings
from typing import Any, Iterable

_DOTTED_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MASK = "\x00{}\x00"  # a string literal's stand-in while names are rewritten; \x00 is never in a name


class CallParseError(ValueError):
    """A pythonic call string that cannot be decoded into name + JSON arguments."""


def mask_strings(source: str) -> tuple[str, list[str]]:
    """Replace every string literal (quotes, triple quotes, backslash escapes, r/b/u/f prefixes)
    by ``\\x00<i>\\x00``; returns the masked text and the literals. An unterminated literal runs to the
    end (the parser then rejects it)."""
    out, literals, i, n = [], [], 0, len(source)
    while i < n:
        ch = source[i]
        if ch not in "'\"":
            out.append(ch)
            i += 1
            continue
        quote = source[i:i + 3] if source[i:i + 3] in ("'''", '"""') else ch
        j = i + len(quote)
        while j < n and not source.startswith(quote, j):
            j += 2 if source[j] == "\\" else 1
        j = min(j + len(quote), n)
        out.append(_MASK.format(len(literals)))
        literals.append(source[i:j])
        i = j
    return "".join(out), literals


def _unmask(masked: str, literals: list[str]) -> str:
    return re.sub("\x00(\\d+)\x00", lambda m: literals[int(m.group(1))], masked)


def needs_rewrite(name: str) -> bool:
    """An argument name that cannot stand before ``=`` in a Python call."""
    return not name.isidentifier() or keyword.iskeyword(name)


def _rewrite(masked: str, tool_names: Iterable[str], arg_names: Iterable[str]) -> tuple[str, dict, dict]:
    """Stand-ins for odd tool names in call position and odd argument names before ``=``."""
    fn_map, arg_map = {}, {}
    odd_tools = sorted((n for n in set(tool_names) if not _DOTTED_IDENTIFIER.match(n)), key=len, reverse=True)
    for i, name in enumerate(odd_tools):
        token = f"__toolace_fn_{i}__"
        pattern = r"(?:^|(?<=[\[,]))(\s*)" + re.escape(name) + r"(?=\s*\()"
        masked, hits = re.subn(pattern, lambda m, t=token: m.group(1) + t, masked)
        if hits:
            fn_map[token] = name
    odd_args = sorted((n for n in set(arg_names) if needs_rewrite(n)), key=len, reverse=True)
    for i, name in enumerate(odd_args):
        token = f"__toolace_arg_{i}__"
        pattern = r"(?<=[(,])(\s*)" + re.escape(name) + r"(\s*)=(?!=)"
        masked, hits = re.subn(pattern, lambda m, t=token: f"{m.group(1)}{t}{m.group(2)}=", masked)
        if hits:
            arg_map[token] = name
    return masked, fn_map, arg_map


def _literal(node: ast.AST) -> Any:
    """JSON value of a literal expression node; anything that needs evaluation is refused."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CallParseError(f"non-finite number {ast.unparse(node)!r}")
            return value
        raise CallParseError(f"unsupported constant {ast.unparse(node)!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal(node.operand)
        if isinstance(inner, bool) or not isinstance(inner, (int, float)):
            raise CallParseError(f"sign applied to a non-number {ast.unparse(node)!r}")
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                raise CallParseError("dict unpacking (**) is not a literal")
            k = _literal(key)
            if not isinstance(k, str):
                raise CallParseError(f"dict key {ast.unparse(key)!r} is not a string")
            out[k] = _literal(value)
        return out
    # JSON spellings show up in generated data; they are unambiguous, so accept them.
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[node.id]
    raise CallParseError(f"not a literal value: {ast.unparse(node)!r}")


def _call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_call_name(func.value)}.{func.attr}"
    raise CallParseError(f"not a function name: {ast.unparse(func)!r}")


def parse_pythonic_calls(text: str, tool_names: Iterable[str] = (), arg_names: Iterable[str] = ()) -> list[dict]:
    """Parse ``[f(a=1), g.h(b="x")]`` into ``[{"name": "f", "arguments": {"a": 1}}, ...]``.

    ``tool_names``: listed names that are not dotted identifiers (``Weather API``) are recognised in
    call position; ``arg_names``: declared parameter names that are keywords or not identifiers
    (``from``, ``sort-by``, ``$top``) are recognised before ``=``. Neither is touched inside strings.
    Raises CallParseError for anything that is not a list of keyword-only literal calls.
    """
    if not isinstance(text, str) or not text.strip():
        raise CallParseError("empty call string")
    masked, literals = mask_strings(text.strip())
    masked, fn_map, arg_map = _rewrite(masked, tool_names, arg_names)
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" in generated text is not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(_unmask(masked, literals), mode="eval")
    except SyntaxError as e:
        raise CallParseError(f"not parseable as a call list ({e.msg}): {text.strip()[:120]!r}") from None
    body = tree.body
    elements = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    calls = []
    for element in elements:
        if not isinstance(element, ast.Call):
            raise CallParseError(f"list element is not a call: {ast.unparse(element)[:120]!r}")
        name = _call_name(element.func)
        name = fn_map.get(name, name)
        if element.args:
            raise CallParseError(f"{name}: positional arguments are not supported")
        arguments = {}
        for kw in element.keywords:
            if kw.arg is None:
                raise CallParseError(f"{name}: **kwargs is not supported")
            arg = arg_map.get(kw.arg, kw.arg)
            if arg in arguments:
                raise CallParseError(f"{name}: argument {arg!r} given twice")
            arguments[arg] = _literal(kw.value)
        calls.append({"name": name, "arguments": arguments})
    if not calls:
        raise CallParseError("empty call list")
    return calls


def _py_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid Python literal
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_py_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def format_pythonic_calls(calls: list[dict]) -> str:
    """Inverse of parse_pythonic_calls: ``[f(a=1, b="x"), g()]`` in ToolACE's style (argument
    names are written as given, so ``from=`` comes out as ToolACE writes it)."""
    parts = []
    for call in calls:
        args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call["arguments"].items())
        parts.append(f"{call['name']}({args})")
    return "[" + ", ".join(parts) + "]"
