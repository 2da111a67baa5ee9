"""Section 3, Serving: the latest load test's throughput, latency percentiles and Little's law check."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from experiments.report.common import code_path, fmt, markdown_table, need_merge, rel_path


LATENCY_METRICS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))

LATENCY_STATS = ("mean", "median", "p90", "p95", "p99", "max")


def nearest_level(levels: Sequence[dict], target: int) -> tuple[dict | None, str]:
    """The closed-loop level at concurrency `target`, else the nearest measured one (ties: the
    lower); open-loop only: the level with the highest successful req/s. Returns (level, note)."""
    closed = [lv for lv in levels if lv["summary"]["mode"] == "closed"]
    if closed:
        exact = [lv for lv in closed if int(lv["summary"]["concurrency"]) == int(target)]
        if exact:
            return exact[0], f"measured at concurrency {target}, as `cost.inference_concurrency` asks"
        lv = min(closed, key=lambda lv: (abs(int(lv["summary"]["concurrency"]) - int(target)),
                                          int(lv["summary"]["concurrency"])))
        measured = ", ".join(str(int(x["summary"]["concurrency"])) for x in closed)
        return lv, (f"`cost.inference_concurrency` is {target}, which was not measured (measured: {measured}); "
                    f"the nearest measured level, concurrency {int(lv['summary']['concurrency'])}, is used")
    if levels:
        lv = max(levels, key=lambda lv: lv["summary"]["throughput"]["requests_per_s"] or 0)
        return lv, (f"only open-loop levels were measured; the one with the highest throughput "
                    f"({lv['label']}) is used")
    return None, "no level measured"


def serving_tables(levels: Sequence[dict]) -> dict[str, pd.DataFrame]:
    load, latency, little = [], [], []
    for lv in levels:
        s = lv["summary"]
        level = lv["label"]
        load.append({
            "level": level, "concurrency": fmt(s.get("concurrency")), "rate req/s": fmt(s.get("rate"), 2),
            "requests": fmt(s["requests"]["total"]), "errors": fmt(s["requests"]["failed"]),
            "error rate": fmt(s["requests"]["error_rate"], 3), "req/s": fmt(s["throughput"]["requests_per_s"], 2),
            "output tok/s": fmt(s["throughput"]["output_tokens_per_s"], 1),
            "total tok/s": fmt(s["throughput"]["total_tokens_per_s"], 1),
            "goodput req/s": fmt(s["goodput"]["requests_per_s"], 2),
            "goodput fraction": fmt(s["goodput"]["fraction"], 3),
        })
        for key, name in LATENCY_METRICS:
            d = s[key]
            latency.append({"level": level, "metric": name,
                            **{("p50" if st == "median" else st): fmt(d.get(st), 2) for st in LATENCY_STATS},
                            "n": fmt(d.get("n"))})
        ll = s["littles_law"]
        little.append({
            "level": level, "λ attempted req/s": fmt(s["throughput"]["attempted_requests_per_s"], 3),
            "W mean E2E s": fmt(s["e2e_ms"]["mean"] / 1000 if s["e2e_ms"]["mean"] is not None else None, 4),
            "L = λ·W": fmt(ll["throughput_x_mean_latency"], 3), "asked for": fmt(ll["target_concurrency"], 2),
            "relative error": fmt(ll["rel_error"], 4), "within 10%": fmt(ll["ok"]),
        })
    return {"load": pd.DataFrame(load), "latency": pd.DataFrame(latency), "little": pd.DataFrame(little)}


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines of the Serving section (pure)."""
    sid, kind, bench = d["subject"]["id"], d["kind"], d["bench"]
    L = ["## 3. Serving (load test)\n"]
    add = L.append
    if not bench or not bench["levels"]:
        add(f"No load test of `{sid}` ({kind}): {need_merge(d)}`make bench RUN={sid} MODEL={kind}` writes "
            f"`{sid}/bench/{kind}/`.\n")
        if bench and bench["problems"]:
            add("Unusable bench files: " + "; ".join(bench["problems"]) + ".\n")
        return L
    levels = bench["levels"]
    s0 = levels[0]["summary"]
    wl = s0.get("settings", {}).get("workload", {})
    add(f"Model `{s0['model']}` at `{s0['endpoint']}`, {s0['mode']} loop, workload `{wl.get('name')}` "
        f"(max_tokens {wl.get('max_tokens')}), {s0['settings'].get('num_requests')} requests per level after "
        f"{s0['settings'].get('warmup')} warm-up; SLO for goodput: TTFT ≤ {s0['goodput']['slo']['ttft_ms']} ms, "
        f"E2E ≤ {s0['goodput']['slo']['e2e_ms']} ms. Levels: those of the latest `make bench` "
        f"(`sweep.csv`).\n")
    t = serving_tables(levels)
    add("### Throughput, errors, goodput\n")
    add(markdown_table(t["load"]))
    add("### Latency percentiles (ms)\n")
    add(markdown_table(t["latency"]))
    add("TTFT = first content or tool-call chunk − send; TPOT = (E2E − TTFT) / (output tokens − 1); ITL = gaps "
        "between token chunks, pooled; E2E = last byte − send. Latencies over successful requests; "
        "rates and goodput count every request.\n")
    add("### Little's law\n")
    add(markdown_table(t["little"]))
    add("L = λ·W: attempted requests per second over the level's window times the mean latency; in a closed "
        "loop it must equal the concurrency the client held (the check passes within 10%). W is the mean "
        "E2E of successful requests (all requests succeeded unless the errors column says otherwise).\n")
    L.extend(server_view_lines(levels))
    L.extend(capacity_lines(bench.get("capacity")))
    L.extend(recheck_notes(bench))
    add("Source: " + ", ".join(code_path(d, bench["dir"] / f"summary_{lv['label']}.json") for lv in levels)
        + f" (from {', '.join(code_path(d, lv['records']) for lv in levels)}).\n")
    for p in bench["plots"]:
        add(f"![{p.stem}]({rel_path(p, d['subject']['dir'])})\n")
    add(f"Plots written by `make bench` ({', '.join(code_path(d, p) for p in bench['plots'])}).\n")
    return L


