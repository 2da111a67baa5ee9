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

import json
import os
import re
from collections import Counter
from typing import Any, Iterable

from experiments.data.pythonic import (  # noqa: F401  (re-exported: the call syntax lives there)
    CallParseError, format_pythonic_calls, needs_rewrite, parse_pythonic_calls)

# The phrases ToolACE puts before its JSON tool list (English and Chinese rows).
TOOL_LIST_MARKERS = (
    "Here is a list of functions in JSON format that you can invoke",
    "以下是可以调用的工具的JSON格式列表",
)
TOOL_LIST_MARKER = TOOL_LIST_MARKERS[0]

# ToolACE's format instruction asks for pythonic calls; the Qwen2.5 template appends its own
# instruction for Hermes <tool_call> JSON, so keeping both would contradict the training target.
# English, and the Chinese one ("if you decide to return function calls ... no other text").
_FORMAT_INSTRUCTIONS = (
    re.compile(r"Should you decide to return the function call\(s\).*?NO other text MUST be included\.?", re.DOTALL),
    re.compile(r"(?:如果|若)[^\n。]{0,8}决定[^\n。]{0,8}函数调用.{0,400}?(?:其他|其它)[^\n。]{0,6}(?:文本|内容|文字)[。.]?",
               re.DOTALL),
)
# A JSON function list without a known marker (reported, never trained as system text).
_UNMARKED_TOOL_LIST = re.compile(r'\[\s*\{\s*"name"\s*:')
# The wrapper some ToolACE rows put around earlier dialogue inside one user turn (kept as is).
DIALOG_WRAPPER = "Historical dialog data is as follows"

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


