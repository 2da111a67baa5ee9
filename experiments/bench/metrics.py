"""Records -> statistics: the one place where benchmark numbers are computed (pure, no I/O).

Definitions (times from `RequestRecord`):
- TTFT  = first_token - start, where first_token is the first chunk carrying content or a tool
          call (vLLM's early role-only chunk does not count).
- E2E   = end - start.
- TPOT  = (E2E - TTFT) / (output_tokens - 1), per request with at least 2 output tokens.
- ITL   = gaps between consecutive token-chunk arrivals, pooled over requests.
- output_tokens = usage.completion_tokens; the count of token chunks only if usage is missing
  (counted in `requests.usage_missing`).
Latency statistics use successful requests. Counts, rates and goodput keep every request,
failed and timed-out ones included, in the denominator.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from experiments.bench.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)
LITTLE_TOLERANCE = 0.10


def per_request(records: Sequence[RequestRecord]) -> pd.DataFrame:
    """One row per request with its derived times in seconds (NaN where undefined)."""
    rows = []
    for r in records:
        end = r.end if r.end is not None else r.start
        ttft = r.first_token - r.start if r.first_token is not None else np.nan
        usage_missing = r.completion_tokens is None
        out = len(r.token_times) if usage_missing else r.completion_tokens
        e2e = end - r.start
        tpot = (e2e - ttft) / (out - 1) if r.success and out > 1 and r.first_token is not None else np.nan
        rows.append({
            "request_id": r.request_id, "success": r.success, "error_kind": r.error_kind,
            "status": r.status, "start": r.start, "end": end, "ttft_s": ttft, "e2e_s": e2e,
            "tpot_s": tpot, "output_tokens": out, "prompt_tokens": r.prompt_tokens,
            "chunks": len(r.token_times), "usage_missing": usage_missing,
            "client_lag_s": r.start - r.scheduled if r.scheduled is not None else np.nan,
        })
    return pd.DataFrame(rows, columns=[
        "request_id", "success", "error_kind", "status", "start", "end", "ttft_s", "e2e_s",
        "tpot_s", "output_tokens", "prompt_tokens", "chunks", "usage_missing", "client_lag_s"])


def itl_seconds(records: Iterable[RequestRecord]) -> np.ndarray:
    """Inter-token gaps of successful requests, pooled (as vLLM's benchmark pools them)."""
    gaps = [np.diff(r.token_times) for r in records if r.success and len(r.token_times) > 1]
    return np.concatenate(gaps) if gaps else np.empty(0)


def stream_delivery(records: Iterable[RequestRecord]) -> dict:
    """How tokens arrived, next to ITL (successful requests, pooled). Three layers can bunch
    tokens, told apart by counts: the server puts several tokens in one SSE chunk (tokens >
    chunks: vLLM merges the deltas of a request whose stream is drained slower than it decodes),
    one network read carries several chunks (chunks > distinct arrival times: the bytes were
    already buffered when our client read them, so they share a timestamp), or neither.
    `zero_gaps_fraction` is the share of ITL gaps that are exactly 0 (the same read)."""
    ok = [r for r in records if r.success and r.token_times]
    chunks = sum(len(r.token_times) for r in ok)
    reads = sum(len(set(r.token_times)) for r in ok)
    tokens = sum(r.completion_tokens or len(r.token_times) for r in ok)
    gaps = itl_seconds(ok)
    return {"tokens_per_chunk": tokens / chunks if chunks else None,
            "chunks_per_read": chunks / reads if reads else None,
            "tokens_per_read": tokens / reads if reads else None,
            "zero_gaps_fraction": float(np.mean(gaps == 0)) if gaps.size else None}


def distribution_ms(values_s) -> dict:
    """mean/median/p90/p95/p99/max in milliseconds; None for every field when there is no value."""
    v = np.asarray(values_s, dtype=float)
    v = v[~np.isnan(v)] * 1000.0
    keys = ["mean", "median", *[f"p{p}" for p in PERCENTILES[1:]], "max"]
    if v.size == 0:
        return {**dict.fromkeys(keys), "n": 0}
    pct = np.percentile(v, PERCENTILES)
    return {"mean": float(np.mean(v)), "median": float(pct[0]),
            **{f"p{p}": float(x) for p, x in zip(PERCENTILES[1:], pct[1:])},
            "max": float(np.max(v)), "n": int(v.size)}


def summarize(records: Sequence[RequestRecord], *, slo_ttft_ms: float | None = None,
              slo_e2e_ms: float | None = None, target_concurrency: float | None = None,
              offered_rate: float | None = None) -> dict:
    """The summary of one load level.

    target_concurrency (closed loop) or offered_rate (open loop, requests/s) is what the client
    was asked to sustain; the Little's-law check compares the concurrency the records show
    against it.
    """
    df = per_request(records)
    n = len(df)
    ok = df[df["success"].astype(bool)]
    window = float(df["end"].max() - df["start"].min()) if n else 0.0
    per_s = (lambda x: x / window) if window > 0 else (lambda x: None)

    out_tokens = float(ok["output_tokens"].sum())
    in_tokens = float(ok["prompt_tokens"].fillna(0).sum())

    # Little's law. The measured side, mean concurrency = sum(latencies)/window, is by
    # construction throughput x mean latency over a window holding every request whole, so
    # the check compares it with the load the client was asked to hold: C in closed loop,
    # arrival rate x mean latency in open loop (the realized arrival rate of the scheduled
    # times, so Poisson noise of a short run is not mistaken for a miss). A miss means the
    # client fell behind, or the run is too short for its ramp-up and drain (~latency/window).
    mean_latency = float(df["e2e_s"].mean()) if n else None
    mean_conc = per_s(float(df["e2e_s"].sum())) if n else None
    arrival_rate = _arrival_rate(records)
    target = target_concurrency
    if target is None and offered_rate is not None and arrival_rate and mean_latency is not None:
        target = arrival_rate * mean_latency
    rel_err = abs(mean_conc - target) / target if target and mean_conc is not None else None

    ttft_ms = ok["ttft_s"] * 1000.0
    e2e_ms = ok["e2e_s"] * 1000.0
    good = ok["ttft_s"].notna()
    if slo_ttft_ms is not None:
        good &= ttft_ms <= slo_ttft_ms
    if slo_e2e_ms is not None:
        good &= e2e_ms <= slo_e2e_ms
    n_good = int(good.sum())

    failed = df[~df["success"].astype(bool)]
    return {
        "requests": {
            "total": n, "succeeded": len(ok), "failed": len(failed),
            "error_rate": len(failed) / n if n else None,
            "errors_by_kind": dict(Counter(failed["error_kind"].fillna("unknown"))),
            "without_tokens": int(ok["ttft_s"].isna().sum()),
            "usage_missing": int(ok["usage_missing"].sum()),
        },
        "window_s": window,
        "throughput": {
            "requests_per_s": per_s(len(ok)),            # successful requests
            "attempted_requests_per_s": per_s(n),
            "output_tokens_per_s": per_s(out_tokens),
            "total_tokens_per_s": per_s(out_tokens + in_tokens),
        },
        "tokens": {
            "prompt_mean": float(ok["prompt_tokens"].mean()) if len(ok) else None,
            "output_mean": float(ok["output_tokens"].mean()) if len(ok) else None,
            "output_total": int(out_tokens),
        },
        "ttft_ms": distribution_ms(ok["ttft_s"]),
        "tpot_ms": distribution_ms(ok["tpot_s"]),
        "itl_ms": distribution_ms(itl_seconds(records)),
        "stream": stream_delivery(records),
        "e2e_ms": distribution_ms(ok["e2e_s"]),
        "littles_law": {
            "mean_concurrency": mean_conc,                 # sum(E2E)/window = throughput x mean E2E
            "throughput_x_mean_latency": per_s(n) * mean_latency if window > 0 and n else None,
            "target_concurrency": target,
            "offered_rate": offered_rate,
            "arrival_rate": arrival_rate if offered_rate is not None else None,
            "rel_error": rel_err,
            "ok": None if rel_err is None else bool(rel_err <= LITTLE_TOLERANCE),
        },
        "goodput": {
            "slo": {"ttft_ms": slo_ttft_ms, "e2e_ms": slo_e2e_ms},
            "requests": n_good,
            "fraction": n_good / n if n else None,          # of all requests, failed ones included
            "requests_per_s": per_s(n_good),
        },
        "client_lag_ms": distribution_ms(df["client_lag_s"]),   # open loop: start - scheduled
    }


def _arrival_rate(records: Sequence[RequestRecord]) -> float | None:
    """Requests per second between the first and the last (scheduled, else actual) send."""
    times = sorted(r.scheduled if r.scheduled is not None else r.start for r in records)
    span = times[-1] - times[0] if times else 0.0
    return (len(times) - 1) / span if span > 0 else None


def flatten(summary: dict, prefix: str = "") -> dict:
    """{"ttft_ms": {"median": x}} -> {"ttft_ms_median": x}: one row of the sweep table / MLflow metrics."""
    flat = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat
