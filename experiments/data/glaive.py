"""Glaive function-calling v2 rows (glaiveai/glaive-function-calling-v2) -> ``messages`` + ``tools``.

A row is two strings::

    {"system": "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\\n"
               "{\\n  \\"name\\": \\"get_news\\", \\"description\\": ..., \\"parameters\\": {...}\\n}\\n\\n{...second...}",
     "chat": "USER: Latest news for Spain? \\n\\n\\nASSISTANT: <functioncall> {\\"name\\": \\"get_news\\", "
             "\\"arguments\\": '{\\"country\\": \\"Spain\\"}'} <|endoftext|>\\n\\n\\n"
             "FUNCTION RESPONSE: {\\"headlines\\": [...]}\\n\\n\\nASSISTANT: Here they are ... <|endoftext|>\\n\\n\\n"}

Decisions: the tool definitions are consecutive JSON objects (not a list) after the first ``{``;
the system text before them is kept as the system turn; "with no access to external functions"
rows convert text-only (tools []). ``arguments`` is a single-quoted JSON string (not valid JSON as a
whole): it is cut out and decoded on its own; a dict or double-encoded string is accepted too.
Text before ``<functioncall>`` becomes the turn's content; ``<|endoftext|>`` is Glaive's EOS
marker, not text, and is removed. Stdlib only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from experiments.data import schema
from experiments.data.schema import RowError

_TURN = re.compile(r"(?:^|\n+)[ \t]*(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]?")
_ROLE = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
_EOS = "<|endoftext|>"
_CALL = re.compile(r"""^\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*"arguments"\s*:\s*'(?P<args>.*)'\s*\}$""", re.DOTALL)


def split_system(system: Any) -> tuple[str, list]:
    """Glaive system text -> (instructions, raw tool definitions)."""
    if not isinstance(system, str):
        raise RowError("no_tool_list", "system is missing or not a string (language: other)")
    text = system.strip()
    text = text[len("SYSTEM:"):].strip() if text.startswith("SYSTEM:") else text
    start = text.find("{")
    if start < 0:
        return text, []
    decoder, tools, at = json.JSONDecoder(), [], start
    while at < len(text):
        try:
            tool, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as e:
            raise RowError("bad_tool_list", f"function definition is not valid JSON ({e.msg} at char {e.pos})") from None
        tools.append(tool)
        rest = text[end:].lstrip()
        if not rest:
            break
        if not rest.startswith("{"):
            raise RowError("bad_tool_list", f"text after the function definitions: {rest[:60]!r}")
        at = len(text) - len(rest)
    return text[:start].rstrip(" \n-"), tools


def split_chat(chat: Any) -> list[tuple[str, str]]:
    """``USER: ... ASSISTANT: ...`` -> [(role, text)], EOS markers removed."""
    if not isinstance(chat, str) or not chat.strip():
        raise RowError("empty_conversation", "chat is missing or empty")
    marks = list(_TURN.finditer(chat))
    if not marks or chat[:marks[0].start()].strip():
        raise RowError("bad_turn", f"chat does not start with a USER:/ASSISTANT: turn: {chat[:60]!r}")
    turns = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        text = chat[m.end():nxt.start() if nxt else len(chat)].rstrip()
        if text.endswith(_EOS):
            text = text[:-len(_EOS)].rstrip()
        turns.append((_ROLE[m.group(1)], text))
    return turns


def parse_call(text: str) -> dict:
    """The JSON after ``<functioncall>`` -> {"name", "arguments"}."""
    text = text.strip()
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        m = _CALL.match(text)
        if not m:
            raise RowError("undecodable_call", f"function call is not JSON: {text[:120]!r}") from None
        call = {"name": m.group("name"), "arguments": m.group("args")}
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise RowError("undecodable_call", f"function call without a name: {text[:120]!r}")
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise RowError("undecodable_call", f"{call['name']}: arguments are not JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise RowError("undecodable_call", f"{call['name']}: arguments are not an object")
    return {"name": call["name"], "arguments": args}


def convert_row(row: dict) -> dict:
    """Glaive row -> storage-form ``{"messages", "tools"}``; RowError when it cannot convert faithfully."""
    if not isinstance(row, dict):
        raise RowError("bad_row", f"row is a {type(row).__name__}, not an object")
    instructions, raw_tools = split_system(row.get("system"))
    tools = [schema.normalize_tool(t) for t in raw_tools]
    by_name = {t["name"].strip(): tool["function"]["name"] for t, tool in zip(raw_tools, tools)}
    properties = {t["function"]["name"]: t["function"]["parameters"].get("properties") for t in tools}
    messages = [{"role": "system", "content": instructions}] if instructions else []
    pending = False
    for i, (role, text) in enumerate(split_chat(row.get("chat"))):
        if role == "tool":
            messages.append(schema.tool_result(i, text, pending))
            continue
        if role == "assistant" and not text.strip():
            raise RowError("empty_assistant_turn", f"turn {i} is an empty assistant turn")
        if role == "assistant" and "<functioncall>" in text:
            prose, _, call = text.partition("<functioncall>")
            calls = schema.tool_calls(i, [parse_call(call)], by_name, properties)
            messages.append({"role": "assistant", "content": prose.strip(), "tool_calls": calls})
            pending = True
            continue
        messages.append({"role": role, "content": text})
        pending = False
    return schema.to_storage(messages, tools)
