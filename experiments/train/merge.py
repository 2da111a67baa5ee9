"""`make merge [RUN=...]`: fold a run's adapter into its base model with Axolotl's own merge.

Writes results/<run>/merged/ (weights, tokenizer, chat template). Axolotl writes into a scratch
folder first and the result is moved into place in one rename, so an interrupted merge never
leaves a half-merged model that `make serve` would pick up; merging twice is refused.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from experiments.core import envs
from experiments.core import fingerprint, runs
from experiments.core.config import ConfigError, compose
from experiments.tracking.client import TrackingError, check_reachable, client_for

# Files vLLM needs beside the weights; copied from the base model when the merge did not write them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "chat_template.jinja", "generation_config.json")


class MergeError(RuntimeError):
    pass


def merge(run_dir: Path, venv: Path) -> Path:
    info = runs.read_json(run_dir / runs.RUN_JSON)
    adapter = run_dir / "adapter"
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
    scratch = run_dir / ".merge-tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    cmd = [str(envs.python("train", venv)), "-m", "axolotl.cli.merge_lora", str(run_dir / "axolotl.yaml"),
           f"--lora_model_dir={adapter}", f"--output_dir={scratch}"]
    print("[merge] " + " ".join(cmd), flush=True)
    start = time.time()
    with open(run_dir / "merge.log", "ab") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=envs.subprocess_env()).returncode
    out = scratch / "merged"
    if rc != 0 or not (out / "config.json").exists():
        raise MergeError(f"axolotl merge-lora exited {rc}; log: {run_dir / 'merge.log'}")
    base = Path(info["model_path"])
    for name in TOKENIZER_FILES:  # a hub base has no local folder: then the merge's own copy stands
        if not (out / name).exists() and (base / name).exists():
            shutil.copy2(base / name, out / name)
    try:  # the merged folder must render and tokenize like training did
        fp = fingerprint.check_folder(info.get("fingerprints"), out, "the merged model")
    except fingerprint.FingerprintError as exc:
        raise MergeError(f"{exc} (scratch copy left in {out})") from None
    fp["weights"] = fingerprint.weights_digest(out)
    out.rename(merged)
    shutil.rmtree(scratch, ignore_errors=True)
    wall = round(time.time() - start, 2)
    fp = {**fp, "chat_template_file": fp["chat_template_file"].replace(str(out), str(merged)),
          "tokenizer_files": [f.replace(str(out), str(merged)) for f in fp["tokenizer_files"]]}
    runs.update_run_json(run_dir, stages={"merge": "done"},
                         merge={"path": str(merged), "wall_time_s": wall, "fingerprints": fp})
    print(f"[merge] {merged} ({wall} s)")
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
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (profile=..., tracking=...)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        run_dir = runs.resolve_run(Path(cfg.paths.results), args.run)
        merge(run_dir, Path(cfg.paths.venv))
        try:
            record_in_mlflow(run_dir)
        except (TrackingError, Exception) as exc:  # the merged model stays; only the record is missing
            print(f"[merge] warning: the merge of {run_dir.name} is not recorded in MLflow ({exc}); "
                  f"the merged model is in {run_dir / 'merged'}", file=sys.stderr)
    except (ConfigError, runs.RunError, MergeError, FileNotFoundError) as exc:
        print(f"[merge] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
