"""aiohttp streaming client for `/v1/chat/completions`: load levels -> per-request records.

Modes: closed loop (a fixed number of requests in flight, each slot sends its next request as
soon as the previous one ends) and open loop (Poisson arrivals at a rate, no cap on requests in
flight). Each level sends `warmup` requests first (closed loop, not recorded), then at most
`num_requests` requests and stops issuing new ones after `duration_s`; requests in flight at
that point finish (bounded by the per-request timeout) and are counted.

Nothing here computes a statistic: see metrics.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import aiohttp
from tqdm.auto import tqdm

from experiments.bench.records import ErrorKind, RequestRecord
from experiments.core.procs import bearer

# Any of these non-empty in a delta means the model produced output (the role chunk has none).
TOKEN_FIELDS = ("content", "tool_calls", "reasoning_content", "reasoning")


@dataclass(frozen=True)
class LoadSpec:
    """One load level."""

    mode: str = "closed"                 # "closed" | "open"
    concurrency: int | None = None       # closed loop
    rate: float | None = None            # open loop, requests/s
    num_requests: int = 100              # cap
    duration_s: float | None = None      # cap on the time new requests are issued
    warmup: int = 0
    timeout_s: float = 120.0             # per request, whole stream
    seed: int = 0                        # Poisson arrival times

    def __post_init__(self):
        if self.mode == "closed" and not (self.concurrency and self.concurrency > 0):
            raise ValueError("closed loop needs concurrency >= 1")
        if self.mode == "open" and not (self.rate and self.rate > 0):
            raise ValueError("open loop needs rate > 0")
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode={self.mode!r}: expected closed or open")

    @property
    def label(self) -> str:
        return f"c{self.concurrency}" if self.mode == "closed" else f"r{self.rate:g}"


@dataclass
class LevelResult:
    spec: LoadSpec
    records: list[RequestRecord]
    warmup_failed: int = 0
    meta: dict = field(default_factory=dict)
    server_gone: str | None = None       # why the level stopped issuing requests early


# A request that failed like this may mean the server is gone: /health decides.
CONNECTION_KINDS = (ErrorKind.CONNECTION_ERROR.value, ErrorKind.CONNECTION_DROPPED.value)


def root_url(endpoint: str) -> str:
    """The server root of any form chat_url accepts (where /health lives)."""
    return chat_url(endpoint).removesuffix("/chat/completions").removesuffix("/v1")


class Watch:
    """Is the server still there? After a request fails with a connection error, probe /health
    (`probes` times, `interval_s` apart); when none answers, `gone` says why and the level
    issues no further request (requests in flight finish)."""

    def __init__(self, session, root: str, headers: dict, probes: int = 3, interval_s: float = 0.5):
        self.session, self.url, self.headers = session, root + "/health", headers
        self.probes, self.interval_s = probes, interval_s
        self.gone: str | None = None
        self._lock = asyncio.Lock()

    async def saw(self, rec: RequestRecord) -> None:
        if rec.error_kind not in CONNECTION_KINDS or self.gone:
            return
        async with self._lock:
            if self.gone:
                return
            for attempt in range(self.probes):
                if await self._answers():
                    return
                if attempt + 1 < self.probes:
                    await asyncio.sleep(self.interval_s)
            self.gone = f"{rec.error_kind} ({rec.error}), then {self.probes} failed /health probes of {self.url}"

    async def _answers(self) -> bool:
        try:
            async with self.session.get(self.url, headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False


def chat_url(endpoint: str) -> str:
    """Accepts a server root, an OpenAI base URL (…/v1) or the full chat-completions URL."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    return endpoint + ("/chat/completions" if endpoint.endswith("/v1") else "/v1/chat/completions")


def auth_headers(api_key: str | None = None, api_key_env: str | None = None) -> dict:
    return bearer(api_key or (os.environ.get(api_key_env) if api_key_env else None))