def recheck_notes(bench: dict) -> list[str]:
    """Whether the summaries are reproduced from the raw per-request records."""
    L = []
    recheck = bench.get("recheck", {})
    bad = {k: v for k, v in recheck.items() if v}
    if recheck and not bad:
        L.append("Recomputed from the raw per-request records (`records_<level>.csv`) with the bench's own code: "
                 "every number above equals its summary file (relative tolerance 1e-6).\n")
    elif bad:
        L.append("**Warning**: recomputing from the records does not reproduce: "
                 + "; ".join(f"{k}: {', '.join(v[:6])}" for k, v in bad.items()) + ".\n")
    if bench["problems"]:
        L.append("Skipped: " + "; ".join(bench["problems"]) + ".\n")
    return L


def _stat(d: dict | None, key: str, decimals: int = 2) -> str:
    return fmt(None if not d else d.get(key), decimals)


def server_view_table(levels: Sequence[dict]) -> pd.DataFrame:
    """One row per level from its summary's `server` and `server_checks` (server_metrics.py)."""
    rows = []
    for lv in levels:
        srv, chk = lv["summary"].get("server") or {}, lv["summary"].get("server_checks") or {}
        if not srv.get("available"):
            continue
        rows.append({
            "level": lv["label"], "running mean/max": f"{_stat(srv['requests_running'], 'mean')} / {_stat(srv['requests_running'], 'max', 0)}",
            "waiting mean/max": f"{_stat(srv['requests_waiting'], 'mean')} / {_stat(srv['requests_waiting'], 'max', 0)}",
            "KV-cache mean/max": f"{_stat(srv['kv_cache_usage'], 'mean', 4)} / {_stat(srv['kv_cache_usage'], 'max', 4)}",
            "prefix hit rate": fmt(srv.get("prefix_cache_hit_rate"), 3), "preemptions": fmt(srv.get("preemptions"), 0),
            "queue ms": _stat(srv.get("queue_time"), "mean_ms"), "prefill ms": _stat(srv.get("prefill_time"), "mean_ms"),
            "decode ms": _stat(srv.get("decode_time"), "mean_ms"), "server TTFT ms": _stat(srv.get("ttft"), "mean_ms"),
            "server E2E ms": _stat(srv.get("e2e"), "mean_ms"),
            "client TTFT ms p50/mean": f"{fmt(chk.get('client_ttft_ms_median'))} / {fmt(chk.get('client_ttft_ms_mean'))}",
            "out tokens client/server": f"{fmt(chk.get('client_output_tokens'))} / {fmt(chk.get('server_generation_tokens'))}",
            "tokens match": fmt(chk.get("tokens_match")),
        })
    return pd.DataFrame(rows)


