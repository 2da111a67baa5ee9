"""The server's own view of a load level: vLLM's Prometheus `/metrics`, scraped while the level runs.

A `Scraper` runs in the client's event loop: one scrape just before the level's first measured
request (the baseline), one every `interval_s` while it runs, and after its last request has
finished, scrapes until the server is idle and its generation-token counter has stopped moving
(`settle_timeout_s` at most). Counter and histogram deltas are final minus baseline, so warm-up
requests (sent before the baseline) are not counted.

Parsing is prometheus_client's own text parser; samples are summed over their labels (engines,
model names), histogram buckets kept per `le`. Only `vllm:` samples are kept. The raw scrapes go
to server_metrics_<level>.jsonl, one line per scrape; histogram buckets only in the first and the
last line (the only ones a delta needs; they are most of a scrape's size).

Names (vLLM 0.32/0.33 first, older spellings after) are looked up in order; a metric the server
does not export is reported as None and listed under `absent`, never guessed.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Iterable, Mapping, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from experiments.bench.client import root_url

GAUGES = {  # summary key -> candidate sample names
    "requests_running": ("vllm:num_requests_running",),
    "requests_waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),  # a fraction, 0..1
}
COUNTERS = {
    "generation_tokens": ("vllm:generation_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "preemptions": ("vllm:num_preemptions_total",),
    "requests_succeeded": ("vllm:request_success_total",),
}
HISTOGRAMS = {
    "queue_time": ("vllm:request_queue_time_seconds",),
    "prefill_time": ("vllm:request_prefill_time_seconds",),
    "decode_time": ("vllm:request_decode_time_seconds",),
    "ttft": ("vllm:time_to_first_token_seconds",),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
}


def metrics_url(endpoint: str) -> str:
    """Server root, …/v1 or …/v1/chat/completions -> the root's /metrics."""
    return root_url(endpoint) + "/metrics"


def parse(text: str) -> dict:
    """Prometheus text -> {"values": {sample: float}, "buckets": {histogram: {le: cumulative}}}."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.startswith("vllm:") or s.name.endswith("_created"):
                continue
            if s.name.endswith("_bucket"):
                per = buckets.setdefault(s.name[: -len("_bucket")], {})
                per[s.labels["le"]] = per.get(s.labels["le"], 0.0) + s.value
            else:
                values[s.name] = values.get(s.name, 0.0) + s.value
    return {"values": values, "buckets": buckets}


class Scraper:
    """Background scraping of one level (see the module docstring). Never raises into the level:
    a failed scrape is a line with an `error`; if the baseline fails, nothing else is scraped."""

    def __init__(self, url: str, interval_s: float = 0.5, settle_timeout_s: float = 5.0,
                 headers: Mapping[str, str] | None = None):
        if not interval_s > 0:
            raise ValueError(f"bench.server_metrics.interval_s={interval_s!r}: must be > 0")
        self.url, self.interval_s, self.settle_timeout_s = url, float(interval_s), float(settle_timeout_s)
        self.headers = dict(headers or {})
        self.scrapes: list[dict] = []
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._t0 = 0.0

    async def _scrape(self, phase: str) -> dict:
        now = time.perf_counter()
        line = {"t": round(now - self._t0, 4), "unix": time.time(), "phase": phase}
        try:
            async with self._session.get(self.url, headers=self.headers,
                                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ValueError(f"GET {self.url}: HTTP {resp.status}")
            parsed = parse(text)
            if not parsed["values"]:
                raise ValueError(f"GET {self.url}: no vllm: metric in the answer (not a vLLM server?)")
            line.update(parsed)
        except Exception as exc:  # noqa: BLE001 - a scrape failure is data, not a crash of the level
            line["error"] = f"{type(exc).__name__}: {exc}"[:300]
        self.scrapes.append(line)
        return line

    async def start(self) -> None:
        self._t0 = time.perf_counter()
        self._session = aiohttp.ClientSession()
        if "error" not in await self._scrape("baseline"):
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._scrape("run")

    async def stop(self) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                await self._settle()
        finally:
            await self._session.close()

    async def _settle(self) -> None:
        deadline = time.perf_counter() + self.settle_timeout_s
        prev = None
        while True:
            line = await self._scrape("final")
            v = line.get("values") or {}
            tokens = _first(v, COUNTERS["generation_tokens"])[1]
            idle = not any(_first(v, GAUGES[k])[1] for k in ("requests_running", "requests_waiting"))
            if "error" in line or (idle and prev is not None and tokens == prev) or time.perf_counter() > deadline:
                return
            prev = tokens
            await asyncio.sleep(min(0.1, self.interval_s))


# --- pure: scrapes -> summary ----------------------------------------------------------------

def _first(values: Mapping[str, float], names: Sequence[str]) -> tuple[str | None, float | None]:
    for name in names:
        if name in values:
            return name, values[name]
    return None, None


def histogram_quantile(q: float, buckets: Mapping[str, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative bucket counts (linear inside a bucket; the
    highest finite bound when the rank falls in +Inf), except that a rank inside the first bucket
    gives None: below the histogram's resolution, an interpolated value would be invented (vLLM's
    latency buckets start at 0.3 s; a tiny model's queue times are fractions of a millisecond)."""
    pts = sorted((math.inf if le == "+Inf" else float(le), c) for le, c in buckets.items())
    total = pts[-1][1] if pts else 0
    if not total:
        return None
    rank, lo_bound, lo_count = q * total, None, 0.0
    for bound, count in pts:
        if count >= rank:
            if lo_bound is None:
                return None
            if math.isinf(bound):
                return lo_bound
            return lo_bound + (bound - lo_bound) * ((rank - lo_count) / (count - lo_count) if count > lo_count else 1)
        lo_bound, lo_count = bound, count
    return lo_bound


