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
from experiments.data import packing, prepare
from experiments.data.decontam import MODES as DECONTAM_MODES, DecontamError, bfcl_data_dir
from experiments.data.mix import MixError
from experiments.data.sources import DataFileError
from experiments.data import heldout
from experiments.data.heldout import HELDOUT_FILE
from experiments.train import agreement
from experiments.train.axolotl_config import CombinationError, build_axolotl_config
from experiments.core.config import ConfigError, compose, world_size
from experiments.train.launcher import check_launcher, launch_command, launch_script, read_rank_records, verify_ranks
from experiments.core.procmon import PeakMemory, safetensors_numel
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
        + (f"  -- {cfg.model.note}" if cfg.model.get("note") else "")
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
    """Build a local model when its config names a builder (`model.build`, a module run in the
    train env with `--out`) and its folder is not there yet (builders write it atomically)."""
    if not cfg.model.build or (Path(cfg.model.path) / "config.json").exists():
        return
    print(f"[train] building model={cfg.model.name} at {cfg.model.path} (once, {cfg.model.build})", flush=True)
    # builder options from the model group, e.g. random_qwen2_5_1_5b's layer shapes for tiny_model
    shape = [f"--set={k}={json.dumps(v)}" for k, v in (cfg.model.get("shape") or {}).items()]
    subprocess.run([str(envs.python("train", Path(cfg.paths.venv))), "-m", str(cfg.model.build),
                    "--out", str(cfg.model.path), *shape], check=True, env=envs.subprocess_env())


def prepare_data(cfg: DictConfig, data_dir: Path) -> dict:
    """The data config's source(s) -> data/train.jsonl in the model's native tool format + data_report.json."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    counter = None
    if data.get("count_tokens", True):
        try:
            counter = prepare.token_counter(cfg.model.path)
        except (OSError, ValueError) as exc:  # no tokenizer reachable: the counts are optional, training is not
            print(f"[train] no token counts in data_report.json: tokenizer of {cfg.model.path} not loadable ({exc})",
                  file=sys.stderr)
    try:
        report = prepare.prepare(data, data_dir, count_tokens=counter, decontaminate=prepare.bfcl_check(data),
                                 sequence_len=cfg.axolotl.get("sequence_len"))
    except (prepare.PrepareError, DecontamError) as exc:
        raise StageError(str(exc)) from None
    print(f"[train] data: {report['rows_in']} rows read, {report['rejected']} rejected"
          + (f" {report['rejected_by_kind']}" if report["rejected"] else "") + f", {report['rows_out']} written"
          + ("".join(f"; {n}: {s['rows_in_mix']} rows" for n, s in report["sources"].items())
             if len(report["sources"]) > 1 else "")
          + (f"; BFCL overlap: {report['decontamination']['rows_overlapping']} rows"
             f" ({report['decontamination']['rows_dropped']} dropped)" if "decontamination" in report else ""))
    return agreement.check_roundtrip(cfg, data_dir, split_heldout(cfg, data_dir, report))


def split_heldout(cfg: DictConfig, data_dir: Path, report: dict) -> dict:
    """Move the fixed held-out split (data.heldout_rows, data.heldout_seed) of the written rows to
    data/heldout.jsonl: never trained on; Axolotl's eval loss and `make eval`'s prompts use it."""
    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines() if line.strip()]
    seed = int(cfg.data.get("heldout_seed") or 0)
    try:
        train_rows, held, held_idx = heldout.split(rows, int(cfg.data.get("heldout_rows") or 0), seed)
    except ValueError as exc:
        raise StageError(f"data={cfg.data.name}: {exc}") from None
    runs.write_text_atomic(data_dir / "train.jsonl", "".join(json.dumps(r) + "\n" for r in train_rows))
    if held:
        runs.write_text_atomic(data_dir / HELDOUT_FILE, "".join(json.dumps(r) + "\n" for r in held))
    report = {**report, "train_rows": len(train_rows),
              # indices into the written rows; never trained on
              "heldout": {"rows": len(held), "seed": seed, "indices": held_idx}}
    runs.write_json_atomic(data_dir / "data_report.json", report)
    print(f"[train] data: {len(held)} rows held out (never trained on), {len(train_rows)} to train")
    return report


def preview_data(cfg: DictConfig, planned: Path) -> None:
    """Read and convert the data before any run folder exists: a missing or malformed file fails
    here naming the file (and line); no usable row writes results/data_reports/<run>.json and stops."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            prepare.prepare(data, Path(tmp))
        except DataFileError as exc:
            raise StageError(str(exc)) from None
        except prepare.PrepareError:
            report_path = Path(cfg.paths.results) / "data_reports" / f"{planned.name}.json"
            report = json.loads((Path(tmp) / "data_report.json").read_text())
            runs.write_json_atomic(report_path, report)
            n = report.get("rows_in", 0)
            what = "is empty" if n == 0 else f"has {n} rows and none converted"
            kinds = report.get("rejected_by_kind")
            raise StageError(f"data={cfg.data.name} ({cfg.data.get('path') or cfg.data.get('hf_id') or 'mix'}) {what}"
                             + (f" (rejected: {kinds})" if kinds else "")
                             + f"; why each row was rejected: {report_path}") from None


