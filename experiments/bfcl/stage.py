"""`make eval [RUN=...] [MODEL=merged|adapter|base] [BFCL=quick|full] [ENDPOINT=...]`.

Scores a run's served model on BFCL through bfcl-eval's own runner and checker
(experiments.bfcl), into results/<run>/bfcl/<model>/, with one MLflow run per
(training run, model, category set). Starts the run's vLLM server if none is up (and stops it
afterwards); ENDPOINT= scores any OpenAI-compatible server instead.
"""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from experiments.core import runs
from experiments.serve import server as serving
from experiments.bfcl.run import BfclError, attach_baseline, run_bfcl
from experiments.core.cli import run_model_stage
from experiments.core.config import ConfigError
from experiments.tracking.client import Tracker, TrackingError


def out_dir(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / "bfcl" / kind


def is_complete(cfg: DictConfig, run_dir: Path, kind: str) -> bool:
    """summary.json of this category set exists with nothing missing."""
    path = out_dir(run_dir, kind) / "summary.json"
    if not path.exists():
        return False
    s = runs.read_json(path)
    return s.get("category_set") == cfg.bfcl.name and s.get("n_missing") == 0


def mlflow_metrics(summary: dict) -> dict[str, float]:
    """Leaderboard columns, per-category accuracy and error counts as flat MLflow metric names."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9_./ -]", "", s).strip().replace(" ", "_")  # noqa: E731
    out = {f"bfcl/{clean(k)}": v for k, v in summary["leaderboard"].items() if isinstance(v, (int, float))}
    out.update({f"bfcl_cat/{c}": v["accuracy"] for c, v in summary["per_category"].items()})
    errors = summary["errors"]
    out.update({f"bfcl_err/{k}": v for k, v in errors["by_bucket"].items()})
    out["bfcl_err/hallucinated_function_items"] = errors["hallucinated_functions"]["items"]
    out.update({"bfcl/n_items": summary["n_items"], "bfcl/wall_s": summary["timings_s"]["wall"]})
    return out


def evaluate(cfg: DictConfig, run_dir: Path, kind: str, endpoint: serving.Endpoint | None = None,
             endpoint_url: str | None = None) -> dict:
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    out = out_dir(run_dir, kind if not endpoint_url else "external")
    tracker = Tracker(cfg.tracking, run_name=f"eval/{info['run_id']}/{kind}/{cfg.bfcl.name}", tags={
        "stage": "eval", "training_run": info["run_id"], "model_kind": kind, "bfcl_set": cfg.bfcl.name,
        "method": info.get("method"), "model": info.get("model"), "profile": cfg.profile.name,
        "comparison": info.get("comparison")})
    with tracker:
        tracker.log_params({"bfcl_set": cfg.bfcl.name, "num_threads": cfg.bfcl.num_threads,
                            "temperature": cfg.bfcl.temperature, "quick_per_category": cfg.bfcl.quick_per_category})
        with (serving.server_for(cfg, run_dir, kind, endpoint_url) if endpoint is None
              else contextlib.nullcontext(endpoint)) as ep:
            print(f"[eval] BFCL {cfg.bfcl.name} on {ep.base_url} model={ep.model} -> {out}", flush=True)
            summary = run_bfcl(ep.base_url, ep.model, out, cfg.bfcl.categories, num_threads=int(cfg.bfcl.num_threads),
                               quick_per_category=cfg.bfcl.quick_per_category, seed=int(cfg.bfcl.get("seed", 0)),
                               api_key=ep.api_key, temperature=float(cfg.bfcl.temperature))
        summary = {**runs.read_json(out / "summary.json"), "fingerprints": serving.served_fingerprints(run_dir, ep.kind)}
        runs.write_json_atomic(out / "summary.json", summary)
        base_summary = out_dir(run_dir, "base") / "summary.json"
        if kind != "base" and base_summary.exists() and runs.read_json(base_summary).get("category_set") == cfg.bfcl.name:
            summary = attach_baseline(out / "summary.json", base_summary)
        tracker.log_metrics(mlflow_metrics(summary))
        tracker.log_artifacts([out / "summary.json", out / "categories.csv", out / "items.csv"])
    runs.update_run_json(run_dir, stages={f"eval_{kind}": "done"})
    head = summary["headline"]
    print(f"[eval] {out / 'summary.json'}: " + ", ".join(f"{k}={v}" for k, v in head.items()))
    return summary


def main(argv=None) -> int:
    return run_model_stage("eval", "BFCL evaluation of a run's served model", evaluate, (ConfigError, runs.RunError, serving.ServeError, BfclError, TrackingError, FileNotFoundError), argv)


if __name__ == "__main__":
    sys.exit(main())
