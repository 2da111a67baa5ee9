"""NousResearch hermes-function-calling-v1 rows (ShareGPT ``conversations`` with Hermes tags) ->
``messages`` + ``tools``.

A row::

    {"conversations": [
        {"from": "system", "value": "You are a function calling AI model. ... <tools>\\n[{'type': 'function', "
                                    "'function': {'name': 'get_stock_price', ...}}]\\n</tools> ... <tool_call> ..."},
        {"from": "human", "value": "Price of AAPL?"},
        {"from": "gpt", "value": "<tool_call>\\n{'arguments': {'symbol': 'AAPL'}, 'name': 'get_stock_price'}\\n</tool_call>"},
        {"from": "tool", "value": "<tool_response>\\n{'name': 'get_stock_price', 'content': {'price': 1}}\\n</tool_response>"},
        {"from": "gpt", "value": "AAPL trades at 1 USD."}], "category": ..., "subcategory": ..., "task": ...}

Decisions: the tool list and each call are JSON or a Python literal (the published rows use
both); they are read with ``json`` or ``ast.literal_eval`` (never evaluated). The system prompt is
Hermes' own format instruction around ``<tools>``; the chat template writes its own, so it is
dropped (BFCL's FC handler sends no system prompt either); rows without ``<tools>`` keep their
system prompt and convert text-only. Text before the first ``<tool_call>`` is the turn's
content; text after or between calls is rejected (``text_between_calls``). Each
``<tool_response>`` block becomes one tool message holding the block's inner text unchanged.
Stdlib only.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from experiments.data import schema
from experiments.data.schema import RowError

_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "tool": "tool"}
_TOOLS = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_RESPONSE = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.DOTALL)


def literal(text: str, what: str) -> Any:
    """JSON, else a Python literal (single-quoted dicts); RowError naming ``what`` otherwise."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise RowError("undecodable_call" if what == "call" else "bad_tool_list",
                       f"{what} is neither JSON nor a Python literal: {text[:120]!r}") from None


def tools_of(system: str) -> list[dict] | None:
    """Raw tool definitions inside ``<tools>`` (unwrapped from ``{"type": "function", "function": ...}``).
    The prompt's prose mentions an empty ``<tools> </tools>`` first: the first non-blank block counts."""
    bodies = [b.strip() for b in _TOOLS.findall(system) if b.strip()]
    if not bodies:
        return None
    body = bodies[0]
    raw = literal(body if body.startswith("[") else f"[{body}]", "tool list")
    if not isinstance(raw, list):
        raise RowError("bad_tool_list", "<tools> does not hold a list")
    return [t.get("function", t) if isinstance(t, dict) and t.get("type") == "function" else t for t in raw]


def assistant(i: int, text: str, by_name: dict, properties: dict) -> dict:
    blocks = list(_CALL.finditer(text))
    if not blocks:
        if not text.strip():
            raise RowError("empty_assistant_turn", f"turn {i} is an empty assistant turn")
        return {"role": "assistant", "content": text}
    between = [text[a.end():b.start()] for a, b in zip(blocks, blocks[1:])] + [text[blocks[-1].end():]]
    if any(t.strip() for t in between):
        raise RowError("text_between_calls", f"turn {i}: text after a <tool_call> block")
    calls = []
    for b in blocks:
        call = literal(b.group(1), "call")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RowError("undecodable_call", f"turn {i}: a <tool_call> without a name")
        args = call.get("arguments", {})
        args = literal(args, "call") if isinstance(args, str) else args
        if not isinstance(args, dict):
            raise RowError("undecodable_call", f"turn {i}: {call['name']} arguments are not an object")
        calls.append({"name": call["name"], "arguments": args})
    return {"role": "assistant", "content": text[:blocks[0].start()].strip(),
            "tool_calls": schema.tool_calls(i, calls, by_name, properties)}


def convert_row(row: dict) -> dict:
    """Hermes row -> storage-form ``{"messages", "tools"}``; RowError when it cannot convert faithfully."""
    turns = row.get("conversations") if isinstance(row, dict) else None
    if not isinstance(turns, list) or not turns:
        raise RowError("empty_conversation", "conversations is missing or empty")
    tools, by_name, properties, messages, pending = [], {}, {}, [], False
    for i, turn in enumerate(turns):
        role = _ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        text = turn.get("value") if isinstance(turn, dict) else None
        if role is None or not isinstance(text, str):
            raise RowError("bad_turn", f"turn {i} has no known role or no text")
        if role == "system":
            raw = tools_of(text)
            if raw is None:
                messages.append({"role": "system", "content": text})
                continue
            tools = [schema.normalize_tool(t) for t in raw]
            by_name = {t["name"].strip(): tool["function"]["name"] for t, tool in zip(raw, tools)}
            properties = {t["function"]["name"]: t["function"]["parameters"].get("properties") for t in tools}
        elif role == "tool":
            messages += [schema.tool_result(i, b, pending) for b in (_RESPONSE.findall(text) or [text])]
        elif role == "assistant":
            messages.append(assistant(i, text, by_name, properties))
            pending = "tool_calls" in messages[-1]
        else:
            messages.append({"role": role, "content": text})
            pending = False
    return schema.to_storage(messages, tools)