class RowError(ValueError):
    """A row that cannot be converted. ``kind`` is a short category, ``reason`` the detail."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


# --------------------------------------------------------------------------- system prompt, tools


def language(text: str) -> str:
    """Coarse script of a text for reports: zh (any CJK ideograph), en (ASCII letters), other."""
    if re.search(r"[\u4e00-\u9fff]", text):
        return "zh"
    letters = [c for c in text if c.isalpha()]
    return "en" if letters and sum(c.isascii() for c in letters) >= 0.9 * len(letters) else "other"


def split_system(system: str) -> tuple[str, list]:
    """ToolACE system prompt -> (instructions without the tool list, raw tool list)."""
    if not isinstance(system, str):
        raise RowError("no_tool_list", "system prompt is missing or not a string")
    found = [(system.find(m), m) for m in TOOL_LIST_MARKERS if m in system]
    if not found:
        raise RowError("no_tool_list", f"system prompt has no tool list (language: {language(system)})")
    at, _ = min(found)
    start = system.find("[", at)
    if start < 0:
        raise RowError("no_tool_list", f"no JSON list after the tool-list marker (language: {language(system)})")
    try:
        tools, end = json.JSONDecoder().raw_decode(system, start)
    except json.JSONDecodeError as e:
        raise RowError("bad_tool_list", f"tool list is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(tools, list):
        raise RowError("bad_tool_list", "tool list is not a JSON list")
    rest = system[end:]
    for instruction in _FORMAT_INSTRUCTIONS:
        rest = instruction.sub("", rest)
    rest = rest.lstrip(" .。").strip()
    instructions = system[:at].strip()
    if rest:
        instructions = f"{instructions}\n{rest}" if instructions else rest
    return instructions, tools


def _normalize_schema(node: Any) -> Any:
    """Map Python-ish type names to JSON-schema ones (also inside type unions); drop null
    ``required`` lists (every real ToolACE tool has ``"required": null``: nothing is required)."""
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
        elif key == "type" and isinstance(value, list):  # a union such as ["int", "null"]
            out[key] = [_TYPE_ALIASES.get(v, v) if isinstance(v, str) else v for v in value]
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


def split_trailing_calls(value: str, tool_names: Iterable[str], arg_names: Iterable[str] = ()
                         ) -> tuple[str, list[dict]] | None:
    """Text followed by a call list (``"Let me check.\\n\\n[f(x=1)]"``) -> (text, calls); None when
    no line of the turn starts a call list that runs to its end. A line that starts like a call list
    but does not parse raises CallParseError: such a turn must never be trained as plain text."""
    names = list(tool_names)
    error = None
    for m in re.finditer(r"(?:^|(?<=\s))\[", value):
        prose, tail = value[:m.start()].rstrip(), value[m.start():].strip()
        if not prose or not _looks_like_calls(tail, names):
            continue
        try:
            return prose, parse_pythonic_calls(tail, names, arg_names)
        except CallParseError as e:
            error = error or e
    if error is not None:
        raise CallParseError(f"text followed by a call list that does not parse: {error}")
    return None


def _turns(row: dict) -> list:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("empty_conversation", "conversations is missing or empty")
    return turns


def _row_tools(system: Any, turns: list) -> tuple[str, list[dict], dict]:
    """(instructions, normalized tools, {name as listed: OpenAI-valid name}). A row without any tool list converts as a text-only
    example (tools []) when nothing in it looks like a call or a function list."""
    try:
        instructions, raw_tools = split_system(system)
    except RowError as e:
        if e.kind != "no_tool_list":
            raise
        text = system if isinstance(system, str) else ""
        calls = [t for t in turns if isinstance(t, dict) and isinstance(t.get("value", t.get("content")), str)
                 and _ROLES.get(t.get("from", t.get("role"))) == "assistant"
                 and _LOOKS_LIKE_CALLS.match(t.get("value", t.get("content")))]
        if _UNMARKED_TOOL_LIST.search(text):
            raise RowError("no_tool_list", f"a JSON function list without a known marker (language: {language(text)})") from None
        if calls:
            raise RowError("no_tool_list", f"an assistant turn calls a function but the system prompt has no "
                                           f"tool list (language: {language(text)})") from None
        return text.strip(), [], {}
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
    return instructions, tools, by_raw_name


def _tool_calls(i: int, calls: list[dict], by_raw_name: dict, properties: dict) -> list[dict]:
    out = []
    for call in calls:
        name = by_raw_name.get(call["name"])
        if name is None:
            raise RowError("unknown_tool", f"turn {i} calls {call['name']!r}, not in the tool list")
        known = properties[name]
        unknown_args = sorted(set(call["arguments"]) - set(known)) if isinstance(known, dict) and known else []
        if unknown_args:
            raise RowError("unknown_argument", f"turn {i}: {name} has no parameter(s) {unknown_args}")
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        out.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    return out


def _assistant(i: int, value: str, by_raw_name: dict, properties: dict) -> dict:
    """One assistant turn: a call list, text followed by a call list, or text."""
    if not value.strip():
        raise RowError("empty_assistant_turn", f"turn {i} is an empty assistant turn (it would train an empty answer)")
    arg_names = {a for props in properties.values() if isinstance(props, dict) for a in props}
    try:
        if _looks_like_calls(value, by_raw_name):
            content, calls = "", parse_pythonic_calls(value, by_raw_name, arg_names)
        else:
            split = split_trailing_calls(value, by_raw_name, arg_names)
            if split is None:
                return {"role": "assistant", "content": value}
            content, calls = split
    except CallParseError as e:
        raise RowError("undecodable_call", f"turn {i}: {e}") from None
    return {"role": "assistant", "content": content, "tool_calls": _tool_calls(i, calls, by_raw_name, properties)}


def convert_row(row: dict) -> dict:
    """ToolACE row -> ``{"messages", "tools"}`` in the storage form described above.

    Raises RowError for rows that cannot be converted faithfully.
    """
    if not isinstance(row, dict):
        raise RowError("bad_row", f"row is a {type(row).__name__}, not an object")
    turns = _turns(row)
    instructions, tools, by_raw_name = _row_tools(row.get("system"), turns)
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
        if role == "assistant":
            messages.append(_assistant(i, value, by_raw_name, properties))
            pending_calls = "tool_calls" in messages[-1]
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
    """Counts for a data report: totals, rejected rows by kind (and rows without a recognisable
    tool list by the language of their system prompt), and the row shapes the converter decided on."""
    no_list = Counter(re.search(r"language: (\w+)", r["reason"]).group(1) for r in rejects
                      if r["kind"] == "no_tool_list" and "language: " in r["reason"])
    return {
        "rows_in": len(converted) + len(rejects),
        "rows_out": len(converted),
        "rejected": len(rejects),
        "rejected_by_kind": dict(sorted(Counter(r["kind"] for r in rejects).items())),
        "rows_with_calls": sum(any(m.get("tool_calls") for m in r["messages"]) for r in converted),
        "tool_calls": sum(len(m.get("tool_calls") or ()) for r in converted for m in r["messages"]),
        "no_tool_list_by_language": dict(sorted(no_list.items())),
        "rows_text_only": sum(not r["tools"] for r in converted),
        "turns_text_and_calls": sum(bool(m.get("tool_calls")) and bool(m["content"]) for r in converted
                                    for m in r["messages"]),
        "rows_with_dialog_wrapper": sum(any(m["role"] == "user" and DIALOG_WRAPPER in m["content"]
                                            for m in r["messages"]) for r in converted),
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
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        import datasets  # heavy, and only the train env has it

        rows = datasets.load_dataset(hf_id, split=split)
        if max_rows is not None:
            rows = rows.select(range(min(max_rows, len(rows))))
        rows = rows.to_list()
    return rows[:max_rows] if max_rows is not None else rows


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
