"""Capacity search: the highest Poisson request rate the server sustains within the SLO.

`make bench CAPACITY=1` (bench.mode=capacity). Open-loop levels at increasing rates: a coarse
sweep (start_rate, x growth each level) until a level fails, then bisection (geometric midpoint)
between the highest passing and the lowest failing rate until they are within rel_tolerance.

A level passes when all of these hold (`verdict`):
- goodput fraction >= goodput_fraction: requests meeting the SLO (TTFT and E2E of
  conf/bench/*.yaml) over all requests sent, failed ones included;
- error rate <= max_error_rate;
- steady state: the queue did not grow. Requests in flight (sent, not finished; the client's view,
  so it holds for any server) are sampled at every send; the mean over the last third of the
  level may exceed the mean over the middle third by at most max(2, 3 sqrt(middle mean)) (Poisson
  noise of a stable queue). A rate above capacity builds a backlog that grows linearly; such a
  level fails even when its requests still met the SLO within the level's length (its later
  requests would not).
Each level runs ceil(rate x level_s) requests (min_requests at least, max_requests_per_level at
most). The search stops by itself: tolerance reached, max_rate passed, min_rate failed,
max_levels, or the max_total_s / max_total_requests budget (the level that would exceed it is
not started).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from experiments.bench import server_metrics as srv
from experiments.bench.records import RequestRecord


@dataclass(frozen=True)
class CapacityConfig:
    start_rate: float = 1.0
    growth: float = 2.0
    min_rate: float = 0.05
    max_rate: float = 1024.0
    rel_tolerance: float = 0.05
    goodput_fraction: float = 0.99
    max_error_rate: float = 0.01
    level_s: float = 20.0
    min_requests: int = 50
    max_requests_per_level: int = 2000
    max_levels: int = 14
    max_total_s: float = 900.0
    max_total_requests: int = 20000

    def __post_init__(self):
        checks = {"start_rate": self.start_rate > 0, "growth": self.growth > 1, "min_rate": 0 < self.min_rate <= self.start_rate,
                  "max_rate": self.max_rate >= self.start_rate, "rel_tolerance": 0 < self.rel_tolerance < 1,
                  "goodput_fraction": 0 < self.goodput_fraction <= 1, "max_error_rate": 0 <= self.max_error_rate <= 1,
                  "level_s": self.level_s > 0, "min_requests": self.min_requests >= 1,
                  "max_requests_per_level": self.max_requests_per_level >= self.min_requests, "max_levels": self.max_levels >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("bench.capacity: invalid " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "CapacityConfig":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"bench.capacity: unknown key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**cfg)


def level_size(rate: float, cfg: CapacityConfig) -> int:
    return int(min(max(math.ceil(rate * cfg.level_s), cfg.min_requests), cfg.max_requests_per_level))


def round_rate(rate: float) -> float:
    """Three significant digits: tidy labels (r12.3), and no level repeated by float noise."""
    return float(f"{rate:.3g}")


def in_flight_at_sends(records: Sequence[RequestRecord]) -> np.ndarray:
    """For each request in send order: how many requests were in flight just after it was sent."""
    starts = np.sort([r.start for r in records])
    ends = np.sort([r.end if r.end is not None else r.start for r in records])
    return np.arange(1, len(starts) + 1) - np.searchsorted(ends, starts, side="right")


def steady(records: Sequence[RequestRecord]) -> dict:
    n = in_flight_at_sends(records)
    if len(n) < 6:
        return {"steady": True, "middle_mean": None, "last_mean": None, "allowed_growth": None}
    third = len(n) // 3
    mid, last = float(n[third:2 * third].mean()), float(n[2 * third:].mean())
    allowed = max(2.0, 3.0 * math.sqrt(mid))
    return {"steady": last - mid <= allowed, "middle_mean": mid, "last_mean": last, "allowed_growth": allowed}


def verdict(summary: Mapping, records: Sequence[RequestRecord], cfg: CapacityConfig) -> dict:
    """Pass/fail of one level, with every reason it failed."""
    good, err = summary["goodput"]["fraction"] or 0.0, summary["requests"]["error_rate"] or 0.0
    st = steady(records)
    reasons = []
    if good < cfg.goodput_fraction:
        reasons.append(f"goodput {good:.3f} < {cfg.goodput_fraction}")
    if err > cfg.max_error_rate:
        reasons.append(f"error rate {err:.3f} > {cfg.max_error_rate}")
    if not st["steady"]:
        reasons.append(f"queue grew: {st['middle_mean']:.1f} -> {st['last_mean']:.1f} in flight")
    return {"passed": not reasons, "reasons": reasons, "goodput_fraction": good, "error_rate": err, **st}


def next_rate(history: Sequence[tuple[float, bool]], cfg: CapacityConfig) -> tuple[float | None, str]:
    """Pure search step: (rate to try next, or None) and why. history: (rate, passed) in run order."""
    if not history:
        return round_rate(cfg.start_rate), "coarse sweep"
    fails = [r for r, ok in history if not ok]
    passes = [r for r, ok in history if ok]
    if not fails:
        nxt = round_rate(max(passes) * cfg.growth)
        return (None, f"every level passed up to max_rate={cfg.max_rate}") if nxt > cfg.max_rate else (nxt, "coarse sweep")
    hi = min(fails)
    below = [r for r in passes if r < hi]
    if not below:
        nxt = round_rate(hi / cfg.growth)
        return (None, f"even min_rate={cfg.min_rate} failed") if nxt < cfg.min_rate else (nxt, "coarse sweep down")
    lo = max(below)
    if hi / lo - 1 <= cfg.rel_tolerance:
        return None, f"bracket {lo:g}..{hi:g} within rel_tolerance={cfg.rel_tolerance}"
    nxt = round_rate(math.sqrt(lo * hi))
    if nxt in (lo, hi):
        return None, f"bracket {lo:g}..{hi:g} cannot be split at 3 significant digits"
    return nxt, "bisection"


class ServerGone(Exception):
    """A level stopped because the server went away: the search ends with what it measured."""


def search(run_level: Callable[[float, int], tuple[dict, Sequence[RequestRecord]]], cfg: CapacityConfig,
           clock: Callable[[], float] = time.monotonic) -> dict:
    """Run levels via run_level(rate, num_requests) -> (summary, records) until next_rate stops
    (or run_level raises ServerGone)."""
    t0, sent, levels = clock(), 0, []
    stopped = None
    while stopped is None:
        rate, why = next_rate([(lv["rate"], lv["passed"]) for lv in levels], cfg)
        n = level_size(rate, cfg) if rate is not None else 0
        if rate is None:
            stopped = why
        elif len(levels) >= cfg.max_levels:
            stopped = f"max_levels={cfg.max_levels} reached"
        elif sent + n > cfg.max_total_requests:
            stopped = f"max_total_requests={cfg.max_total_requests} would be exceeded"
        elif clock() - t0 + n / rate > cfg.max_total_s:
            stopped = f"max_total_s={cfg.max_total_s} would be exceeded"
        else:
            try:
                summary, records = run_level(rate, n)
            except ServerGone as gone:
                stopped = f"server gone: {gone}"
                continue
            sent += n
            levels.append({"rate": rate, "label": summary["label"], "step": why, **verdict(summary, records, cfg),
                           "summary": summary})
    return result(levels, cfg, stopped, clock() - t0)


def result(levels: Sequence[dict], cfg: CapacityConfig, stopped: str, elapsed_s: float) -> dict:
    passed = [lv for lv in levels if lv["passed"]]
    failed = [lv for lv in levels if not lv["passed"]]
    best = max(passed, key=lambda lv: lv["rate"]) if passed else None
    above = min((lv for lv in failed if best is None or lv["rate"] > best["rate"]), key=lambda lv: lv["rate"], default=None)

    def brief(lv):
        if lv is None:
            return None
        s = lv["summary"]
        return {"rate": lv["rate"], "label": lv["label"], "reasons": lv["reasons"], "goodput_fraction": lv["goodput_fraction"],
                "error_rate": lv["error_rate"], "requests": s["requests"]["total"],
                "throughput_requests_per_s": s["throughput"]["requests_per_s"],
                **{m: {k: s[m][k] for k in ("median", "p90", "p99")} for m in ("ttft_ms", "e2e_ms", "tpot_ms")}}

    return {"capacity_rate": best["rate"] if best else None, "at_capacity": brief(best), "failed_above": brief(above),
            "stopped": stopped, "elapsed_s": elapsed_s, "requests_sent": sum(lv["summary"]["requests"]["total"] for lv in levels),
            "criterion": asdict(cfg), "slo": levels[0]["summary"]["goodput"]["slo"] if levels else None,
            "levels": [{k: v for k, v in lv.items() if k != "summary"} for lv in levels]}


def run_capacity(endpoint_url: str, model_name: str, out_dir: str | Path, *, capacity: Mapping | None,
                 workload: Mapping, slo: Mapping | None, seed: int = 0, **bench_kw) -> dict:
    """The search against a server; every level's files as run_bench writes them, then sweep.*
    over all levels (sorted by rate) and capacity.json. Returns capacity.json's content plus the
    level summaries (`summaries`, in run order)."""
    from experiments.bench import run as bench_run
    from experiments.core.runs import write_json_atomic

    cfg = CapacityConfig.from_mapping(bench_run._plain(capacity))
    out_dir = Path(out_dir)
    workload = bench_run._plain(workload)
    summaries = []

    def one(rate: float, n: int):
        k = len(summaries)           # own arrivals and own prompts per level (no replay into a warm cache)
        [summary] = bench_run.run_bench(endpoint_url, model_name, out_dir, mode="open", rate=[rate], num_requests=n,
                                        duration_s=max(cfg.level_s, n / rate) * 1.5, warmup=0,
                                        workload={**workload, "seed": int(workload.get("seed", 0)) + k},
                                        slo=slo, seed=seed + k, **bench_kw)
        summaries.append(summary)
        status = bench_run.read_status(out_dir)
        if status["server_gone"]:
            raise ServerGone(status["server_gone"])
        return summary, bench_run.load_records(out_dir / f"records_{summary['label']}.csv")

    res = search(one, cfg)
    gone = res["stopped"].removeprefix("server gone: ") if res["stopped"].startswith("server gone: ") else None
    bench_run.write_sweep(out_dir, sorted(summaries, key=lambda s: s["rate"]))
    scrapes = {s["label"]: out_dir / f"server_metrics_{s['label']}.jsonl" for s in summaries}
    fig = srv.timeseries_figure({k: srv.read_jsonl(p) for k, p in scrapes.items() if p.is_file()})
    if fig is not None:
        bench_run._save(fig, out_dir / "server_metrics.png")
    write_json_atomic(out_dir / "capacity.json", bench_run._json_clean(res))
    finished = [lv["label"] for lv in res["levels"]]
    bench_run.write_status(out_dir, {"status": "partial" if gone else "done", "mode": "capacity",
                                     "levels": [s["label"] for s in summaries], "finished": finished,
                                     "server_gone": gone})
    return {**res, "summaries": summaries}
