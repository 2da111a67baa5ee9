"""`make eval [RUN=...] [MODEL=merged|adapter|base] [BFCL=quick|full] [ENDPOINT=...]`.

Scores a run's served model on BFCL through bfcl-eval's own runner and checker
(experiments.bfcl), into results/<run>/bfcl/<model>/, with one MLflow run per
(training run, model, category set). Starts the run's vLLM server if none is up (and stops it
afterwards); ENDPOINT= scores any OpenAI-compatible server instead.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from experiments.core import runs
from experiments.serve import server as serving
from experiments.bfcl.heldout import run_heldout
from experiments.bfcl.run import BfclError, attach_baseline, run_bfcl
from experiments.core.cli import run_model_stage
from experiments.core.config import ConfigError
from experiments.tracking.client import Tracker, TrackingError
from experiments.data.heldout import HELDOUT_FILE


def out_dir(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / "bfcl" / kind


def heldout_dir(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / "heldout" / kind


def is_complete(cfg: DictConfig, run_dir: Path, kind: str) -> bool:
    """summary.json of this category set exists and says complete: every item and memory
    prerequisite answered, no failed request (and the held-out prompts' summary, when the run has
    a held-out split)."""
    path = out_dir(run_dir, kind) / "summary.json"
    if not path.exists():
        return False
    if (Path(run_dir) / "data" / HELDOUT_FILE).exists() and not (heldout_dir(run_dir, kind) / "summary.json").exists():
        return False
    s = runs.read_json(path)
    return s.get("category_set") == cfg.bfcl.name and s.get("complete") is True


def incomplete(summary: dict, resume: str) -> runs.StageIncomplete | None:
    """What keeps an evaluation from being done, as the error to raise (None when complete)."""
    if summary.get("complete"):
        return None
    counts = {k: summary.get(k, 0) for k in ("n_items", "n_missing", "n_failed_requests", "n_failed_prereqs")}
    planned = counts["n_items"] + counts["n_missing"]
    gone = summary.get("server_unreachable")
    status = "failed" if counts["n_failed_requests"] + counts["n_missing"] >= planned else "partial"
    msg = (f"BFCL {summary.get('category_set')} incomplete: {counts['n_failed_requests']} of {planned} items failed "
           f"their request, {counts['n_missing']} missing, {counts['n_failed_prereqs']} memory prerequisites failed"
           + (f" ({gone})" if gone else "") + f"; those items count as wrong in the partial scores. "
           f"Resume (retries only what failed): {resume}")
    return runs.StageIncomplete(msg, status, counts)


def resume_command(cfg: DictConfig, run_id: str, kind: str, endpoint_url: str | None) -> str:
    return (f"make eval RUN={run_id} MODEL={kind} BFCL={cfg.bfcl.name}"
            + (f" ENDPOINT={endpoint_url}" if endpoint_url else ""))


def ask_heldout(cfg: DictConfig, run_dir: Path, kind: str, ep: serving.Endpoint) -> dict | None:
    """The run's held-out prompts (never trained on) asked of the served model, if it has them."""
    path = Path(run_dir) / "data" / HELDOUT_FILE
    if not path.exists():
        return None
    out = heldout_dir(run_dir, kind)
    print(f"[eval] held-out prompts {path} -> {out}", flush=True)
    s = run_heldout(ep.base_url, ep.model, path, out, max_tokens=int(cfg.bfcl.heldout_max_tokens),
                    concurrency=int(cfg.bfcl.heldout_concurrency), api_key=ep.api_key)
    print(f"[eval] held-out: {s['parsed']}/{s['call_rows']} parsed calls, {s['right_function']} right function, "
          f"{s['exact_arguments']} exact arguments; {s['text_rows_no_call']}/{s['text_rows']} text answers without a call")
    return s


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
    if endpoint_url and endpoint is None:  # unreachable or refused: one line, before any MLflow run
        serving.first_model(endpoint_url, os.environ.get(str(cfg.serve.api_key_env)) or None)
    tracker = Tracker(cfg.tracking, run_name=f"eval/{info['run_id']}/{kind}/{cfg.bfcl.name}", tags={
        "stage": "eval", "training_run": info["run_id"], "model_kind": kind, "bfcl_set": cfg.bfcl.name,
        "method": info.get("method"), "model": info.get("model"), "profile": cfg.profile.name,
        "comparison": info.get("comparison")})
    stage = f"eval_{out.name}"  # eval_external for ENDPOINT=
    summary = runs.run_stage(run_dir, stage, lambda: _evaluate(cfg, run_dir, kind, info, out, tracker, endpoint, endpoint_url))
    head = summary["headline"]
    print(f"[eval] {out / 'summary.json'}: " + ", ".join(f"{k}={v}" for k, v in head.items()))
    return summary


def _evaluate(cfg, run_dir, kind, info, out, tracker, endpoint, endpoint_url) -> dict:
    with tracker:
        tracker.log_params({"bfcl_set": cfg.bfcl.name, "num_threads": cfg.bfcl.num_threads,
                            "temperature": cfg.bfcl.temperature, "quick_per_category": cfg.bfcl.quick_per_category})
        with (serving.server_for(cfg, run_dir, kind, endpoint_url) if endpoint is None
              else contextlib.nullcontext(endpoint)) as ep:
            print(f"[eval] BFCL {cfg.bfcl.name} on {ep.base_url} model={ep.model} -> {out}", flush=True)
            summary = run_bfcl(ep.base_url, ep.model, out, cfg.bfcl.categories, num_threads=int(cfg.bfcl.num_threads),
                               quick_per_category=cfg.bfcl.quick_per_category, seed=int(cfg.bfcl.get("seed", 0)),
                               api_key=ep.api_key, temperature=float(cfg.bfcl.temperature))
            held = ask_heldout(cfg, run_dir, kind, ep) if not endpoint_url else None
        summary = {**runs.read_json(out / "summary.json"), "fingerprints": serving.served_fingerprints(run_dir, ep.kind)}
        runs.write_json_atomic(out / "summary.json", summary)
        base_summary = out_dir(run_dir, "base") / "summary.json"
        if kind != "base" and base_summary.exists() and runs.read_json(base_summary).get("category_set") == cfg.bfcl.name:
            summary = attach_baseline(out / "summary.json", base_summary)
        tracker.log_metrics({**mlflow_metrics(summary), "bfcl/n_failed_prereqs": summary["n_failed_prereqs"],
                             "bfcl/n_failed_requests": summary["n_failed_requests"]})
        if held:
            tracker.log_metrics({f"heldout/{k}": v for k, v in held.items() if isinstance(v, (int, float))})
        tracker.log_artifacts([out / "summary.json", out / "categories.csv", out / "items.csv"])
        error = incomplete(summary, resume_command(cfg, info["run_id"], kind, endpoint_url))
        if error is not None:
            tracker.set_tags({"incomplete": error.status})
            raise error  # the tracker ends the MLflow run FAILED
    return summary


def main(argv=None) -> int:
    return run_model_stage("eval", "BFCL evaluation of a run's served model", evaluate, (ConfigError, runs.RunError, runs.StageIncomplete, serving.ServeError, BfclError, TrackingError, FileNotFoundError), argv)


if __name__ == "__main__":
    sys.exit(main())