def _hist_delta(first: dict, last: dict, name: str) -> dict | None:
    vf, vl = first["values"], last["values"]
    if f"{name}_count" not in vl:
        return None
    count = vl[f"{name}_count"] - vf.get(f"{name}_count", 0.0)
    total = vl[f"{name}_sum"] - vf.get(f"{name}_sum", 0.0)
    b0, b1 = first["buckets"].get(name, {}), last["buckets"].get(name, {})
    delta = {le: c - b0.get(le, 0.0) for le, c in b1.items()}
    ms = lambda s: None if s is None else s * 1000.0  # noqa: E731
    first = min((float(le) for le in delta if le != "+Inf"), default=None)
    return {"count": int(round(count)), "mean_ms": ms(total / count) if count else None,
            "resolution_ms": ms(first),             # quantiles below the first bucket bound are None
            "p50_ms": ms(histogram_quantile(0.5, delta)), "p90_ms": ms(histogram_quantile(0.9, delta)),
            "p99_ms": ms(histogram_quantile(0.99, delta))}


def summarize(scrapes: Sequence[dict]) -> dict:
    """Per-level summary of the raw scrapes (pure). `available` False with the reason when the
    baseline or the final scrape failed; gauge statistics over the scrapes taken while it ran."""
    good = [s for s in scrapes if "error" not in s]
    base = next((s for s in scrapes if s.get("phase") == "baseline"), None)
    if base is None or "error" in base:
        return {"available": False, "reason": base["error"] if base else "not scraped", "scrapes": len(scrapes)}
    last = good[-1]
    if last is base or last.get("phase") != "final":
        return {"available": False, "reason": "no final scrape after the level", "scrapes": len(scrapes)}
    out: dict = {"available": True, "scrapes": len(scrapes), "scrape_errors": len(scrapes) - len(good),
                 "names": {}, "absent": []}
    running = [s for s in good if s["phase"] == "run"] or [base, last]
    for key, names in GAUGES.items():
        name, _ = _first(last["values"], names)
        vals = [s["values"][name] for s in running if name in s["values"]] if name else []
        out[key] = {"mean": sum(vals) / len(vals), "max": max(vals), "n": len(vals)} if vals else None
        _note(out, key, name)
    for key, names in COUNTERS.items():
        name, end = _first(last["values"], names)
        out[key] = None if name is None else end - base["values"].get(name, 0.0)
        _note(out, key, name)
    hits, queries = out["prefix_cache_hits"], out["prefix_cache_queries"]
    out["prefix_cache_hit_rate"] = hits / queries if hits is not None and queries else None
    for key, names in HISTOGRAMS.items():
        name = next((n for n in names if f"{n}_count" in last["values"]), None)
        out[key] = _hist_delta(base, last, name) if name else None
        _note(out, key, name)
    return out