def record_packing(cfg: DictConfig, ax: dict, run_dir: Path, tracker) -> None:
    """Packing statistics of Axolotl's prepared dataset -> data_report.json["packing"] and MLflow.
    They describe the run; a failure to compute them is recorded, not fatal."""
    report_path = run_dir / "data" / "data_report.json"
    report = runs.read_json(report_path)
    cmd = [str(envs.python("train", Path(cfg.paths.venv))), "-m", "experiments.train.packing_stats",
           str(ax["dataset_prepared_path"]), "--axolotl-config", str(run_dir / "axolotl.yaml"),
           "--rows-written", str(report.get("train_rows", report["rows_out"])),  # the held-out rows are not in it
           "--sequence-len", str(ax["sequence_len"]), "--micro-batch-size", str(ax.get("micro_batch_size") or 1),
           "--bin-size", str(ax.get("sample_packing_bin_size") or 200),
           "--group-size", str(ax.get("sample_packing_group_size") or 100_000), "--seed", str(ax.get("seed") or 0)]
    if ax.get("sample_packing"):
        cmd.append("--sample-packing")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=envs.subprocess_env())
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        report["packing"] = {"error": tail[0]}
        print(f"[train] packing statistics failed: {tail[0]}", file=sys.stderr)
    else:
        report["packing"] = json.loads(proc.stdout.strip().splitlines()[-1])
        p = report["packing"]
        print(f"[train] prepared: {p['rows_prepared']}/{p['rows_written']} rows (dropped {p['rows_dropped']}), tokens/row "
              f"p50 {p['tokens_per_row']['p50']} p95 {p['tokens_per_row']['p95']} max {p['tokens_per_row']['max']}, "
              f"trained share {p['trained_share']:.3f}"
              + (f", packing efficiency {p['packing_efficiency']:.3f}" if p["sample_packing"] else ""), flush=True)
        tracker.log_metrics(packing.metrics(p))
    runs.write_json_atomic(report_path, report)
    tracker.log_artifacts([report_path])


