"""`make bench [RUN=...] [MODEL=...] [CONC=32 | CONC=1,4,16,32 | RATE=10] [ENDPOINT=...]`.

Load-tests a run's served model with the aiohttp generator (experiments.bench) into
results/<run>/bench/<model>/, with one MLflow run per bench tagged with its training run.
Starts the run's vLLM server if none is up (and stops it afterwards).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.core import runs
from experiments.serve import server as serving
from experiments.bench import metrics
from experiments.bench.capacity import run_capacity
from experiments.bench.run import new_bench_dir, read_status, run_bench
from experiments.core.cli import run_model_stage
from experiments.core.config import ConfigError
from experiments.tracking.client import Tracker, TrackingError



def out_dir(run_dir: Path, kind: str) -> Path:
    """bench/<kind>/: one folder per `make bench` (bench/<kind>/<UTC time>/) and `latest` -> the newest."""
    return Path(run_dir) / "bench" / kind


def latest_dir(run_dir: Path, kind: str) -> Path:
    return out_dir(run_dir, kind) / "latest"


def levels(cfg: DictConfig) -> tuple[str, list[int], list[float] | None]:
    """(mode, concurrencies, rates) from bench.mode (CAPACITY=1: capacity) and bench.concurrency /
    bench.rate (CONC= / RATE=); a value that is not a positive number is a ConfigError naming the
    key and the value."""
    if cfg.bench.get("mode", "sweep") not in ("sweep", "capacity"):
        raise ConfigError(f"bench.mode={cfg.bench.mode!r}: expected sweep or capacity")
    if cfg.bench.get("mode") == "capacity":
        return "capacity", [], None
    if cfg.bench.rate not in (None, "", "null"):
        rates = cfg.bench.rate if OmegaConf.is_list(cfg.bench.rate) else [cfg.bench.rate]
        return "open", [], [_positive(r, float, "RATE", "bench.rate") for r in rates]
    conc = cfg.bench.concurrency
    return "closed", [_positive(c, int, "CONC", "bench.concurrency") for c in (conc if OmegaConf.is_list(conc) else [conc])], None


def _positive(value, kind, var: str, key: str):
    try:
        number = kind(value)
        if number > 0 and (kind is float or str(value).strip().lstrip("+").isdigit() or isinstance(value, int)):
            return number
    except (TypeError, ValueError):
        pass
    what = "a positive integer (requests in flight)" if kind is int else "a positive number (requests/s)"
    raise ConfigError(f"{var}={value} ({key}): expected {what}, e.g. {var}={'1,4,16' if kind is int else '2.5'}")


def is_complete(cfg: DictConfig, run_dir: Path, kind: str) -> bool:
    mode, concs, rates = levels(cfg)
    status = read_status(latest_dir(run_dir, kind))
    if mode == "capacity":
        return bool(status) and status["status"] == "done" and (latest_dir(run_dir, kind) / "capacity.json").exists()
    labels = [f"c{c}" for c in concs] if mode == "closed" else [f"r{r:g}" for r in rates]
    return bool(status) and status["status"] == "done" and status["finished"] == labels


def flat_level_metrics(summary: dict) -> dict[str, float]:
    """Every number of a level summary (throughput, errors, goodput, Little's law, percentiles)."""
    return {k: float(v) for k, v in metrics.flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def bench(cfg: DictConfig, run_dir: Path, kind: str, endpoint: serving.Endpoint | None = None,
          endpoint_url: str | None = None) -> list[dict]:
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    parent = out_dir(run_dir, kind if not endpoint_url else "external")
    stage = f"bench_{parent.name}"
    levels(cfg)  # bad CONC/RATE fail here, before any MLflow run or server
    if endpoint_url and endpoint is None:
        serving.first_model(endpoint_url, os.environ.get(str(cfg.serve.api_key_env)) or None)  # reachable?
    tracker = Tracker(cfg.tracking, run_name=f"bench/{info['run_id']}/{kind}", tags={
        "stage": "bench", "training_run": info["run_id"], "model_kind": kind, "workload": cfg.workload.name,
        "method": info.get("method"), "model": info.get("model"), "profile": cfg.profile.name,
        "comparison": info.get("comparison")})
    summaries = runs.run_stage(run_dir, stage, lambda: _bench(cfg, run_dir, kind, info, parent, tracker, endpoint, endpoint_url))
    print(f"[bench] {latest_dir(run_dir, parent.name) / 'sweep.md'}")
    return summaries


def _bench(cfg, run_dir, kind, info, parent, tracker, endpoint, endpoint_url) -> list[dict]:
    mode, concs, rates = levels(cfg)
    b = cfg.bench
    with tracker:
        tracker.log_params({"mode": mode, "concurrency": concs, "rate": rates, "num_requests": b.num_requests,
                            "duration_s": b.duration_s, "warmup": b.warmup_requests, "workload": cfg.workload.name,
                            "slo_ttft_ms": b.slo.ttft_ms, "slo_e2e_ms": b.slo.e2e_ms})
        ctx = serving.server_for(cfg, run_dir, kind, endpoint_url) if endpoint is None else contextlib.nullcontext(endpoint)
        with ctx as ep:
            out = new_bench_dir(parent)
            tracker.set_tags({"bench_dir": out.name})
            what = "capacity search" if mode == "capacity" else f"{mode} loop {concs or rates}"
            print(f"[bench] {what} on {ep.base_url} model={ep.model} -> {out}", flush=True)
            common = dict(workload=cfg.workload, slo=b.slo, seed=int(cfg.workload.seed), api_key=ep.api_key,
                          timeout_s=float(b.request_timeout_s), server_metrics=b.server_metrics)
            if mode == "capacity":
                found = run_capacity(ep.base_url, ep.model, out, capacity=b.capacity, **common)
                summaries = found["summaries"]
                tracker.log_metrics({"bench/capacity_rate": float(found["capacity_rate"] or 0.0),
                                     "bench/capacity_levels": float(len(found["levels"]))})
                print(f"[bench] capacity {found['capacity_rate']} req/s ({found['stopped']}); {out / 'capacity.json'}")
            else:
                summaries = run_bench(ep.base_url, ep.model, out, mode=mode, concurrencies=concs or (1,), rate=rates,
                                      num_requests=int(b.num_requests), duration_s=float(b.duration_s),
                                      warmup=int(b.warmup_requests), **common)
        fps = serving.served_fingerprints(run_dir, ep.kind)
        for s in summaries:
            s["fingerprints"] = fps  # what the numbers were measured against
            runs.write_json_atomic(out / f"summary_{s['label']}.json", {**runs.read_json(out / f"summary_{s['label']}.json"), "fingerprints": fps})
            step = int(s["concurrency"] or 0) if mode == "closed" else int(round(s["rate"] * 1000))
            tracker.log_metrics({f"bench/{k}": v for k, v in flat_level_metrics(s).items()}, step=step)
        tracker.log_artifacts([p for p in sorted(out.glob("*")) if p.is_file()])
        status = read_status(out)
        if status["status"] != "done":
            missing = [label for label in status["levels"] if label not in status["finished"]]
            failed = sum(s["requests"]["failed"] for s in summaries if s.get("server_gone"))
            counts = {"levels_planned": len(status["levels"]), "levels_finished": len(status["finished"]),
                      "requests_failed_in_last_level": failed}
            tracker.set_tags({"incomplete": "partial"})
            raise runs.StageIncomplete(
                f"bench stopped: the server went away ({status['server_gone']}); levels {missing} of "
                f"{status['levels']} not measured, {failed} requests of the interrupted level failed. "
                f"{out} keeps what was measured. Rerun: make bench RUN={info['run_id']} MODEL={kind} "
                + ("CAPACITY=1" if mode == "capacity" else f"CONC={','.join(map(str, concs))}" if mode == "closed"
                   else f"RATE={','.join(f'{r:g}' for r in rates)}")
                + (f" ENDPOINT={endpoint_url}" if endpoint_url else ""),
                "partial" if status["finished"] else "failed", counts)
    return summaries


def main(argv=None) -> int:
    return run_model_stage("bench", "Load-test a run's served model", bench, (ConfigError, runs.RunError, runs.StageIncomplete, serving.ServeError, TrackingError, FileNotFoundError, ValueError), argv)


if __name__ == "__main__":
    sys.exit(main())