def server_view_lines(levels: Sequence[dict]) -> list[str]:
    table = server_view_table(levels)
    missing = [lv["label"] for lv in levels if not (lv["summary"].get("server") or {}).get("available")]
    L = ["### Server view (vLLM /metrics during each level)\n"]
    if table.empty:
        reasons = {(lv["summary"].get("server") or {}).get("reason", "not scraped (bench.server_metrics.enabled)") for lv in levels}
        return L + [f"No server metrics: {'; '.join(sorted(reasons))}.\n"]
    L.append(markdown_table(table))
    absent = sorted({a for lv in levels for a in (lv["summary"].get("server") or {}).get("absent", [])})
    L.append("Gauges (running, waiting, KV-cache usage as a fraction) over the scrapes taken while the level ran; "
             "counters and histograms as final minus baseline scrape, so warm-up requests are excluded; latencies are "
             "the histograms' means (_sum/_count deltas: vLLM's buckets start at 0.3 s, too coarse for percentiles "
             "here). The client's TTFT contains the server's queue + prefill and adds HTTP, tokenization and "
             "streaming; `tokens match` compares the client's usage totals with the generation-token counter "
             "(exact equality)." + (f" Not exported by this server: {', '.join(absent)}." if absent else "")
             + (f" Levels without server metrics: {', '.join(missing)}." if missing else "") + "\n")
    return L


def capacity_level(bench: dict) -> tuple[dict | None, str]:
    """The level at the capacity rate of `make bench CAPACITY=1` (capacity.json), with a note."""
    cap = bench.get("capacity") or {}
    best = cap.get("at_capacity")
    level = next((lv for lv in bench["levels"] if best and lv["label"] == best["label"]), None)
    if level is None:
        return None, "no capacity found"
    above = cap.get("failed_above")
    return level, (f"the capacity found by `make bench CAPACITY=1`: {best['rate']:g} req/s, the highest Poisson "
                   f"rate with goodput fraction >= {cap['criterion']['goodput_fraction']} within the SLO, error rate <= "
                   f"{cap['criterion']['max_error_rate']} and no queue growth"
                   + (f" ({above['label']} above it failed: {'; '.join(above['reasons'])})" if above else ""))


def capacity_lines(cap: dict | None) -> list[str]:
    if not cap:
        return []
    L = ["### Capacity (max sustainable request rate within the SLO)\n"]
    best, above = cap.get("at_capacity"), cap.get("failed_above")
    if best is None:
        return L + [f"No rate passed ({cap['stopped']}).\n"]
    rows = [{"": name, "rate req/s": fmt(x["rate"], 3), "goodput": fmt(x["goodput_fraction"], 3),
             "error rate": fmt(x["error_rate"], 3), "req/s": fmt(x["throughput_requests_per_s"], 2),
             **{f"{m.split('_')[0].upper()} {st} ms": fmt(x[m][st], 1) for m in ("ttft_ms", "e2e_ms") for st in ("median", "p99")},
             "failed because": "; ".join(x["reasons"]) or "-"}
            for name, x in (("capacity", best), ("failed above", above)) if x]
    L.append(markdown_table(pd.DataFrame(rows)))
    L.append(f"{len(cap['levels'])} levels, {cap['requests_sent']} requests in {cap['elapsed_s']:.0f} s; stopped: "
             f"{cap['stopped']}. Criterion: goodput fraction >= {cap['criterion']['goodput_fraction']} (SLO TTFT <= "
             f"{cap['slo']['ttft_ms']} ms, E2E <= {cap['slo']['e2e_ms']} ms), error rate <= {cap['criterion']['max_error_rate']}, "
             "and steady state: requests in flight over the last third of a level exceed the middle third by at most "
             "max(2, 3·sqrt(middle)) (`capacity.json`, experiments/bench/capacity.py).\n")
    return L
