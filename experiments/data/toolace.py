"""ToolACE rows -> OpenAI-style ``messages`` + ``tools`` rows that Axolotl renders correctly.

A ToolACE row (Team-ACE/ToolACE) looks like::

    {"system": "You are an expert in composing functions. ...\\n"
               "Here is a list of functions in JSON format that you can invoke:\\n[{...}, ...]. \\n"
               "Should you decide to return the function call(s). \\nPut it in the format of ...",
     "conversations": [{"from": "user", "value": "..."},
                       {"from": "assistant", "value": "[get_weather(city=\\"Paris\\")]"},
                       {"from": "tool", "value": "[{\\"name\\": \\"get_weather\\", \\"results\\": {...}}]"},
                       {"from": "assistant", "value": "It is 21 degrees in Paris."}]}

``convert_row`` turns it into::

    {"messages": [{"role": "system", "content": "<instructions, tool list removed>"},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function",
                                   "function": {"name": "get_weather",
                                                "arguments": "{\\"city\\": \\"Paris\\"}"}}]},
                  {"role": "tool", "content": "..."},
                  {"role": "assistant", "content": "It is 21 degrees in Paris."}],
     "tools": [{"type": "function",
                "function": {"name": "get_weather", "description": "...",
                             "parameters": "{\\"type\\": \\"object\\", ...}"}}]}

Storage form: ``function.parameters`` and ``tool_calls[].function.arguments`` are JSON *strings*.
Axolotl reads the JSONL through ``datasets``/Arrow, which merges every row's dicts into one
struct type: a tool with properties {city} and another with {symbol} would both come back with
{city, symbol}, the missing one set to null, and the chat template would print those nulls.
Strings pass through Arrow untouched, and Axolotl 0.19's chat_template strategy ``json.loads``
exactly these two fields back (``_get_tools`` and ``transform_message``) before rendering.
Every other key is present in every row with a non-null value, except ``tool_calls`` on
messages without calls (Arrow fills null there, and Axolotl drops null message keys).

Stdlib only at import time: this module is imported from the train, serve and eval envs.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections import Counter
from typing import Any, Iterable

TOOL_LIST_MARKER = "Here is a list of functions in JSON format that you can invoke"

# ToolACE's format instruction asks for pythonic calls; the Qwen2.5 template appends its own
# instruction for Hermes <tool_call> JSON, so keeping both would contradict the training target.
_FORMAT_INSTRUCTION = re.compile(
    r"Should you decide to return the function call\(s\).*?NO other text MUST be included\.?",
    re.DOTALL,
)

# ToolACE/BFCL use Python-ish type names; OpenAI tools (what vLLM and BFCL's FC handler send) use
# JSON-schema names. Same mapping idea as BFCL's GORILLA_TO_OPENAPI.
_TYPE_ALIASES = {
    "dict": "object",
    "float": "number",
    "int": "integer",
    "bool": "boolean",
    "str": "string",
    "list": "array",
    "tuple": "array",
}

_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}

# An assistant turn that starts like `[name(` is a call list and must parse; anything else is text.
# (Names outside this pattern, e.g. with "/", are matched against the row's tool list.)
_LOOKS_LIKE_CALLS = re.compile(r"^\s*\[\s*[A-Za-z_][\w .\-]*\(")
_DOTTED_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class CallParseError(ValueError):
    """A pythonic call string that cannot be decoded into name + JSON arguments."""


class RowError(ValueError):
    """A row that cannot be converted. ``kind`` is a short category, ``reason`` the detail."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


# --------------------------------------------------------------------------- pythonic calls


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


def parse_pythonic_calls(text: str, tool_names: Iterable[str] = ()) -> list[dict]:
    """Parse ``[f(a=1), g.h(b="x")]`` into ``[{"name": "f", "arguments": {"a": 1}}, ...]``.

    Uses ``ast`` only (nothing is evaluated). ``tool_names`` lets names that are not Python
    identifiers (ToolACE has e.g. ``Weather API``) be recognised in call position.
    Raises CallParseError for anything that is not a list of keyword-only literal calls.
    """
    if not isinstance(text, str) or not text.strip():
        raise CallParseError("empty call string")
    source = text.strip()
    placeholders: dict[str, str] = {}
    odd_names = sorted((n for n in set(tool_names) if not _DOTTED_IDENTIFIER.match(n)), key=len, reverse=True)
    for i, name in enumerate(odd_names):
        token = f"__toolace_fn_{i}__"
        pattern = r"(?:^|(?<=[\[,]))(\s*)" + re.escape(name) + r"(?=\s*\()"
        source, n = re.subn(pattern, lambda m, t=token: m.group(1) + t, source)
        if n:
            placeholders[token] = name
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise CallParseError(f"not parseable as a call list ({e.msg}): {text.strip()[:120]!r}") from None
    body = tree.body
    elements = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    calls = []
    for element in elements:
        if not isinstance(element, ast.Call):
            raise CallParseError(f"list element is not a call: {ast.unparse(element)[:120]!r}")
        name = _call_name(element.func)
        name = placeholders.get(name, name)
        if element.args:
            raise CallParseError(f"{name}: positional arguments are not supported")
        arguments = {}
        for kw in element.keywords:
            if kw.arg is None:
                raise CallParseError(f"{name}: **kwargs is not supported")
            if kw.arg in arguments:
                raise CallParseError(f"{name}: argument {kw.arg!r} given twice")
            arguments[kw.arg] = _literal(kw.value)
        calls.append({"name": name, "arguments": arguments})
    if not calls:
        raise CallParseError("empty call list")
    return calls


