"""QLoRA merge, made to equal the model that was trained (train env: torch, safetensors).

    python -m experiments.train.qlora_merge MERGED_DIR BASE_DIR QUANTIZED_WEIGHTS_JSON ADAPTER_DIR

QLoRA trains LoRA on a base whose Linear weights bitsandbytes holds in NF4; the trained model is
dequant(NF4(W)) + BA for those and the original W for everything else (embeddings, lm_head, norms:
transformers never quantizes them). Axolotl 0.19's memory-efficient merge-lora reproduces the NF4
view ("NF4 simulation") with two differences from training, both measured on the tiny model:
  - it rounds every tensor of two or more dimensions, so also `embed_tokens` and `lm_head` (moved
    by up to 0.15; the served eval loss was 13.052 against the trainer's 12.895);
  - it reads double quantization from a key Axolotl's config never has and so rounds without it,
    while training used it (weights off by up to 3e-3): experiments.train.merge passes the trainer's
    recorded settings (merge_config).
With both fixed the merged model is the peft model on the 4-bit base: 32/32 greedy sequences
identical, max logprob difference 5.7e-5 (experiments.agree checks this on every run).

This puts back, from the base checkpoint, every weight the trainer did not quantize (the list the
run recorder wrote at training, adapter/quantized_weights.json) unless the adapter itself carries it
(modules_to_save). Prints one JSON object: the restored tensors and how far they had moved.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

QUANTIZED_WEIGHTS = "quantized_weights.json"  # written into adapter/ by the run recorder plugin


def to_restore(merged_keys: list[str], quantized: set[str], adapter_keys: list[str]) -> list[str]:
    """Pure: merged tensors the trainer kept in full precision and the adapter does not train."""
    def trained_by_adapter(key: str) -> bool:
        module = key.rsplit(".", 1)[0]
        return any(f"{module}." in a or a.endswith(module) for a in adapter_keys)
    return [k for k in merged_keys if k not in quantized and not trained_by_adapter(k)]


def base_folder(base: str) -> Path:
    """The base checkpoint's folder: a local path, else the hub cache training downloaded it to."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base, allow_patterns=["*.safetensors", "*.json"]))


def restore(merged: Path, base: str, quantized_json: Path, adapter: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    quantized = set(json.loads(Path(quantized_json).read_text())["weights"])
    adapter_keys = [k for f in sorted(Path(adapter).glob("adapter_model*.safetensors"))
                    for k in safe_open(str(f), "pt").keys()]
    base_files = {}  # tensor name -> the base shard holding it (read lazily: a 7B base is 15 GB)
    for f in sorted(base_folder(base).glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            base_files.update({k: f for k in h.keys()})
    restored, moved = [], 0.0
    for shard in sorted(Path(merged).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as h:
            metadata = h.metadata()
        tensors = load_file(shard)
        changed = False
        for k in (k for k in to_restore(list(tensors), quantized, adapter_keys) if k in base_files):
            with safe_open(str(base_files[k]), "pt") as h:
                orig = h.get_tensor(k).to(tensors[k].dtype)
            if orig.shape != tensors[k].shape:
                raise SystemExit(f"{shard}: {k} has shape {tuple(tensors[k].shape)}, the base {tuple(orig.shape)}")
            diff = (tensors[k].float() - orig.float()).abs().max().item()
            if diff > 0:
                moved, changed = max(moved, diff), True
                tensors[k] = orig
                restored.append(k)
        if changed:
            tmp = shard.with_name(shard.name + ".tmp")
            save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})
            tmp.replace(shard)
    return {"restored": restored, "max_abs_change_undone": moved, "quantized_in_training": len(quantized)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    merged, base, quantized, adapter = args
    print(json.dumps(restore(Path(merged), base, Path(quantized), Path(adapter))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
