"""`make sync RUN=<run> [TRACKING=postgres]`: log a run folder into a tracking store after the fact.

For a training whose tracking server went away (or a run made offline, or moved to a team server
later): re-creates the train run from what the run folder holds, not from memory:
  params     from config.yaml + axolotl.yaml + data/data_report.json (the same as a live run)
  metrics    every step of adapter/train_log.jsonl (loss, eval_loss, lr, ...) + final/* of train_metrics.json
  artifacts  axolotl.yaml, config.yaml, data_report.json, train_metrics.json
Then run.json points at the new MLflow run, so later stages (merge, eval, bench) log onto it.
A run already logged complete (FINISHED) in that store is not logged twice unless --force.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from experiments.core import runs
from experiments.core.config import ConfigError, compose
from experiments.data import packing
from experiments.tracking.params import train_params, train_tags  # the same as a live run
from experiments.tracking.client import Tracker, TrackingError, check_reachable, client_for

ARTIFACTS = ("axolotl.yaml", "config.yaml", "data/data_report.json", "train_metrics.json")
NOT_METRICS = {"step", "time"}  # columns RunRecorderPlugin adds to each Trainer log line


class SyncError(RuntimeError):
    pass


def metric_key(key: str) -> str:
    """The name transformers' MLflowCallback logs a Trainer key under (MLflow refuses parentheses)."""
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", key)


def history(train_log: Path) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) for every numeric value of every Trainer log line."""
    out = []
    if not train_log.exists():
        return out
    for line in train_log.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        ts, step = int(float(row.get("time", time.time())) * 1000), int(row.get("step", 0))
        for k, v in row.items():
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((metric_key(k), float(v), ts, step))
    return out


def already_logged(client, experiment: str, run_id: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], f"tags.training_run = '{run_id}' and tags.stage = 'train' "
                               "and attributes.status = 'FINISHED'", max_results=1)
    return found[0].info.run_id if found else None


def sync(run_dir: Path, tracking_cfg, *, force: bool = False) -> str:
    from mlflow.entities import Metric

    info = runs.read_json(run_dir / runs.RUN_JSON)
    run_id = info["run_id"]
    if not (run_dir / "config.yaml").exists():
        raise SyncError(f"{run_dir}: no config.yaml; not a training run folder")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    ax = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    report_path = run_dir / "data" / "data_report.json"
    data_report = runs.read_json(report_path) if report_path.exists() else {}
    uri = str(tracking_cfg["uri"])

    check_reachable(uri)
    existing = already_logged(client_for(uri), str(tracking_cfg["experiment"]), run_id)
    if existing and not force:
        raise SyncError(f"run {run_id} is already logged complete in {uri} (MLflow run {existing}); "
                        "FORCE=1 (--force) logs another copy")

    tracker = Tracker(tracking_cfg, run_name=f"train/{run_id}",
                      tags={**train_tags(cfg, run_id), "synced_from": str(run_dir)})
    try:
        if data_report:
            tracker.log_params(train_params(cfg, ax, data_report))
        points = history(run_dir / "adapter" / "train_log.jsonl")
        for i in range(0, len(points), 500):
            tracker.client.log_batch(tracker.run_id, metrics=[Metric(*p) for p in points[i:i + 500]])
        metrics_path = run_dir / "train_metrics.json"
        if metrics_path.exists():
            m = runs.read_json(metrics_path)
            tracker.log_metrics({f"final/{k}": v for k, v in m.items() if not isinstance(v, (list, dict))})
        if data_report.get("packing"):
            tracker.log_metrics(packing.metrics(data_report["packing"]))
        tracker.log_artifacts([run_dir / name for name in ARTIFACTS])
    except Exception as exc:
        with contextlib.suppress(Exception):
            tracker.finish("FAILED")
        raise SyncError(f"logging {run_id} into {uri} failed ({exc}); MLflow run {tracker.run_id} is marked FAILED") from None
    status = "FINISHED" if info.get("stages", {}).get("train") == "done" else "FAILED"
    tracker.finish(status)

    # The original run, if it is in this store and was left RUNNING by the outage, points at the copy.
    old = info.get("mlflow", {})
    if old.get("tracking_uri") == uri and old.get("train_run_id"):
        try:
            client = client_for(uri)
            if client.get_run(old["train_run_id"]).info.status == "RUNNING":
                client.set_tag(old["train_run_id"], "superseded_by", tracker.run_id)
                client.set_terminated(old["train_run_id"], status="FAILED")
        except Exception:
            pass  # deleted or never created: nothing to point
    runs.update_run_json(run_dir, mlflow={
        "tracking_uri": uri, "experiment": str(tracking_cfg["experiment"]), "train_run_id": tracker.run_id,
        "synced": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "previous": [*old.get("previous", []), {k: old.get(k) for k in ("tracking_uri", "train_run_id")}]})
    print(f"[sync] {run_dir} -> {uri}: MLflow run {tracker.run_id} ({status}; {len(points)} metric points)")
    return tracker.run_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Log a run folder into a tracking store (re-creates its train run)")
    ap.add_argument("--run", default=None, help="run id or folder (default: results/latest)")
    ap.add_argument("--force", action="store_true", help="log even if the store already has this run complete")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides choosing the store (tracking=postgres, tracking.uri=...)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        sync(runs.resolve_run(Path(cfg.paths.results), args.run), cfg.tracking, force=args.force)
    except (ConfigError, TrackingError, SyncError, runs.RunError) as exc:
        print(f"[sync] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