def check_data(cfg: DictConfig) -> None:
    """The data config's sources are well formed (before any folder exists)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    try:
        prepare.sources_of(data)
        mode = data.get("decontaminate") or "report"
        if mode not in DECONTAM_MODES:
            raise ConfigError(f"data.decontaminate={mode!r}: expected one of {DECONTAM_MODES}")
        if mode != "off":
            bfcl_data_dir()
    except (MixError, DecontamError) as exc:
        raise ConfigError(f"data={cfg.data.name}: {exc}") from None


def read_train_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_training(log: list[dict], *, wall_time_s: float, memory: dict[str, int], trainable_params: int | None) -> dict:
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
        # PSS summed over the trainer's process tree: forked workers share its pages (procmon)
        "peak_pss_gib": round(memory.get("pss", 0) / 2**30, 3),
        "peak_rss_largest_process_gib": round(memory.get("largest_rss", 0) / 2**30, 3),
        "peak_gpu_mem_gib": last("memory/max_allocated (GiB)"),
        "trainable_params": trainable_params,
        "loss_curve": losses,
        "eval_loss_curve": evals,
    }


def _env_vars(node: DictConfig) -> dict:
    env = node.get("env")
    return OmegaConf.to_container(env, resolve=True) if env else {}


def run_axolotl(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, dict[str, int]]:
    """Run the launch command, teeing its output to the run's train.log line by line (the child
    unbuffered too), so a killed orchestrator leaves the log as far as training got."""
    start = time.time()
    with open(log_path, "ab", buffering=0) as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**env, "PYTHONUNBUFFERED": "1"})
        with PeakMemory(proc.pid) as mem:
            for line in proc.stdout:
                log.write(line)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            rc = proc.wait()
    return rc, time.time() - start, {"pss": mem.peak_pss_bytes, "largest_rss": mem.peak_largest_rss_bytes}


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
    check_data(cfg)
    planned = results / (cfg.run.id or runs.new_run_id(cfg.method.name, cfg.model.name))
    preview_data(cfg, planned)  # a missing or malformed file fails here, naming the file and line
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
        "comparison": cfg.run.comparison, "sweep": cfg.run.get("sweep"), "overrides": list(overrides), "launch": launch_info(cfg, ax),
        "mlflow": {"tracking_uri": cfg.tracking.uri, "experiment": cfg.tracking.experiment, "train_run_id": tracker.run_id},
        "stages": {"train": "running"}, "stage_owners": {"train": runs.owner()},
    })
    print(f"[train] run folder: {run_dir}", flush=True)
    return _run_training(cfg, run_dir, ax, tracker, cmd, resumed_from=None)


def last_checkpoint(output_dir: Path) -> tuple[Path, int] | None:
    """The newest complete Trainer checkpoint (checkpoint-<step>/ with trainer_state.json)."""
    found = [(int(p.name.split("-")[1]), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()]
    return (max(found)[1], max(found)[0]) if found else None


def resume(run: str, overrides: Sequence[str] = ()) -> Path:
    """`make train RESUME=<run_id>`: continue an interrupted training in its own folder, from its
    last checkpoint (Axolotl's resume_from_checkpoint), with its own config, appending to its
    train.log, train_log.jsonl and MLflow run."""
    base = compose(overrides)
    run_dir = runs.resolve_run(Path(base.paths.results), run)  # marks a killed training failed
    info = runs.read_json(run_dir / runs.RUN_JSON)
    state = info.get("stages", {}).get("train")
    if state == "done":
        raise runs.RunError(f"RESUME={info['run_id']}: its training is done; nothing to resume")
    if state == "running":
        raise runs.RunError(f"RESUME={info['run_id']}: PID {info['stage_owners']['train']['pid']} is training it now")
    cfg = compose(info.get("overrides", []))
    print(banner(cfg), flush=True)
    ax = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    found = last_checkpoint(run_dir / "adapter")
    ax.pop("resume_from_checkpoint", None)
    if found:
        ax["resume_from_checkpoint"] = str(found[0])
        _truncate_train_log(run_dir / "adapter" / "train_log.jsonl", found[1])
    runs.write_text_atomic(run_dir / "axolotl.yaml", yaml.safe_dump(ax, sort_keys=False))
    tracker = Tracker(cfg.tracking, run_name=f"train/{info['run_id']}", tags={},
                      resume_run_id=info.get("mlflow", {}).get("train_run_id"))
    runs.record_stage(run_dir, "train", "running")
    cmd = launch_command(cfg.launcher, Path(cfg.paths.venv) / "train", run_dir / "axolotl.yaml")
    msg = f"from {found[0].name} (step {found[1]})" if found else "from step 0 (no checkpoint was saved)"
    with open(run_dir / "train.log", "ab") as log:
        log.write(f"\n[train] resuming {msg}\n".encode())
    print(f"[train] resuming {run_dir.name} {msg}", flush=True)
    return _run_training(cfg, run_dir, ax, tracker, cmd, resumed_from=found[1] if found else 0)


def _truncate_train_log(path: Path, step: int) -> None:
    """Keep the log lines up to the checkpoint's step: the resumed training logs the rest again."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        runs.write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _run_training(cfg: DictConfig, run_dir: Path, ax: dict, tracker: Tracker, cmd: list[str],
                  resumed_from: int | None) -> Path:
    results = Path(cfg.paths.results)
    status = "FAILED"
    try:
        ensure_model(cfg)
        report = prepare_data(cfg, run_dir / "data")
        if resumed_from is None:
            tracker.log_params(train_params(cfg, ax, report))
            tracker.log_artifacts([run_dir / "axolotl.yaml", run_dir / "config.yaml", run_dir / "data" / "data_report.json"])
        else:
            tracker.set_tags({"resumed_from_step": resumed_from})

        env = envs.subprocess_env({
            "MLFLOW_TRACKING_URI": cfg.tracking.uri, "MLFLOW_RUN_ID": tracker.run_id,
            "MLFLOW_EXPERIMENT_NAME": cfg.tracking.experiment,
            **_env_vars(cfg.profile), **_env_vars(cfg.launcher),
        })
        print(f"[train] {shlex.join(cmd)}", flush=True)
        rc, wall, peak = run_axolotl(cmd, env, run_dir / "train.log")
        adapter = run_dir / "adapter" / "adapter_model.safetensors"
        metrics = summarize_training(read_train_log(run_dir / "adapter" / "train_log.jsonl"), wall_time_s=wall,
                                     memory=peak, trainable_params=safetensors_numel(adapter) if adapter.exists() else None)
        metrics["exit_code"] = rc
        if resumed_from is not None:
            metrics["resumed_from_step"] = resumed_from
        runs.write_json_atomic(run_dir / "train_metrics.json", metrics)
        if rc != 0 or not adapter.exists():
            raise StageError(f"axolotl train exited {rc}" + ("" if adapter.exists() else f", no adapter at {adapter}")
                             + f"; log: {run_dir / 'train.log'}")
        check_distributed(cfg, run_dir / "adapter", run_dir / "train_metrics.json")
        record_packing(cfg, ax, run_dir, tracker)
        agreement.record_fingerprints(run_dir, cfg.model.path, tracker)
        status = "FINISHED"
    finally:
        runs.record_stage(run_dir, "train", "done" if status == "FINISHED" else "failed")
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
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0].startswith("--resume="):
            resume(args[0].split("=", 1)[1], args[1:])
        else:
            train(args)
    except (ConfigError, CombinationError, TrackingError, runs.RunError, StageError, FileNotFoundError,
            DataFileError, agreement.RoundTripError) as exc:
        print(f"[train] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
