"""`make train`: compose conf/ -> validated axolotl.yaml -> `axolotl train`, tracked in MLflow.

Order matters: everything cheap that can reject the request (composition, unknown keys,
Axolotl's schema, the tracking store) runs before the run folder exists and before any model
is loaded, so a typo costs seconds and leaves nothing behind.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from experiments.core import envs
from experiments.core import runs
from experiments.data import toolace
from experiments.train import agreement
from experiments.train.axolotl_config import CombinationError, build_axolotl_config
from experiments.core.config import ConfigError, compose, world_size
from experiments.train.launcher import check_launcher, launch_command, launch_script, read_rank_records, verify_ranks
from experiments.core.procmon import PeakRSS, safetensors_numel
from experiments.tracking.client import Tracker, TrackingError, check_reachable
from experiments.tracking.params import train_params, train_tags

# What Axolotl does not log about the adapter, and what we want to filter/compare runs on.


class StageError(RuntimeError):
    """A stage failed; the message says why and where its log is."""


def banner(cfg: DictConfig) -> str:
    p = cfg.profile
    return (
        f"[train] profile={p.name} ({p.accelerator}) model={cfg.model.name} data={cfg.data.name} "
        f"method={cfg.method.name} launcher={cfg.launcher.name} x{world_size(cfg)}"
        + ("  -- CPU profile: tiny local model, shipped sample, a few dozen steps; scores are meaningless by design"
           if p.accelerator == "cpu" else "")
    )


def validate_axolotl(ax: dict, cfg: DictConfig) -> None:
    """Axolotl's own schema, in the train environment (it cannot be imported here)."""
    caps = OmegaConf.to_container(cfg.profile.capabilities, resolve=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="axolotl-", delete=False) as f:
        yaml.safe_dump(ax, f, sort_keys=False)
    cmd = [str(envs.python("train", Path(cfg.paths.venv))), "-m", "experiments.train.axolotl_validate", f.name,
           "--capabilities", json.dumps(caps), "--world-size", str(world_size(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=envs.subprocess_env())
    Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown error"
        raise ConfigError(msg.replace(f.name, "axolotl.yaml"))


def ensure_model(cfg: DictConfig) -> None:
    """Build the tiny local model when the config asks for it and it is not there yet."""
    if cfg.model.build != "tiny" or (Path(cfg.model.path) / "config.json").exists():
        return
    print(f"[train] building the local random-weight model at {cfg.model.path} (once)")
    shape = [f"--set={k}={json.dumps(v)}" for k, v in (cfg.model.get("shape") or {}).items()]  # e.g. random_qwen2_5_1_5b
    subprocess.run([str(envs.python("train", Path(cfg.paths.venv))), "-m", "experiments.models.tiny_model",
                    "--out", str(cfg.model.path), *shape], check=True, env=envs.subprocess_env())


def prepare_data(cfg: DictConfig, data_dir: Path) -> dict:
    """ToolACE rows -> data/train.jsonl in the model's native tool format + data_report.json."""
    rows = toolace.load_raw(path=cfg.data.path, hf_id=cfg.data.hf_id, split=cfg.data.split, max_rows=cfg.data.max_rows)
    converted, rejects = toolace.convert_rows(rows)
    if not converted:
        raise StageError(f"data={cfg.data.name}: none of {len(rows)} rows converted; see {data_dir / 'data_report.json'}")
    runs.write_text_atomic(data_dir / "train.jsonl", "".join(json.dumps(r) + "\n" for r in converted))
    report = {"source": cfg.data.path or cfg.data.hf_id, **toolace.summarize(converted, rejects),
              "rejects": rejects[:200]}  # the first 200 with their reasons; counts cover all
    runs.write_json_atomic(data_dir / "data_report.json", report)
    print(f"[train] data: {report['rows_out']}/{report['rows_in']} rows converted, {report['rejected']} rejected"
          + (f" {report['rejected_by_kind']}" if rejects else ""))
    return agreement.check_roundtrip(cfg, data_dir, report)


def read_train_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_training(log: list[dict], *, wall_time_s: float, peak_rss_bytes: int, trainable_params: int | None) -> dict:
    """Pure: the Trainer's log lines -> train_metrics.json."""
    def last(key):
        vals = [r[key] for r in log if key in r]
        return vals[-1] if vals else None

    losses = [(r["step"], r["loss"]) for r in log if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
    return {
        "final_train_loss": losses[-1][1] if losses else None,
        "first_train_loss": losses[0][1] if losses else None,
        "final_eval_loss": evals[-1][1] if evals else None,
        "best_eval_loss": min(v for _, v in evals) if evals else None,
        "steps": max((r["step"] for r in log), default=0),
        "wall_time_s": round(wall_time_s, 2),
        "train_runtime_s": last("train_runtime"),
        "tokens_per_s": (round(last("tokens/total") / last("train_runtime"), 2)
                         if last("tokens/total") and last("train_runtime") else None),
        "tokens_per_s_per_gpu_axolotl": last("tokens/train_per_sec_per_gpu"),
        "tokens_total": last("tokens/total"),
        "peak_rss_gib": round(peak_rss_bytes / 2**30, 3),
        "peak_gpu_mem_gib": last("memory/max_allocated (GiB)"),
        "trainable_params": trainable_params,
        "loss_curve": losses,
        "eval_loss_curve": evals,
    }


def _env_vars(node: DictConfig) -> dict:
    env = node.get("env")
    return OmegaConf.to_container(env, resolve=True) if env else {}


def run_axolotl(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, int]:
    """Run the launch command, teeing its output to the run's train.log."""
    start = time.time()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        with PeakRSS(proc.pid) as mem:
            for line in proc.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                log.write(line)
            rc = proc.wait()
    return rc, time.time() - start, mem.peak_bytes


def train(overrides: Sequence[str]) -> Path:
    cfg = compose(overrides)
    print(banner(cfg), flush=True)
    check_launcher(cfg)
    if int(cfg.launcher.node_rank) > 0:
        return train_worker_node(cfg, overrides)
    results = Path(cfg.paths.results)

    # 1. Everything that can reject the request, before any folder or model exists (cheapest first:
    # a tracking server that is down is known in milliseconds, Axolotl's schema takes ~10 s).
    check_reachable(cfg.tracking.uri)
    planned = results / (cfg.run.id or runs.new_run_id(cfg.method.name, cfg.model.name))
    validate_axolotl(build_axolotl_config(cfg, run_dir=planned, dataset_path=planned / "data" / "train.jsonl",
                                          mlflow_run_name=planned.name), cfg)

    # 2. The run folder: never an existing one.
    run_dir = runs.create_run_dir(results, cfg.run.id or None, cfg.method.name, cfg.model.name)
    run_id = run_dir.name
    ax = build_axolotl_config(cfg, run_dir=run_dir, dataset_path=run_dir / "data" / "train.jsonl", mlflow_run_name=run_id)
    tracker = Tracker(cfg.tracking, run_name=f"train/{run_id}", tags=train_tags(cfg, run_id))
    runs.write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    runs.write_text_atomic(run_dir / "axolotl.yaml", yaml.safe_dump(ax, sort_keys=False))
    cmd = launch_command(cfg.launcher, Path(cfg.paths.venv) / "train", run_dir / "axolotl.yaml")
    runs.write_text_atomic(run_dir / "launch.sh", launch_script(cmd, {**_env_vars(cfg.profile), **_env_vars(cfg.launcher)}, cfg.launcher))
    runs.write_json_atomic(run_dir / "run.json", {
        "run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": cfg.method.name, "model": cfg.model.name, "model_path": cfg.model.path,
        "data": cfg.data.name, "profile": cfg.profile.name, "launcher": cfg.launcher.name,
        "comparison": cfg.run.comparison, "overrides": list(overrides), "launch": launch_info(cfg, ax),
        "mlflow": {"tracking_uri": cfg.tracking.uri, "experiment": cfg.tracking.experiment, "train_run_id": tracker.run_id},
        "stages": {"train": "running"},
    })
    print(f"[train] run folder: {run_dir}", flush=True)

    status = "FAILED"
    try:
        ensure_model(cfg)
        data_report = prepare_data(cfg, run_dir / "data")
        tracker.log_params(train_params(cfg, ax, data_report))
        tracker.log_artifacts([run_dir / "axolotl.yaml", run_dir / "config.yaml", run_dir / "data" / "data_report.json"])

        env = envs.subprocess_env({
            "MLFLOW_TRACKING_URI": cfg.tracking.uri, "MLFLOW_RUN_ID": tracker.run_id,
            "MLFLOW_EXPERIMENT_NAME": cfg.tracking.experiment,
            **_env_vars(cfg.profile), **_env_vars(cfg.launcher),
        })
        print(f"[train] {shlex.join(cmd)}", flush=True)
        rc, wall, peak = run_axolotl(cmd, env, run_dir / "train.log")
        adapter = run_dir / "adapter" / "adapter_model.safetensors"
        metrics = summarize_training(read_train_log(run_dir / "adapter" / "train_log.jsonl"), wall_time_s=wall,
                                     peak_rss_bytes=peak, trainable_params=safetensors_numel(adapter) if adapter.exists() else None)
        metrics["exit_code"] = rc
        runs.write_json_atomic(run_dir / "train_metrics.json", metrics)
        if rc != 0 or not adapter.exists():
            raise StageError(f"axolotl train exited {rc}" + ("" if adapter.exists() else f", no adapter at {adapter}")
                             + f"; log: {run_dir / 'train.log'}")
        check_distributed(cfg, run_dir / "adapter", run_dir / "train_metrics.json")
        agreement.record_fingerprints(run_dir, cfg.model.path, tracker)
        status = "FINISHED"
    finally:
        runs.update_run_json(run_dir, stages={"train": "done" if status == "FINISHED" else "failed"})
        if status == "FINISHED":
            runs.point_latest(results, run_dir)
        try:
            if (run_dir / "train_metrics.json").exists():
                m = runs.read_json(run_dir / "train_metrics.json")
                tracker.log_metrics({f"final/{k}": v for k, v in m.items() if not isinstance(v, list)})
                tracker.log_artifacts([run_dir / "train_metrics.json"])
            tracker.finish(status)
        except Exception as exc:  # the server went away mid-run: results stay in the run folder
            print(f"[train] could not finish the MLflow run at {cfg.tracking.uri} ({exc}); the results are in "
                  f"{run_dir}; replay them later with `make sync RUN={run_dir.name} TRACKING_URI={cfg.tracking.uri}`", file=sys.stderr)
    print(f"[train] done: {run_dir}  (adapter: {run_dir / 'adapter'})")
    return run_dir


def launch_info(cfg: DictConfig, ax: dict) -> dict:
    """run.json's record of how training was launched (what the batch arithmetic came to)."""
    ln, world = cfg.launcher, world_size(cfg)
    return {"launcher": ln.name, "kind": ln.kind, "gpus_per_node": int(ln.gpus), "nnodes": int(ln.nnodes),
            "node_rank": int(ln.node_rank), "master_addr": ln.master_addr, "master_port": int(ln.master_port),
            "world_size": world, "micro_batch_size": ax.get("micro_batch_size"),
            "gradient_accumulation_steps": ax.get("gradient_accumulation_steps"),
            "global_batch_size": (ax.get("micro_batch_size") or 1) * (ax.get("gradient_accumulation_steps") or 1) * world}


def check_distributed(cfg: DictConfig, output_dir: Path, metrics_path: Path | None) -> None:
    """After a multi-process launch: the ranks' own records must show that they trained together
    (a launch can exit 0 after running independent trainings). Adds the verdict to train_metrics.json."""
    if world_size(cfg) == 1:
        return
    records = read_rank_records(output_dir / "ranks")
    problems = verify_ranks(records, cfg.launcher)
    if metrics_path is not None and metrics_path.exists():
        m = runs.read_json(metrics_path)
        m["distributed"] = {"world_size": world_size(cfg), "ranks_here": sorted(records), "problems": problems,
                            "lora_sha256": sorted({r.get("lora_sha256") for r in records.values()} - {None})}
        runs.write_json_atomic(metrics_path, m)
    if problems:
        raise StageError(f"launcher={cfg.launcher.name} exited 0 but did not train as asked: " + "; ".join(problems)
                         + f" (records: {output_dir / 'ranks'})")
    print(f"[train] ranks {sorted(records)} of {world_size(cfg)} verified: world size {world_size(cfg)}, "
          f"{cfg.launcher.expected_wrapper or 'no wrapper'}, identical LoRA weights at the end", flush=True)


def train_worker_node(cfg: DictConfig, overrides: Sequence[str]) -> Path:
    """Node k > 0 of a multi-node run: the same config and data, its own folder `<run_id>.node<k>`
    (shared storage or not, it never collides with node 0's run folder), no MLflow run of its own
    (global rank 0, on node 0, logs), no adapter (rank 0 saves it)."""
    results, node = Path(cfg.paths.results), int(cfg.launcher.node_rank)
    node_id = f"{cfg.run.id}.node{node}"
    planned = results / node_id
    validate_axolotl(build_axolotl_config(cfg, run_dir=planned, dataset_path=planned / "data" / "train.jsonl",
                                          mlflow_run_name=str(cfg.run.id)), cfg)
    node_dir = runs.create_run_dir(results, node_id, cfg.method.name, cfg.model.name)
    ax = build_axolotl_config(cfg, run_dir=node_dir, dataset_path=node_dir / "data" / "train.jsonl", mlflow_run_name=str(cfg.run.id))
    runs.write_text_atomic(node_dir / "axolotl.yaml", yaml.safe_dump(ax, sort_keys=False))
    cmd = launch_command(cfg.launcher, Path(cfg.paths.venv) / "train", node_dir / "axolotl.yaml")
    env_vars = {**_env_vars(cfg.profile), **_env_vars(cfg.launcher)}
    runs.write_text_atomic(node_dir / "launch.sh", launch_script(cmd, env_vars, cfg.launcher))
    runs.write_json_atomic(node_dir / "node.json", {"run_id": cfg.run.id, "node_rank": node, "overrides": list(overrides),
                                                   "launch": launch_info(cfg, ax), "status": "running"})
    ensure_model(cfg)
    prepare_data(cfg, node_dir / "data")
    print(f"[train] node {node} of {cfg.launcher.nnodes} joins run {cfg.run.id} at {cfg.launcher.master_addr}:"
          f"{cfg.launcher.master_port}; folder {node_dir}", flush=True)
    rc, wall, _ = run_axolotl(cmd, envs.subprocess_env(env_vars), node_dir / "train.log")
    status = "failed"
    try:
        if rc != 0:
            raise StageError(f"axolotl train exited {rc} on node {node}; log: {node_dir / 'train.log'}")
        check_distributed(cfg, node_dir / "adapter", None)
        status = "done"
    finally:
        runs.write_json_atomic(node_dir / "node.json", {**runs.read_json(node_dir / "node.json"), "status": status,
                                                       "exit_code": rc, "wall_time_s": round(wall, 2)})
    return node_dir


def main(argv: Sequence[str] | None = None) -> int:
    try:
        train(list(sys.argv[1:] if argv is None else argv))
    except (ConfigError, CombinationError, TrackingError, runs.RunError, StageError, FileNotFoundError,
            agreement.RoundTripError) as exc:
        print(f"[train] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
