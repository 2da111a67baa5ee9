"""The leaderboard's Qwen2.5 function-calling handler, ported to bfcl-eval 2026.3.23 (the `native` path).

Source: gorilla (ShishirPatil/gorilla) checkpoint f8106312357d2e687a905610fe972b64482ab8e2
(2025-03-18), berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/qwen_fc.py
(`QwenFCHandler`, the handler of the published "Qwen2.5-7B-Instruct (FC)" rows) on top of
bfcl/model_handler/local_inference/base_oss_handler.py (`OSSHandler`). bfcl-eval 2026.3.23's own
`QwenFCHandler` is the Qwen3 variant (no default system line, compact JSON, <think> handling).

What the leaderboard's handler did, and this port does the same:
- bfcl builds the ChatML prompt itself and calls `/v1/completions` (bfcl's OSSHandler query:
  `max_tokens = min(4096, context - prompt_tokens - 2)`, context from the tokenizer folder's
  config); tools are BFCL's own function docs (`dict`/`float` types, dotted names kept),
  `json.dumps(tool, indent=4)` each, the default Qwen system line when the test has none, tool
  results as `<tool_response>` blocks in one user turn.
- Tool calls are `<tool_call>\\n...\\n</tool_call>` blocks read with `json.loads`, falling back to
  a Python literal (the original used `eval`; `ast.literal_eval` accepts the same literals and
  runs no code).

Where bfcl-eval's v4 runner differs from the checkpoint (structure, not scoring):
- v4 stores the raw completion text and decodes it when scoring; the checkpoint decoded at
  inference time. A block neither JSON nor a literal made the checkpoint's inference fail (the
  item scored as an error); here the decoder raises, which bfcl scores the same way (AST: failed;
  irrelevance: no call). In multi-turn the checkpoint failed the whole entry, v4 ends the turn.
- bfcl-eval's loader already adds the language hints (`_func_doc_language_specific_pre_processing`,
  same text as the checkpoint's `func_doc_language_specific_pre_processing`): not added twice.
"""
from __future__ import annotations

import ast
import json
import os
import re

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TOOLS_HEADER = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and "
                "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')
TOOL_CALL_RE = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
HANDLER_FLAGS = {"source": "gorilla f8106312357d2e687a905610fe972b64482ab8e2 "
                           "berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/qwen_fc.py",
                 "endpoint": "/v1/completions", "is_fc_model": True, "underscore_to_dot": False,
                 "tools_json": "indent=4", "default_system": DEFAULT_SYSTEM,
                 "max_tokens": "min(4096, max_position_embeddings - prompt_tokens - 2)"}


# ---------------------------------------------------------------- pure

def _turn(role: str, content) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def format_prompt(messages: list[dict], functions: list[dict]) -> str:
    """The checkpoint's QwenFCHandler._format_prompt: ChatML text ending with the assistant header."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else DEFAULT_SYSTEM
    if functions:
        tools = "".join(f"\n{json.dumps(tool, indent=4)}\n" for tool in functions)
        out = f"<|im_start|>system\n{system}{TOOLS_HEADER}{tools}{TOOLS_FOOTER}"
    else:
        out = _turn("system", system)
    for i, message in enumerate(messages):
        role, content, calls = message["role"], message["content"], message.get("tool_calls", [])
        if role == "user" or (role == "system" and i != 0) or (role == "assistant" and not calls):
            out += _turn(role, content)
        elif role == "assistant":
            out += f"<|im_start|>{role}" + (f"\n{content}" if content else "")
            for call in calls:
                call = call.get("function", call)
                out += ('\n<tool_call>\n{"name": "' + str(call.get("name", "")) + '", "arguments": '
                        + json.dumps(call.get("arguments", {})) + "}\n</tool_call>")
            out += "<|im_end|>\n"
        elif role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                out += "<|im_start|>user"
            out += f"\n<tool_response>\n{content}\n</tool_response>"
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                out += "<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def extract_tool_calls(text: str) -> list:
    """Every `<tool_call>` block: a dict where JSON or a Python literal parses, else the raw text."""
    found = []
    for block in TOOL_CALL_RE.findall(text):
        try:
            found.append(json.loads(block))
        except json.JSONDecodeError:
            try:
                found.append(ast.literal_eval(block.strip()))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                found.append(block)
    return found


def decode_calls(text) -> list[dict]:
    """Completion text -> [{name: arguments}] as bfcl's checker wants it; [] when no call was made.
    Raises ValueError on a `<tool_call>` block that is not a {"name", "arguments"} object."""
    if not isinstance(text, str):
        raise ValueError(f"expected the completion text, got {type(text).__name__}")
    calls = []
    for call in extract_tool_calls(text):
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments", {}), dict)):
            raise ValueError(f"malformed <tool_call> block: {call!r}")
        calls.append({call["name"]: call.get("arguments", {})})
    return calls


def chat_history_message(text: str) -> dict:
    """The assistant turn the checkpoint keeps for the next step of a multi-turn entry."""
    calls = [c for c in extract_tool_calls(text) if isinstance(c, dict) and "name" in c]
    if calls:
        return {"role": "assistant", "content": None, "tool_calls": calls}
    return {"role": "assistant", "content": text}


def add_extra_body(resource, extra: dict) -> None:
    """Make every `resource.create(...)` (an OpenAI client resource) send `extra` in its body,
    under any extra_body the caller passes (the caller's values win)."""
    original = resource.create

    def create(*args, **kwargs):
        kwargs["extra_body"] = {**extra, **(kwargs.get("extra_body") or {})}
        return original(*args, **kwargs)

    resource.create = create


def sampling_from_env() -> dict:
    """The per-request sampling parameters the run asked for (BFCL_SAMPLING, JSON)."""
    return json.loads(os.environ.get("BFCL_SAMPLING", "{}") or "{}")
