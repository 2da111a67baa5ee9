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

Storage form (JSON strings for parameters and arguments): see experiments.data.schema.

Stdlib only at import time: this module is imported from the train, serve and eval envs.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from experiments.data import schema
from experiments.data.pythonic import (  # noqa: F401  (re-exported: the call syntax lives there)
    CallParseError, format_pythonic_calls, parse_pythonic_calls)
from experiments.data.schema import RowError, normalize_tool, safe_name, to_native  # noqa: F401  (re-exported)
from experiments.data.sources import load_raw, write_jsonl  # noqa: F401  (re-exported)

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
    return {"role": "assistant", "content": content, "tool_calls": schema.tool_calls(i, calls, by_raw_name, properties)}


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
            messages.append(schema.tool_result(i, value, pending_calls))
        else:
            messages.append({"role": role, "content": value})
            pending_calls = False
    return schema.to_storage(messages, tools)


def convert_rows(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """Convert every row; each failure is returned as ``{"index", "kind", "reason"}``."""
    return schema.convert_rows(rows, convert_row)


def summarize(converted: list, rejects: list[dict]) -> dict:
    """schema.summarize plus the rows holding earlier dialogue in one user turn (kept as they are)."""
    return {**schema.summarize(converted, rejects),
            "rows_with_dialog_wrapper": sum(any(m["role"] == "user" and DIALOG_WRAPPER in m["content"]
                                                for m in r["messages"]) for r in converted)}
