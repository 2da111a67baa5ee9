"""`make merge [RUN=...] [CHECKPOINT=best|<step>]`: fold a run's adapter (the final one, or a saved
checkpoint) into its base model with Axolotl's own merge.

Writes results/<run>/merged/ (weights, tokenizer, chat template). Axolotl writes into a scratch
folder first and the result is moved into place in one rename, so an interrupted merge never
leaves a half-merged model that `make serve` would pick up; merging twice is refused.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from experiments.core import envs
from experiments.core import fingerprint, runs
from experiments.core.config import ConfigError, compose
from experiments.train import checkpoints
from experiments.train.qlora_merge import QUANTIZED_WEIGHTS
from experiments.tracking.client import TrackingError, check_reachable, client_for

# Files vLLM needs beside the weights; copied from the base model when the merge did not write them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "chat_template.jinja", "generation_config.json")


class MergeError(RuntimeError):
    pass


def merge_adapter(run_dir: Path, venv: Path, adapter: Path, dest: Path, log: Path) -> tuple[float, dict]:
    """Axolotl's merge-lora of `adapter` on the run's base model into `dest` (scratch folder, then one
    rename; tokenizer files copied from the base when missing; the folder must render and tokenize like
    training did). Returns (wall time s, the folder's fingerprints incl. its weights' digest)."""
    info = runs.read_json(run_dir / runs.RUN_JSON)
    scratch = dest.with_name(f".{dest.name}.merge-tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    quantized = quantized_record(run_dir)
    cmd = [str(envs.python("train", venv)), "-m", "axolotl.cli.merge_lora", str(merge_config(run_dir, quantized, scratch)),
           f"--lora_model_dir={adapter}", f"--output_dir={scratch}"]
    print("[merge] " + " ".join(cmd), flush=True)
    start = time.time()
    with open(log, "ab") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=envs.subprocess_env()).returncode
    out = scratch / "merged"
    if rc != 0 or not (out / "config.json").exists():
        raise MergeError(f"axolotl merge-lora exited {rc}; log: {log}")
    base = Path(info["model_path"])
    for name in TOKENIZER_FILES:  # a hub base has no local folder: then the merge's own copy stands
        if not (out / name).exists() and (base / name).exists():
            shutil.copy2(base / name, out / name)
    restored = None if quantized is None else restore_unquantized(venv, quantized, adapter, out, info["model_path"], log)
    try:  # the merged folder must render and tokenize like training did
        fp = fingerprint.check_folder(info.get("fingerprints"), out, "the merged model")
    except fingerprint.FingerprintError as exc:
        raise MergeError(f"{exc} (scratch copy left in {out})") from None
    fp["weights"] = fingerprint.weights_digest(out)
    if restored is not None:
        fp["qlora_restored"] = restored
    out.rename(dest)
    shutil.rmtree(scratch, ignore_errors=True)
    fp = {**fp, "chat_template_file": fp["chat_template_file"].replace(str(out), str(dest)),
          "tokenizer_files": [f.replace(str(out), str(dest)) for f in fp["tokenizer_files"]]}
    return round(time.time() - start, 2), fp


def nf4_settings(quantized: dict) -> dict:
    """Pure: the bnb_config_kwargs that make Axolotl's merge replay the trainer's 4-bit rounding.

    Axolotl 0.19's merge reads double quantization as `getattr(cfg, "bnb_4bit_use_double_quant", True)`
    on a DictDefault, which answers None for a missing key: it rounds without double quantization while
    training (Axolotl's own default) used it, which moved the tiny model's merged weights by up to 3e-3."""
    return {"bnb_4bit_quant_type": quantized["quant_type"], "bnb_4bit_use_double_quant": quantized["double_quant"],
            "blocksize": quantized["blocksize"]}


def quantized_record(run_dir: Path) -> Path | None:
    """adapter/quantized_weights.json (written by the run recorder; a run-level record, also used for
    checkpoints), or None when training quantized nothing."""
    path = Path(run_dir) / "adapter" / QUANTIZED_WEIGHTS
    if path.is_file():
        return path
    if (yaml.safe_load((Path(run_dir) / "axolotl.yaml").read_text()) or {}).get("load_in_4bit"):
        print(f"[merge] warning: {path} missing (trained before it was recorded): the merged model keeps "
              "Axolotl's NF4 rounding of every weight, also those training kept in full precision", flush=True)
    return None


def merge_config(run_dir: Path, quantized: Path | None, scratch: Path) -> Path:
    """The run's axolotl.yaml, for QLoRA with the 4-bit settings training recorded (nf4_settings)."""
    if quantized is None:
        return run_dir / "axolotl.yaml"
    ax = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    ax["bnb_config_kwargs"] = {**(ax.get("bnb_config_kwargs") or {}), **nf4_settings(json.loads(quantized.read_text()))}
    path = scratch / "axolotl-merge.yaml"
    path.write_text(yaml.safe_dump(ax, sort_keys=False))
    return path


def restore_unquantized(venv: Path, quantized: Path, adapter: Path, out: Path, base: str, log: Path) -> dict:
    """QLoRA: Axolotl's merge also rounds weights training never quantized (embed_tokens, lm_head)
    through NF4; put them back (experiments.train.qlora_merge)."""
    cmd = [str(envs.python("train", venv)), "-m", "experiments.train.qlora_merge", str(out), str(base),
           str(quantized), str(adapter)]
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, env=envs.subprocess_env(), text=True)
        f.write(proc.stdout.encode())
    if proc.returncode != 0:
        raise MergeError(f"restoring the weights QLoRA training kept unquantized failed (exit {proc.returncode}); log: {log}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["restored"]:
        print(f"[merge] QLoRA: {len(result['restored'])} weights training kept unquantized restored from the base "
              f"({', '.join(result['restored'][:3])}{', ...' if len(result['restored']) > 3 else ''}; "
              f"Axolotl's NF4 rounding had moved them by up to {result['max_abs_change_undone']:.3g})", flush=True)
    return result


def merge(run_dir: Path, venv: Path, checkpoint: dict | None = None) -> Path:
    """merged/ from the final adapter, or from `checkpoint` ({step, name, path} of
    experiments.train.checkpoints) when one is chosen (`make merge CHECKPOINT=best|<step>`)."""
    info = runs.read_json(run_dir / runs.RUN_JSON)
    adapter = Path(checkpoint["path"]) if checkpoint else run_dir / "adapter"
    merged = run_dir / "merged"
    if not (adapter / "adapter_config.json").exists():
        raise MergeError(f"{adapter}: run {info['run_id']} has no adapter to merge (did its training finish?)")
    weights = [adapter / n for n in ("adapter_model.safetensors", "adapter_model.bin")]
    if not any(w.is_file() and w.stat().st_size > 0 for w in weights):
        raise MergeError(f"{adapter}: adapter_config.json but no adapter weights ({weights[0].name}); the training "
                         f"of {info['run_id']} did not finish: `make train RESUME={info['run_id']}`")
    if info.get("stages", {}).get("train") != "done":
        raise MergeError(f"run {info['run_id']}: training is {info.get('stages', {}).get('train', 'not recorded')}, "
                         f"not done; resume it with `make train RESUME={info['run_id']}`")
    if (merged / "config.json").exists():
        raise MergeError(f"{merged} already exists; nothing to do (delete it to merge again)")
    wall, fp = merge_adapter(run_dir, venv, adapter, merged, run_dir / "merge.log")
    chosen = {"checkpoint": checkpoint["name"], "step": checkpoint["step"]} if checkpoint else {}
    runs.update_run_json(run_dir, stages={"merge": "done"}, merge={"path": str(merged), "wall_time_s": wall,
                                                                  "fingerprints": fp, "adapter": str(adapter), **chosen})
    print(f"[merge] {merged} from {adapter} ({wall} s)")
    return merged


def record_in_mlflow(run_dir: Path) -> None:
    """Log the merge on the training run's MLflow run (tags + wall time)."""
    info = runs.read_json(run_dir / runs.RUN_JSON)
    uri, mlrun = info["mlflow"]["tracking_uri"], info["mlflow"]["train_run_id"]
    check_reachable(uri)
    client = client_for(uri)
    client.set_tag(mlrun, "merged_path", info["merge"]["path"])
    if info["merge"].get("fingerprints"):
        client.set_tag(mlrun, "fp.merged_weights", info["merge"]["fingerprints"]["weights"])
    client.log_metric(mlrun, "merge/wall_time_s", info["merge"]["wall_time_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Merge a run's adapter into its base model (Axolotl merge-lora)")
    ap.add_argument("--run", default=None, help="run id or folder (default: results/latest)")
    ap.add_argument("--checkpoint", default=None, help="best (by report.best_by=bfcl/<column>), a step or a "
                    "checkpoint name; default: the final adapter")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (profile=..., tracking=...)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        run_dir = runs.resolve_run(Path(cfg.paths.results), args.run)
        chosen = None
        if args.checkpoint:
            chosen = checkpoints.resolve(run_dir, args.checkpoint, str(cfg.report.best_by), str(cfg.report.best_goal))
            print(f"[merge] CHECKPOINT={args.checkpoint}: {chosen['name']} (step {chosen['step']})", flush=True)
        merge(run_dir, Path(cfg.paths.venv), chosen)
        try:
            record_in_mlflow(run_dir)
        except (TrackingError, Exception) as exc:  # the merged model stays; only the record is missing
            print(f"[merge] warning: the merge of {run_dir.name} is not recorded in MLflow ({exc}); "
                  f"the merged model is in {run_dir / 'merged'}", file=sys.stderr)
    except (ConfigError, runs.RunError, MergeError, checkpoints.CheckpointError, FileNotFoundError) as exc:
        print(f"[merge] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
