"""The oracle server's `/v1/completions` side (pure): read a ChatML prompt as the native path
renders it (experiments.bfcl.qwen25_fc) and write answers as Hermes text, the way a Qwen2.5
model answers: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks.
"""
from __future__ import annotations

import json

from experiments.bfcl.qwen25_fc import TOOLS_FOOTER, TOOLS_HEADER

_START, _END = "<|im_start|>", "<|im_end|>"


def parse_prompt(prompt: str) -> dict:
    """ChatML text -> {"users": [user texts], "tools": [function docs], "after_tool": bool}.
    Tool-result turns (`<tool_response>` blocks in a user turn) are not user texts."""
    users, tools, last = [], [], None
    for chunk in prompt.split(_START)[1:]:
        role, _, content = chunk.partition("\n")
        content = content[: -len(_END + "\n")] if content.endswith(_END + "\n") else content
        if role == "system" and TOOLS_HEADER in content:
            tools = _tool_docs(content.split(TOOLS_HEADER, 1)[1].split(TOOLS_FOOTER[: -len(_END + "\n")], 1)[0])
        elif role == "user":
            last = "tool" if content.startswith("<tool_response>") else "user"
            if last == "user":
                users.append(content)
        elif role == "assistant" and content:
            last = "assistant"
    return {"users": users, "tools": tools, "after_tool": last == "tool"}


def _tool_docs(text: str) -> list[dict]:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while True:
        start = text.find("{", i)
        if start < 0:
            return docs
        doc, i = decoder.raw_decode(text, start)
        docs.append(doc)


def hermes(answer) -> str:
    """Calls [(name, arguments)] -> Hermes text; text answers stay as they are."""
    if isinstance(answer, str):
        return answer
    return "\n".join(f'<tool_call>\n{json.dumps({"name": n, "arguments": a})}\n</tool_call>' for n, a in answer)


def as_chat_tools(docs: list[dict]) -> list[dict]:
    """BFCL function docs in the chat request's shape (what the oracle's answers read)."""
    return [{"type": "function", "function": d} for d in docs]
