"""A run's held-out prompts (data/heldout.jsonl, never trained on) asked of its served model.

Every held-out row's first assistant turn is sent as an OpenAI chat request with the row's tools
(temperature 0, tool_choice auto); the server's tool parser decides what counts as a call. The
answers are scored by experiments.data.heldout (parsed call / right function / exact arguments)
into results/<run>/heldout/<model>/{items.jsonl, summary.json}.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from experiments.core import runs
from experiments.data import heldout, toolace


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _calls_of(message: dict) -> list[dict]:
    return [{"name": c["function"]["name"], "arguments": c["function"].get("arguments")}
            for c in message.get("tool_calls") or []]


async def _ask(session: aiohttp.ClientSession, url: str, body: dict, sem: asyncio.Semaphore) -> dict:
    async with sem:
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 200:
                    return {"error": f"HTTP {resp.status}: {str(data)[:300]}", "latency_s": time.perf_counter() - t0}
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "latency_s": time.perf_counter() - t0}
    choice = data["choices"][0]
    return {"message": choice["message"], "finish_reason": choice.get("finish_reason"),
            "completion_tokens": (data.get("usage") or {}).get("completion_tokens"),
            "latency_s": round(time.perf_counter() - t0, 3)}


async def _ask_all(base_url: str, bodies: list[dict], api_key: str | None, concurrency: int, timeout_s: float) -> list[dict]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        return await asyncio.gather(*(_ask(session, f"{base_url}/chat/completions", b, sem) for b in bodies))


def run_heldout(base_url: str, model: str, heldout_path: Path, out: Path, *, max_tokens: int, concurrency: int,
                api_key: str | None = None, timeout_s: float = 600.0) -> dict:
    """Ask every held-out prompt, score the answers, write items.jsonl + summary.json; the summary."""
    rows = load_rows(heldout_path)
    prompts = [(i, p) for i, p in enumerate(heldout.prompt_of(toolace.to_native(r)) for r in rows) if p]
    bodies = [{"model": model, "messages": p["messages"], "tools": p["tools"], "tool_choice": "auto",
               "temperature": 0.0, "max_tokens": int(max_tokens)} for _, p in prompts]
    t0 = time.time()
    answers = asyncio.run(_ask_all(base_url, bodies, api_key, int(concurrency), timeout_s))
    wall = time.time() - t0
    items = []
    for (i, p), a in zip(prompts, answers):
        got = _calls_of(a.get("message") or {})
        items.append({"row": i, "expected_calls": p["expected_calls"], "got_calls": got,
                      "content": (a.get("message") or {}).get("content"), "finish_reason": a.get("finish_reason"),
                      "completion_tokens": a.get("completion_tokens"), "latency_s": a.get("latency_s"),
                      "error": a.get("error"), **heldout.score(p["expected_calls"], got)})
    out.mkdir(parents=True, exist_ok=True)
    runs.write_text_atomic(out / "items.jsonl", "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    summary = {"model": model, "source": str(heldout_path), "max_tokens": int(max_tokens),
               **heldout.summarize(items), "wall_s": round(wall, 2)}
    runs.write_json_atomic(out / "summary.json", summary)
    return summary
