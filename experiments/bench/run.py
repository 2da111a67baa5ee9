"""One bench of one model: load levels -> records, summaries, sweep table and plots on disk.

Outputs in out_dir (one folder per bench; every file written to a temp name, then os.replace,
except the records while a level runs):
  bench.json            status: running -> done, or partial when the server went away (which
                        levels were planned, which finished, why it stopped)
  records_<label>.csv   one row per request, appended as each completes (a killed client keeps
                        what it measured), rewritten at the level's end with the derived
                        ttft/tpot/e2e columns (raw times relative to the level's start, token
                        arrival times as a JSON list)
  summary_<label>.json  metrics.summarize(...) plus the level's settings
  sweep.csv, sweep.md   one row per level
  latency.png           TTFT / TPOT / ITL / E2E percentiles against concurrency (or rate)
  throughput.png        output tokens/s, requests/s, goodput and error rate against load
  server_metrics_<label>.jsonl, server_metrics.png   the server's /metrics while each level ran
                        (server_metrics.py; summarised under "server" in each summary)
<label> is c<concurrency> (closed loop) or r<rate> (open loop).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd

from experiments.bench import metrics, server_metrics as srv
from experiments.bench.client import LoadSpec, auth_headers, root_url, run_level
from experiments.bench.records import RequestRecord
from experiments.bench.workloads import build_requests
from experiments.core.procs import healthy
from experiments.core.runs import current_umask

SWEEP_COLUMNS = {  # flattened summary key -> sweep table header
    "label": "level", "requests_total": "requests", "requests_failed": "failed",
    "requests_error_rate": "error_rate", "throughput_requests_per_s": "req/s",
    "throughput_output_tokens_per_s": "out tok/s", "ttft_ms_median": "TTFT p50 ms",
    "ttft_ms_p99": "TTFT p99 ms", "tpot_ms_mean": "TPOT mean ms", "tpot_ms_p99": "TPOT p99 ms",
    "itl_ms_median": "ITL p50 ms", "itl_ms_p99": "ITL p99 ms", "stream_tokens_per_read": "tok/read",
    "stream_zero_gaps_fraction": "ITL=0 share", "e2e_ms_median": "E2E p50 ms",
    "e2e_ms_p99": "E2E p99 ms", "goodput_fraction": "goodput", "littles_law_mean_concurrency": "L",
    "littles_law_ok": "Little ok", "server_requests_waiting_max": "srv waiting max",
    "server_kv_cache_usage_max": "srv KV max", "server_queue_time_mean_ms": "srv queue ms",
    "server_checks_tokens_match": "tokens match",
}


def run_bench(endpoint_url: str, model_name: str, out_dir: str | Path, *, mode: str = "closed",
              concurrencies: Sequence[int] = (16,), rate: float | Sequence[float] | None = None,
              num_requests: int = 100, duration_s: float | None = None, warmup: int = 0,
              workload: Mapping[str, Any], slo: Mapping[str, Any] | None = None, seed: int = 0,
              api_key: str | None = None, timeout_s: float = 120.0, progress: bool = True,
              server_metrics: Mapping[str, Any] | None = None) -> list[dict]:
    """Run every level (each concurrency, or each rate in open loop) and write the outputs.

    Each level gets its own slice of the seeded workload (warm-up bodies first), so no level
    replays another's prompts into a warm prefix cache while the workload's pool lasts.
    Returns the summaries, in level order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workload, slo = _plain(workload), _plain(slo) or {}
    specs = level_specs(mode, concurrencies, rate, num_requests=num_requests, duration_s=duration_s,
                        warmup=warmup, timeout_s=timeout_s, seed=seed)
    per_level = warmup + num_requests
    bodies = build_requests(workload, per_level * len(specs))
    headers = auth_headers(api_key)
    status = {"status": "running", "levels": [s.label for s in specs], "finished": [], "server_gone": None}
    write_status(out_dir, status)
    summaries, scrapes = [], {}
    for k, spec in enumerate(specs):
        if k and not healthy(root_url(endpoint_url), timeout_s=5, headers=headers):
            status["server_gone"] = f"{root_url(endpoint_url)}/health failed before level {spec.label}"
            break
        monitor = srv.scraper_for(endpoint_url, _plain(server_metrics), headers)
        t0 = time.perf_counter()
        with RecordSink(out_dir / f"records_{spec.label}.csv", t0) as sink:
            result = run_level(endpoint_url, model_name, bodies[k * per_level:(k + 1) * per_level], spec,
                               headers=headers, progress=progress, on_record=sink.append, monitor=monitor)
        summary = metrics.summarize(
            result.records, slo_ttft_ms=slo.get("ttft_ms"), slo_e2e_ms=slo.get("e2e_ms"),
            target_concurrency=spec.concurrency if spec.mode == "closed" else None,
            offered_rate=spec.rate if spec.mode == "open" else None)
        summary = {"label": spec.label, "mode": spec.mode, "concurrency": spec.concurrency,
                   "rate": spec.rate, "model": model_name, "endpoint": result.meta["url"],
                   "settings": {"num_requests": num_requests, "duration_s": duration_s,
                                "warmup": warmup, "warmup_failed": result.warmup_failed,
                                "timeout_s": timeout_s, "seed": seed, "workload": workload},
                   "started_unix": result.meta["started_unix"], "server_gone": result.server_gone, **summary}
        if monitor is not None:
            summary.update(srv.level_outputs(out_dir, spec.label, monitor.scrapes, summary))
            scrapes[spec.label] = monitor.scrapes
        write_records(out_dir / f"records_{spec.label}.csv", result.records, t0)
        with _atomic(out_dir / f"summary_{spec.label}.json") as tmp:
            tmp.write_text(json.dumps(_json_clean(summary), indent=2, allow_nan=False) + "\n")
        summaries.append(summary)
        if result.server_gone:
            status["server_gone"] = f"during level {spec.label}: {result.server_gone}"
            break
        status["finished"].append(spec.label)
        write_status(out_dir, status)
    write_sweep(out_dir, summaries)
    fig = srv.timeseries_figure(scrapes)
    if fig is not None:
        _save(fig, out_dir / "server_metrics.png")
    write_status(out_dir, {**status, "status": "partial" if status["server_gone"] else "done"})
    return summaries