def _py_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid Python literal
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_py_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def format_pythonic_calls(calls: list[dict]) -> str:
    """Inverse of parse_pythonic_calls: ``[f(a=1, b="x"), g()]`` in ToolACE's style."""
    parts = []
    for call in calls:
        args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call["arguments"].items())
        parts.append(f"{call['name']}({args})")
    return "[" + ", ".join(parts) + "]"


# --------------------------------------------------------------------------- system prompt, tools


def split_system(system: str) -> tuple[str, list]:
    """ToolACE system prompt -> (instructions without the tool list, raw tool list)."""
    if not isinstance(system, str):
        raise RowError("no_tool_list", "system prompt is missing or not a string")
    at = system.find(TOOL_LIST_MARKER)
    if at < 0:
        raise RowError("no_tool_list", "system prompt has no tool list")
    start = system.find("[", at)
    if start < 0:
        raise RowError("no_tool_list", "no JSON list after the tool-list marker")
    try:
        tools, end = json.JSONDecoder().raw_decode(system, start)
    except json.JSONDecodeError as e:
        raise RowError("bad_tool_list", f"tool list is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(tools, list):
        raise RowError("bad_tool_list", "tool list is not a JSON list")
    rest = _FORMAT_INSTRUCTION.sub("", system[end:]).lstrip(" .").strip()
    instructions = system[:at].strip()
    if rest:
        instructions = f"{instructions}\n{rest}" if instructions else rest
    return instructions, tools


def _normalize_schema(node: Any) -> Any:
    """Map Python-ish type names to JSON-schema ones; drop null ``required`` lists."""
    if isinstance(node, list):
        return [_normalize_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "required" and value is None:
            continue
        if key == "type" and isinstance(value, str):
            out[key] = _TYPE_ALIASES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            # keys of `properties` are parameter names, not schema keywords
            out[key] = {name: _normalize_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _normalize_schema(value)
    return out


def safe_name(name: str) -> str:
    """OpenAI-valid function name (``^[A-Za-z0-9_-]+$``), as BFCL's FC handler sends them."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def normalize_tool(raw: Any) -> dict:
    """One ToolACE tool definition -> native OpenAI tool dict (parameters still a dict)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise RowError("bad_tool", f"tool definition without a name: {str(raw)[:80]!r}")
    params = raw.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise RowError("bad_tool", f"{raw['name']}: parameters is not an object")
    params = _normalize_schema(params)
    if "properties" in params and not isinstance(params["properties"], dict):
        raise RowError("bad_tool", f"{raw['name']}: parameters.properties is not an object")
    description = raw.get("description")
    return {
        "type": "function",
        "function": {
            "name": safe_name(raw["name"].strip()),
            "description": description if isinstance(description, str) else "",
            "parameters": params,
        },
    }


# --------------------------------------------------------------------------- rows


def _looks_like_calls(value: str, tool_names: Iterable[str]) -> bool:
    """`[name(` with an identifier-like name or any listed tool name: such a turn must parse."""
    if _LOOKS_LIKE_CALLS.match(value):
        return True
    head = value.lstrip()
    if not head.startswith("["):
        return False
    head = head[1:].lstrip()
    return any(head.startswith(n) and head[len(n):].lstrip().startswith("(") for n in tool_names)


def _turns(row: dict) -> list:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("empty_conversation", "conversations is missing or empty")
    return turns


def convert_row(row: dict) -> dict:
    """ToolACE row -> ``{"messages", "tools"}`` in the storage form described above.

    Raises RowError for rows that cannot be converted faithfully.
    """
    if not isinstance(row, dict):
        raise RowError("bad_row", f"row is a {type(row).__name__}, not an object")
    turns = _turns(row)
    instructions, raw_tools = split_system(row.get("system"))

    tools, by_raw_name = [], {}
    for raw in raw_tools:
        tool = normalize_tool(raw)
        name = tool["function"]["name"]
        if name in by_raw_name.values():
            if tool in tools:  # the same definition listed twice: keep one
                continue
            raise RowError("bad_tool", f"two different tools are named {name!r} (after making names OpenAI-valid)")
        by_raw_name[raw["name"].strip()] = name
        tools.append(tool)
    properties = {t["function"]["name"]: t["function"]["parameters"].get("properties") for t in tools}

    messages = [{"role": "system", "content": instructions}] if instructions else []
    pending_calls = False  # a tool result must answer an assistant call
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("bad_turn", f"turn {i} is not an object")
        role = _ROLES.get(turn.get("from", turn.get("role")))
        if role is None:
            raise RowError("unknown_role", f"turn {i} has role {turn.get('from', turn.get('role'))!r}")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise RowError("bad_turn", f"turn {i} ({role}) has no text value")

        if role == "assistant" and _looks_like_calls(value, by_raw_name):
            try:
                calls = parse_pythonic_calls(value, by_raw_name)
            except CallParseError as e:
                raise RowError("undecodable_call", f"turn {i}: {e}") from None
            tool_calls = []
            for call in calls:
                name = by_raw_name.get(call["name"])
                if name is None:
                    raise RowError("unknown_tool", f"turn {i} calls {call['name']!r}, not in the tool list")
                known = properties[name]
                unknown_args = sorted(set(call["arguments"]) - set(known)) if isinstance(known, dict) and known else []
                if unknown_args:
                    raise RowError("unknown_argument", f"turn {i}: {name} has no parameter(s) {unknown_args}")
                arguments = json.dumps(call["arguments"], ensure_ascii=False)
                tool_calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
            messages.append({"role": "assistant", "content": "", "tool_calls": tool_calls})
            pending_calls = True
        elif role == "tool":
            if not pending_calls:
                raise RowError("orphan_tool_result", f"turn {i} is a tool result with no call before it")
            messages.append({"role": "tool", "content": value})
        else:
            messages.append({"role": role, "content": value})
            pending_calls = False

    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no_assistant_turn", "nothing to train on: no assistant turn")

    for tool in tools:  # storage form: see module docstring
        fn = tool["function"]
        fn["parameters"] = json.dumps(fn["parameters"], ensure_ascii=False)
    return {"messages": messages, "tools": tools}


def convert_rows(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """Convert every row; each failure is returned as ``{"index", "kind", "reason"}``."""
    converted, rejects = [], []
    for index, row in enumerate(rows):
        try:
            converted.append(convert_row(row))
        except RowError as e:
            rejects.append({"index": index, "kind": e.kind, "reason": e.reason})
    return converted, rejects


def summarize(converted: list, rejects: list[dict]) -> dict:
    """Counts for a data report: totals and rejected rows by kind."""
    return {
        "rows_in": len(converted) + len(rejects),
        "rows_out": len(converted),
        "rejected": len(rejects),
        "rejected_by_kind": dict(sorted(Counter(r["kind"] for r in rejects).items())),
        "rows_with_calls": sum(any(m.get("tool_calls") for m in r["messages"]) for r in converted),
        "tool_calls": sum(len(m.get("tool_calls") or ()) for r in converted for m in r["messages"]),
    }


def to_native(row: dict) -> dict:
    """Storage form -> plain dicts (parameters/arguments decoded), e.g. for the OpenAI API."""
    tools = [
        {**t, "function": {**t["function"], "parameters": json.loads(t["function"]["parameters"])}}
        for t in row.get("tools") or []
    ]
    messages = []
    for m in row["messages"]:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        elif "tool_calls" in m:
            del m["tool_calls"]
        messages.append(m)
    return {"messages": messages, "tools": tools}


# --------------------------------------------------------------------------- I/O


def load_raw(path: str | None = None, hf_id: str | None = None, split: str = "train",
             max_rows: int | None = None) -> list[dict]:
    """Raw ToolACE rows from a local file (JSON Lines, or one JSON list like ToolACE's
    data.json) or from the hub through ``datasets`` (imported only then)."""
    if (path is None) == (hf_id is None):
        raise ValueError("give exactly one of path= or hf_id=")
    if path is not None:
        rows = _read_rows(path)
    else:
        import datasets  # heavy, and only the train env has it

        rows = datasets.load_dataset(hf_id, split=split)
        if max_rows is not None:
            rows = rows.select(range(min(max_rows, len(rows))))
        rows = rows.to_list()
    return rows[:max_rows] if max_rows is not None else rows


class DataFileError(ValueError):
    """A data file that is missing or does not parse; the message names the file (and line)."""


def _read_rows(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataFileError(f"data.path={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"data.path={path}: cannot be read ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataFileError(f"{path}: expected JSON objects (one per line, or a list of them)")
    return rows


def write_jsonl(rows: Iterable[dict], path: str) -> int:
    """Write rows as JSON Lines atomically (tmp file + rename); returns the row count."""
    tmp = f"{path}.tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