def encode_body(body: dict, model: str) -> bytes:
    return json.dumps({**body, "model": model, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()


async def stream_request(session: aiohttp.ClientSession, url: str, payload: bytes, request_id: str,
                         *, headers: dict | None = None, timeout_s: float = 120.0,
                         scheduled: float | None = None) -> RequestRecord:
    """Send one streaming request; never raises: every outcome becomes a record."""
    rec = RequestRecord(request_id=request_id, start=time.perf_counter(), scheduled=scheduled)
    done = False
    try:
        async with session.post(url, data=payload, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            rec.status = resp.status
            if resp.status != 200:
                text = await resp.text()
                rec.error_kind = (ErrorKind.HTTP_5XX if resp.status >= 500 else ErrorKind.HTTP_4XX).value
                rec.error = f"HTTP {resp.status}: {text[:300]}"
                return rec
            buf = b""
            async for data in resp.content.iter_any():
                now = time.perf_counter()        # one arrival time per network read
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue                 # blank separators, SSE comments, event: lines
                    payload_ = line[5:].strip()
                    if payload_ == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(payload_)
                    if obj.get("error"):
                        rec.error_kind = ErrorKind.STREAM_ERROR.value
                        rec.error = json.dumps(obj["error"])[:300]
                        continue
                    choices = obj.get("choices")
                    if choices:
                        delta = choices[0].get("delta") or {}
                        if any(delta.get(k) for k in TOKEN_FIELDS):
                            if rec.first_token is None:
                                rec.first_token = now
                            rec.token_times.append(now)
                    usage = obj.get("usage")
                    if usage:
                        rec.prompt_tokens = usage.get("prompt_tokens")
                        rec.completion_tokens = usage.get("completion_tokens")
        if rec.error_kind is None and not done:
            rec.error_kind = ErrorKind.INCOMPLETE_STREAM.value
            rec.error = "stream ended without data: [DONE]"
        rec.success = rec.error_kind is None
    except TimeoutError:                          # aiohttp's timeouts subclass it
        rec.error_kind, rec.error = ErrorKind.TIMEOUT.value, f"no complete response within {timeout_s} s"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        rec.error_kind, rec.error = ErrorKind.CONNECTION_DROPPED.value, _msg(exc)
    except aiohttp.ClientConnectorError as exc:
        rec.error_kind, rec.error = ErrorKind.CONNECTION_ERROR.value, _msg(exc)
    except aiohttp.ClientError as exc:
        rec.error_kind, rec.error = ErrorKind.CONNECTION_DROPPED.value, _msg(exc)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        rec.error_kind, rec.error = ErrorKind.BAD_RESPONSE.value, _msg(exc)
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not die of them
        rec.error_kind, rec.error = ErrorKind.CLIENT_ERROR.value, _msg(exc)
    finally:
        rec.end = time.perf_counter()
    return rec


def _msg(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def _closed(payloads, ids, concurrency, duration_s, send, on_done, stop=lambda: False) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    deadline = None if duration_s is None else time.perf_counter() + duration_s
    it = iter(range(len(payloads)))

    async def slot():
        for i in it:                                   # shared iterator: each index taken once
            if stop() or (deadline is not None and time.perf_counter() >= deadline):
                return
            rec = await send(payloads[i], ids[i], None)
            records.append(rec)
            await on_done(rec)

    await asyncio.gather(*(slot() for _ in range(concurrency)))
    return records


async def _open(payloads, ids, rate, duration_s, seed, send, on_done, stop=lambda: False) -> list[RequestRecord]:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    due = t0
    tasks = []

    async def one(i, when):
        rec = await send(payloads[i], ids[i], when)
        await on_done(rec)
        return rec

    for i in range(len(payloads)):
        due += rng.expovariate(rate)                   # Poisson process: exponential gaps
        if duration_s is not None and due - t0 > duration_s:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if stop():
            break
        tasks.append(asyncio.create_task(one(i, due)))
    return list(await asyncio.gather(*tasks))


async def run_level_async(endpoint: str, model: str, bodies: Sequence[dict], spec: LoadSpec, *,
                          headers: dict | None = None, progress: bool = True,
                          on_record: Callable[[RequestRecord], None] | None = None, monitor=None) -> LevelResult:
    """bodies: spec.warmup warm-up bodies first, then the measured ones (reused cyclically
    when num_requests exceeds them). `on_record` sees each measured record as it completes
    (run_bench appends it to the level's records file). The level stops issuing requests once
    the server is found gone (LevelResult.server_gone). monitor: an object with async
    start()/stop(), started after the warm-up and stopped after the last measured request
    (server_metrics.Scraper)."""
    url = chat_url(endpoint)
    warm, measured = list(bodies[: spec.warmup]), list(bodies[spec.warmup:])
    if not measured:
        raise ValueError("no request body left after the warm-up ones")
    n = spec.num_requests
    payloads = [encode_body(measured[i % len(measured)], model) for i in range(n)]
    ids = [f"{spec.label}-{i}" for i in range(n)]
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    # Closed loop never needs more connections than slots; open loop may need any number.
    limit = spec.concurrency if spec.mode == "closed" else 0
    connector = aiohttp.TCPConnector(limit=limit, force_close=False, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        async def send(payload, rid, scheduled):
            return await stream_request(session, url, payload, rid, headers=hdrs,
                                        timeout_s=spec.timeout_s, scheduled=scheduled)

        watch = Watch(session, root_url(endpoint), headers or {})
        stop = lambda: watch.gone is not None  # noqa: E731
        warm_failed = 0
        if warm:
            warm_recs = await _closed([encode_body(b, model) for b in warm],
                                      [f"warmup-{i}" for i in range(len(warm))],
                                      min(len(warm), spec.concurrency or 1), None, send, watch.saw, stop)
            warm_failed = sum(not r.success for r in warm_recs)

        bar = tqdm(total=n, desc=f"bench {spec.label}", unit="req", disable=not progress, leave=False)
        failures = 0

        async def on_done(rec):
            nonlocal failures
            failures += not rec.success
            if on_record is not None:
                on_record(rec)
            bar.update(1)
            elapsed = time.perf_counter() - t_measured
            bar.set_postfix({"req/s": f"{bar.n / elapsed:.2f}" if elapsed > 0 else "-",
                             **({"errors": failures} if failures else {})}, refresh=False)
            await watch.saw(rec)

        t_start = time.time()
        if monitor is not None:
            await monitor.start()
        t_measured = time.perf_counter()
        try:
            if stop():
                records = []
            elif spec.mode == "closed":
                records = await _closed(payloads, ids, spec.concurrency, spec.duration_s, send, on_done, stop)
            else:
                records = await _open(payloads, ids, spec.rate, spec.duration_s, spec.seed, send, on_done, stop)
        finally:
            bar.close()
            if monitor is not None:
                await monitor.stop()
    records.sort(key=lambda r: r.start)
    return LevelResult(spec=spec, records=records, warmup_failed=warm_failed, server_gone=watch.gone,
                       meta={"started_unix": t_start, "url": url, "model": model})


def run_level(endpoint: str, model: str, bodies: Sequence[dict], spec: LoadSpec, **kw) -> LevelResult:
    return asyncio.run(run_level_async(endpoint, model, bodies, spec, **kw))