STATUS_FILE = "bench.json"


def write_status(out_dir: Path, status: dict) -> None:
    with _atomic(Path(out_dir) / STATUS_FILE) as tmp:
        tmp.write_text(json.dumps(status, indent=2) + "\n")


def read_status(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def new_bench_dir(parent: Path) -> Path:
    """parent/<UTC time>/ for one bench invocation (never reused), and parent/latest -> it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1000):
        path = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        link = parent / ".latest.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(path.name)
        os.replace(link, parent / "latest")
        return path
    raise FileExistsError(f"{parent}: no free bench folder name for {stamp}")


class RecordSink:
    """records_<label>.csv while a level runs: the header, then one flushed row per request as it
    completes (raw columns, times relative to t0)."""

    COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]

    def __init__(self, path: Path, t0: float):
        self.path, self.t0 = Path(path), t0

    def __enter__(self) -> "RecordSink":
        self.file = open(self.path, "w", newline="")
        os.chmod(self.path, 0o666 & ~current_umask())
        self.writer = csv.DictWriter(self.file, fieldnames=self.COLUMNS)
        self.writer.writeheader()
        self.file.flush()
        return self

    def append(self, rec: RequestRecord) -> None:
        self.writer.writerow(rec.to_row(self.t0))
        self.file.flush()

    def __exit__(self, *exc) -> None:
        self.file.close()


def _plain(cfg):
    """A Hydra/OmegaConf node -> plain dicts and lists (JSON-ready); anything else as given."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else (dict(cfg) if cfg else cfg)


def level_specs(mode: str, concurrencies: Sequence[int], rate, **common) -> list[LoadSpec]:
    if mode == "closed":
        return [LoadSpec(mode="closed", concurrency=int(c), **common) for c in concurrencies]
    if mode == "open":
        rates = [rate] if isinstance(rate, (int, float)) else list(rate or [])
        if not rates:
            raise ValueError("open loop needs rate (requests/s)")
        return [LoadSpec(mode="open", rate=float(r), **common) for r in rates]
    raise ValueError(f"mode={mode!r}: expected closed or open")


# --- outputs ------------------------------------------------------------------------------

@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temp path in path's folder; on success it replaces path in one step."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _json_clean(obj):
    """NaN -> null and numpy scalars -> Python, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_records(path: Path, records: Sequence[RequestRecord], t0: float | None = None) -> None:
    if t0 is None:
        t0 = min((r.start for r in records), default=0.0)
    raw = pd.DataFrame([r.to_row(t0) for r in records])
    derived = metrics.per_request(records)[["ttft_s", "e2e_s", "tpot_s", "output_tokens"]]
    frame = pd.concat([raw, derived.rename(columns={"output_tokens": "output_tokens_used"})], axis=1)
    with _atomic(path) as tmp:
        frame.to_csv(tmp, index=False)


def load_records(path: str | Path) -> list[RequestRecord]:
    """Records back from a records_<label>.csv (for recomputing statistics, e.g. in a report)."""
    frame = pd.read_csv(path, dtype={"request_id": str, "error_kind": object, "error": object})
    return [RequestRecord.from_row(row) for row in frame.to_dict("records")]


def sweep_table(summaries: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame([metrics.flatten({k: v for k, v in s.items() if k != "settings"}) for s in summaries])


def write_sweep(out_dir: Path, summaries: Sequence[dict]) -> None:
    table = sweep_table(summaries)
    with _atomic(out_dir / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False)
    with _atomic(out_dir / "sweep.md") as tmp:
        tmp.write_text(_markdown(table[[c for c in SWEEP_COLUMNS if c in table]].rename(columns=SWEEP_COLUMNS)))
    if len(table):
        _plots(out_dir, table)


def _markdown(df: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1 else (f"{v:.1f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plots(out_dir: Path, table: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = (table["mode"] == "closed").all()
    x = table["concurrency" if closed else "rate"].astype(float)
    xlabel = "concurrency (requests in flight)" if closed else "offered rate (requests/s)"

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, metric in zip(axes, ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")):
        for stat, style in (("median", "o-"), ("p90", "s--"), ("p99", "^:")):
            ax.plot(x, table[f"{metric}_{stat}"].astype(float), style, label=stat)
        ax.set(title=metric.replace("_ms", "").upper() + " (ms)", xlabel=xlabel)
        _xscale(ax, x)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out_dir / "latency.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(x, table["throughput_output_tokens_per_s"].astype(float), "o-")
    axes[0].set(title="output tokens/s", xlabel=xlabel)
    axes[1].plot(x, table["throughput_requests_per_s"].astype(float), "o-", label="succeeded")
    axes[1].plot(x, table["goodput_requests_per_s"].astype(float), "s--", label="within SLO")
    axes[1].set(title="requests/s", xlabel=xlabel)
    axes[1].legend()
    axes[2].plot(x, table["requests_error_rate"].astype(float), "o-", color="tab:red")
    axes[2].set(title="error rate", xlabel=xlabel, ylim=(-0.02, 1.02))
    for ax in axes:
        _xscale(ax, x)
        ax.grid(alpha=0.3)
    _save(fig, out_dir / "throughput.png")


def _xscale(ax, x) -> None:
    if len(x) > 1 and x.min() > 0 and x.max() / x.min() >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{v:g}" for v in x])


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --- command line (the Makefile goes through the composed config instead) ------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Load-test an OpenAI-compatible /v1/chat/completions endpoint.")
    p.add_argument("--endpoint", required=True, help="server root, …/v1, or the chat-completions URL")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--concurrency", default="16", help="comma-separated: a sweep")
    p.add_argument("--rate", default=None, help="requests/s, comma-separated: open loop")
    p.add_argument("--num-requests", type=int, default=100)
    p.add_argument("--duration-s", type=float, default=None)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--workload", default='{"name": "synthetic", "input_tokens": 128, "max_tokens": 32}',
                   help="workload config as JSON")
    p.add_argument("--slo-ttft-ms", type=float, default=None)
    p.add_argument("--slo-e2e-ms", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key-env", default=None, help="name of the environment variable holding the key")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    summaries = run_bench(
        a.endpoint, a.model, a.out, mode="open" if a.rate else "closed",
        concurrencies=[int(c) for c in a.concurrency.split(",")],
        rate=[float(r) for r in a.rate.split(",")] if a.rate else None,
        num_requests=a.num_requests, duration_s=a.duration_s, warmup=a.warmup,
        workload=json.loads(a.workload), slo={"ttft_ms": a.slo_ttft_ms, "e2e_ms": a.slo_e2e_ms},
        seed=a.seed, api_key=os.environ.get(a.api_key_env) if a.api_key_env else None,
        timeout_s=a.timeout_s, progress=not a.no_progress)
    print((Path(a.out) / "sweep.md").read_text())
    print(f"{len(summaries)} level(s) written to {a.out}")


if __name__ == "__main__":
    main()
