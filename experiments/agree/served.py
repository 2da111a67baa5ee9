"""What the served model does with a run's rows (I/O against vLLM's own endpoints): the tokens its
chat template gives a conversation (`/tokenize` with messages + tools), the log-probability of every
prompt token (`/v1/completions`, `echo`, `prompt_logprobs`, `max_tokens: 1`), a greedy completion."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path


class ServedError(RuntimeError):
    pass


def post(root_url: str, path: str, body: dict, api_key: str | None = None, timeout: float = 300) -> dict:
    req = urllib.request.Request(root_url.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        raise ServedError(f"POST {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


def openai_messages(row: dict) -> tuple[list[dict], list[dict]]:
    """A converted row (storage form) -> OpenAI chat messages and tools as a client sends them:
    call arguments stay JSON strings (vLLM decodes them for the template, as Axolotl does)."""
    tools = [{**t, "function": {**t["function"], "parameters": json.loads(t["function"]["parameters"])}}
             for t in row.get("tools") or []]
    messages = []
    for n, m in enumerate(row["messages"]):
        m = {k: v for k, v in m.items() if v is not None and not (k == "tool_calls" and not v)}
        if m.get("tool_calls"):
            m["tool_calls"] = [{"id": c.get("id") or f"call_{n}_{k}", "type": "function", "function": c["function"]}
                               for k, c in enumerate(m["tool_calls"])]
        messages.append(m)
    return messages, tools


def tokenize_chat(ep, row: dict, chat_template: str | None = None) -> list[int]:
    """The server's tokens for a whole conversation through its chat template (no generation prompt)."""
    messages, tools = openai_messages(row)
    body = {"model": ep.model, "messages": messages, "tools": tools or None, "add_generation_prompt": False}
    if chat_template is not None:
        body["chat_template"] = chat_template
    return post(ep.root_url, "/tokenize", body, ep.api_key)["tokens"]


def detokenize(ep, ids: list[int]) -> str:
    return post(ep.root_url, "/detokenize", {"model": ep.model, "tokens": ids}, ep.api_key)["prompt"]


def prompt_logprobs(ep, ids: list[int]) -> list[float | None]:
    """log p(token t | tokens < t) under the served model for every t (None at t = 0)."""
    body = {"model": ep.model, "prompt": ids, "max_tokens": 1, "echo": True, "temperature": 0,
            "prompt_logprobs": 0, "logprobs": 0}
    out = post(ep.root_url, "/v1/completions", body, ep.api_key)["choices"][0]["prompt_logprobs"]
    if out is None or len(out) != len(ids):
        raise ServedError(f"/v1/completions returned {0 if out is None else len(out)} prompt logprobs for {len(ids)} tokens")
    return [None if d is None else d[str(tok)]["logprob"] for d, tok in zip(out, ids)]


def served_dtype(endpoint_json: dict | None, configured: str) -> str:
    """The dtype the server computes in: serve.dtype, or for `auto` what vLLM's log says it chose."""
    if configured != "auto":
        return configured
    log = Path((endpoint_json or {}).get("log") or "/nonexistent")
    if log.is_file():
        found = re.findall(r"dtype=torch\.(\w+)", log.read_text(errors="replace"))
        if found:
            return found[-1]
    return "unknown"