def _note(out: dict, key: str, name: str | None) -> None:
    if name is None:
        out["absent"].append(key)
    else:
        out["names"][key] = name


def cross_check(level: Mapping, server: Mapping) -> dict:
    """Client vs server: output tokens (exact), TTFT vs the server's queue + prefill (means:
    vLLM's buckets are too coarse for a tiny model's milliseconds)."""
    if not server.get("available"):
        return {"available": False}
    client_tokens = level["tokens"]["output_total"]
    server_tokens = server["generation_tokens"]
    qp = [server[k]["mean_ms"] if server.get(k) else None for k in ("queue_time", "prefill_time")]
    server_qp = qp[0] + qp[1] if None not in qp else None
    ttft = level["ttft_ms"]
    failed = level["requests"]["failed"]
    return {
        "available": True,
        "client_output_tokens": client_tokens,
        "server_generation_tokens": None if server_tokens is None else int(round(server_tokens)),
        # Failed requests may have generated tokens the client never got a usage block for.
        "tokens_match": None if server_tokens is None else int(round(server_tokens)) == client_tokens,
        "tokens_comparable": failed == 0,
        "client_ttft_ms_median": ttft["median"], "client_ttft_ms_mean": ttft["mean"],
        "server_queue_plus_prefill_ms_mean": server_qp,
        "server_ttft_ms_mean": server["ttft"]["mean_ms"] if server.get("ttft") else None,
        # What the client adds on top of the engine: HTTP, tokenization, detokenization, streaming.
        "client_minus_server_ttft_ms": (ttft["mean"] - server_qp) if server_qp is not None and ttft["mean"] is not None else None,
    }


def raw_lines(scrapes: Sequence[dict]) -> Iterable[str]:
    """JSON lines of the scrapes, buckets kept only in the first and the last."""
    for i, s in enumerate(scrapes):
        keep = i in (0, len(scrapes) - 1)
        yield json.dumps(s if keep else {k: v for k, v in s.items() if k != "buckets"}, separators=(",", ":"))


def read_jsonl(path) -> list[dict]:
    from pathlib import Path

    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def timeseries_figure(levels: Mapping[str, Sequence[dict]]):
    """KV-cache usage and queue depth (waiting, running) over each level's time; None when no level
    has server metrics."""
    series = {label: [s for s in scrapes if "error" not in s] for label, scrapes in levels.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for label, scrapes in series.items():
        t = [s["t"] for s in scrapes]
        for ax, key in zip(axes, ("kv_cache_usage", "requests_waiting", "requests_running")):
            ys = [_first(s["values"], GAUGES[key])[1] for s in scrapes]
            if any(y is not None for y in ys):
                ax.plot(t, [math.nan if y is None else y for y in ys], ".-", label=label)
    for ax, title in zip(axes, ("KV-cache usage (fraction)", "requests waiting (queue depth)", "requests running")):
        ax.set(title=title, xlabel="seconds since the level's baseline scrape")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def scraper_for(endpoint: str, cfg: Mapping | None, headers: Mapping[str, str] | None = None) -> Scraper | None:
    """The level's Scraper from bench.server_metrics ({enabled, interval_s, settle_timeout_s}), or None."""
    if not cfg or not cfg.get("enabled", True):
        return None
    return Scraper(metrics_url(endpoint), interval_s=float(cfg.get("interval_s", 0.5)),
                   settle_timeout_s=float(cfg.get("settle_timeout_s", 5.0)), headers=headers)


def level_outputs(out_dir, label: str, scrapes: Sequence[dict], level: Mapping) -> dict:
    """Write server_metrics_<label>.jsonl; return the summary's `server` and `server_checks`."""
    from pathlib import Path

    from experiments.core.runs import write_text_atomic

    write_text_atomic(Path(out_dir) / f"server_metrics_{label}.jsonl", "".join(f"{x}\n" for x in raw_lines(scrapes)))
    server = summarize(scrapes)
    return {"server": server, "server_checks": cross_check(level, server)}
