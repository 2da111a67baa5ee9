"""The one row schema every converter writes: OpenAI-style ``messages`` + ``tools`` in storage form.

Storage form: ``function.parameters`` and ``tool_calls[].function.arguments`` are JSON *strings*.
Axolotl reads the JSONL through ``datasets``/Arrow, which merges every row's dicts into one
struct type: a tool with properties {city} and another with {symbol} would both come back with
{city, symbol}, the missing one set to null, and the chat template would print those nulls.
Strings pass through Arrow untouched, and Axolotl 0.19's chat_template strategy ``json.loads``
exactly these two fields back (``_get_tools`` and ``transform_message``) before rendering.
Every other key is present in every row with a non-null value, except ``tool_calls`` on
messages without calls (Arrow fills null there, and Axolotl drops null message keys).

Shared by the converters (toolace, glaive, hermes): tool normalisation, call checking against the
row's tools, reject bookkeeping. Stdlib only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Callable, Iterable

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


class RowError(ValueError):
    """A row that cannot be converted. ``kind`` is a short category, ``reason`` the detail."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def normalize_schema(node: Any) -> Any:
    """Map Python-ish type names to JSON-schema ones (also inside type unions); drop null
    ``required`` lists (every real ToolACE tool has ``"required": null``: nothing is required)."""
    if isinstance(node, list):
        return [normalize_schema(v) for v in node]
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
            out[key] = {name: normalize_schema(sub) for name, sub in value.items()}
        else:
            out[key] = normalize_schema(value)
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
    params = normalize_schema(params)
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


def tool_calls(i: int, calls: list[dict], by_raw_name: dict, properties: dict) -> list[dict]:
    """Parsed calls of turn i -> storage-form tool_calls; the name must be listed, every argument declared."""
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


def tool_result(i: int, content: str, pending_calls: bool) -> dict:
    """A tool message; it must answer an assistant call."""
    if not pending_calls:
        raise RowError("orphan_tool_result", f"turn {i} is a tool result with no call before it")
    return {"role": "tool", "content": content}


def to_storage(messages: list[dict], tools: list[dict]) -> dict:
    """Messages + native tools (parameters as dicts) -> the storage-form row; a row needs an
    assistant turn to train on."""
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no_assistant_turn", "nothing to train on: no assistant turn")
    for tool in tools:
        fn = tool["function"]
        fn["parameters"] = json.dumps(fn["parameters"], ensure_ascii=False)
    return {"messages": messages, "tools": tools}


def convert_rows(rows: Iterable[dict], convert: Callable[[Any], dict]) -> tuple[list[dict], list[dict]]:
    """Convert every row; each failure is returned as ``{"index", "kind", "reason"}``."""
    converted, rejects = [], []
    for index, row in enumerate(rows):
        try:
            converted.append(convert(row))
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
