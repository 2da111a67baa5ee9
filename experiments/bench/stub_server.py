"""A local streaming stub of `/v1/chat/completions` with known timing and injected faults.

Shaped like vLLM's stream: an early role-only chunk (`{"role": "assistant", "content": ""}`,
sent at once, before any token), then one chunk per token, a finish chunk, the usage block when
`stream_options.include_usage` is set, then `data: [DONE]`. Tokens are due at fixed offsets
from the request's arrival (TTFT, then one every ITL), so delays do not drift.

Server defaults come from the command line; a request may override them with a `stub` object
in its body: {"ttft_ms", "itl_ms", "n_tokens", "fault", "tool_call"}. Faults:
  http_500 / http_400  error status, no stream
  drop                 connection closed after half the tokens (mid-stream)
  hang                 role chunk, then nothing (the client's timeout fires)
  stream_error         an error object inside the stream, then [DONE]
--instant: no delays at all, the whole stream in one write (client-overhead benchmark).
--die-after N: the server SIGKILLs itself when chat request N+1 arrives (dies mid-level at a
known point). --api-key K: 401 for any request without `Authorization: Bearer K`, /health too
(stricter than vLLM, so a client that forgets the header on any request is caught).
--max-concurrent K: at most K requests in service; one arriving while K are in service gets
HTTP 503 at once (a loss system: with Poisson arrivals and a fixed latency its refused fraction
is Erlang's B formula, so its capacity at an SLO is known exactly; capacity-search tests).
GET /stats: what the stub really did (served, refused, mean hold time).

  python -m experiments.bench.stub_server --port 8150 --ttft-ms 50 --itl-ms 10 --n-tokens 16
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import time
from dataclasses import dataclass, replace
from functools import lru_cache

from aiohttp import web

FAULTS = ("http_500", "http_400", "drop", "hang", "stream_error")


@dataclass(frozen=True)
class StubConfig:
    ttft_s: float = 0.05
    itl_s: float = 0.01
    n_tokens: int | None = 16      # None: the request's max_tokens
    fault: str | None = None
    tool_call: bool = False        # stream tool-call deltas instead of content
    instant: bool = False
    max_concurrent: int | None = None   # server-wide; None: unlimited


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": "stub",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


ROLE = _event(_chunk({"role": "assistant", "content": ""}))
DONE = b"data: [DONE]\n\n"


@lru_cache(maxsize=64)
def _token_events(n: int, tool_call: bool) -> tuple[bytes, ...]:
    """Pre-encoded token chunks: the stub must cost far less than the client it measures."""
    if not tool_call:
        return tuple(_event(_chunk({"content": f" t{i}"})) for i in range(n))
    events = [_event(_chunk({"tool_calls": [{"index": 0, "id": "call_stub", "type": "function",
                                              "function": {"name": "stub_tool", "arguments": ""}}]}))]
    events += [_event(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": f"{i}"}}]}))
               for i in range(1, n)]
    return tuple(events[:n])


def _usage_event(prompt_tokens: int, n: int) -> bytes:
    return _event({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                   "model": "stub", "choices": [],
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                             "total_tokens": prompt_tokens + n}})


def _prompt_tokens(body: dict) -> int:
    # A deterministic stand-in for tokenization: whitespace-separated words of all messages.
    return sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))


def _settings(base: StubConfig, body: dict) -> StubConfig:
    o = body.get("stub") or {}
    cfg = replace(base, fault=o.get("fault", base.fault), tool_call=o.get("tool_call", base.tool_call),
                  ttft_s=o["ttft_ms"] / 1000 if "ttft_ms" in o else base.ttft_s,
                  itl_s=o["itl_ms"] / 1000 if "itl_ms" in o else base.itl_s,
                  n_tokens=o.get("n_tokens", base.n_tokens))
    if cfg.n_tokens is None:
        cfg = replace(cfg, n_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16))
    return cfg


def make_app(base: StubConfig, die_after: int | None = None, api_key: str | None = None) -> web.Application:
    arrivals = itertools.count(1)
    busy = 0
    stats = {"served": 0, "refused": 0, "hold_s_sum": 0.0}   # GET /stats: what the stub really did

    @web.middleware
    async def require_key(request: web.Request, handler):
        if api_key is not None and request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "invalid API key", "code": 401}}, status=401)
        return await handler(request)

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal busy
        if die_after is not None and next(arrivals) > die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # this request is never answered
        if base.max_concurrent is not None and busy >= base.max_concurrent:
            stats["refused"] += 1
            return web.json_response({"error": {"message": "stub at max_concurrent", "code": 503}}, status=503)
        busy += 1
        held = time.perf_counter()
        try:
            return await serve(request)
        finally:
            busy -= 1
            stats["served"] += 1
            stats["hold_s_sum"] += time.perf_counter() - held

    async def stats_view(_request):
        n = stats["served"]
        return web.json_response({**stats, "mean_hold_s": stats["hold_s_sum"] / n if n else None})

    async def serve(request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await request.json()
        cfg = _settings(base, body)
        if cfg.fault in ("http_500", "http_400"):
            status = int(cfg.fault[-3:])
            return web.json_response({"error": {"message": f"stub {cfg.fault}", "code": status}}, status=status)
        events = _token_events(cfg.n_tokens, cfg.tool_call)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        tail = [_event(_chunk({}, "length"))]
        if include_usage:
            tail.append(_usage_event(_prompt_tokens(body), cfg.n_tokens))
        tail.append(DONE)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if cfg.instant and cfg.fault is None:
            await resp.write(b"".join((ROLE, *events, *tail)))
            await resp.write_eof()
            return resp

        await resp.write(ROLE)                 # the early role-only chunk, before any token
        if cfg.fault == "hang":
            # aiohttp does not cancel handlers when the client leaves: poll for it instead.
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)
            return resp
        if cfg.fault == "stream_error":
            await resp.write(_event({"error": {"message": "stub stream error", "code": 500}}))
            await resp.write(DONE)
            await resp.write_eof()
            return resp
        for i, ev in enumerate(events):
            if cfg.fault == "drop" and i == len(events) // 2:
                request.transport.close()     # mid-stream: chunked body never terminated
                return resp
            delay = arrived + cfg.ttft_s + i * cfg.itl_s - time.perf_counter()
            if delay > 0 and not cfg.instant:
                await asyncio.sleep(delay)
            await resp.write(ev)
        await resp.write(b"".join(tail))
        await resp.write_eof()
        return resp

    async def models(_request):
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def health(_request):
        return web.Response(text="ok")

    app = web.Application(middlewares=[require_key])
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models),
                    web.get("/health", health), web.get("/stats", stats_view)])
    return app


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8150)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--n-tokens", type=int, default=16, help="0: use each request's max_tokens")
    p.add_argument("--fault", choices=FAULTS, default=None)
    p.add_argument("--tool-call", action="store_true")
    p.add_argument("--instant", action="store_true")
    p.add_argument("--die-after", type=int, default=None, help="SIGKILL itself on chat request N+1")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer <key> on every request")
    p.add_argument("--max-concurrent", type=int, default=None, help="refuse (503) beyond K in service")
    a = p.parse_args(argv)
    cfg = StubConfig(ttft_s=a.ttft_ms / 1000, itl_s=a.itl_ms / 1000, n_tokens=a.n_tokens or None,
                     fault=a.fault, tool_call=a.tool_call, instant=a.instant, max_concurrent=a.max_concurrent)
    web.run_app(make_app(cfg, a.die_after, a.api_key), host=a.host, port=a.port, access_log=None, print=None,
                handle_signals=True)


if __name__ == "__main__":
    main()
