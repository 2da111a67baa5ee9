"""Axolotl plugins used by the CPU profile (conf/profile/cpu.yaml lists them; the GPU path never loads them).

Loaded by Axolotl in the train environment by dotted path, so this module imports only axolotl.
"""
from __future__ import annotations

import os

from axolotl.integrations.base import BasePlugin


class CpuCompatPlugin(BasePlugin):
    """Two CPU-only fixes that must happen before the model loads.

    1. bitsandbytes repacks 4-bit weights into an AVX512-BF16 inference layout on evaluation,
       which breaks QLoRA training right after the first eval ("a view of a leaf Variable that
       requires grad is being used in an in-place operation"). Report the feature as absent.
    2. With WORLD_SIZE > 1 Axolotl pins `device_map={"": LOCAL_RANK}`, which transformers reads
       as a GPU index ("Cannot access accelerator device when none is available"). On CPU every
       rank's model belongs on "cpu"; DDP (gloo) does the rest.
    """

    def load_datasets(self, cfg, preprocess=False):
        # The first hook that sees the normalised config (where Axolotl has just set
        # device_map={"": LOCAL_RANK}) and runs before the model loader copies device_map into its
        # kwargs; pre_model_load is too late for that. Returns None: datasets load as usual.
        import torch

        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cfg.device_map = "cpu"
        return None

    def pre_model_load(self, cfg):
        import torch

        if torch.cuda.is_available():
            return
        try:
            import bitsandbytes.nn.modules as bnb_modules

            bnb_modules.has_avx512bf16 = lambda: False
        except ImportError:
            pass


class CpuBf16Plugin(BasePlugin):
    """bf16 weights on a CPU: transformers' TrainingArguments refuse `bf16=True` without a GPU
    unless `use_cpu=True` ("You need to assign use_cpu"), and Axolotl has no key for it. Listed by
    conf/profile_method/cpu_lora.yaml only; Axolotl merges what this returns into the arguments."""

    def get_training_args(self, cfg):
        return {"use_cpu": True}


class RunRecorderPlugin(BasePlugin):
    """Writes what training did into the run folder, independent of any tracking server:

    - `<output_dir>/train_log.jsonl`: every Trainer log line (loss, eval_loss, grad_norm, lr,
      tokens/s, memory) from rank 0 — the local source of truth for train_metrics.json.
    - `<output_dir>/ranks/rank<k>.json` from every rank: world size, parallel mode, the wrapper
      around the model, the steps it ran, its share of the data and a digest of its LoRA weights
      — the evidence that distributed training was real (experiments.train.launcher.verify_ranks).
    """

    def add_callbacks_post_trainer(self, cfg, trainer):
        from experiments.tracking.client import guard_mlflow_callbacks

        guard_mlflow_callbacks(trainer)  # a tracking server going away must not kill the training
        return [_RecorderCallback(trainer, cfg.output_dir, cfg)]


def _recorder_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _RecorderCallback(_recorder_callback_base()):
    def __init__(self, trainer, output_dir, cfg=None):
        self.trainer = trainer
        self.output_dir = output_dir
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", "0"))

    def _write_rank(self, state, phase):
        import torch.distributed as dist

        wrapped = getattr(self.trainer, "model_wrapped", None)
        loader = self.trainer.get_train_dataloader()  # prepared by accelerate: this rank's shard
        batches = _len_or_none(loader)
        info = {
            "rank": self.rank,
            "phase": phase,
            "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
            "parallel_mode": str(self.trainer.args.parallel_mode),
            "model_wrapper": type(wrapped).__name__ if wrapped is not None else None,
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "gradient_accumulation_steps": self.trainer.args.gradient_accumulation_steps,
            "per_device_train_batch_size": self.trainer.args.per_device_train_batch_size,
            "num_train_samples_total": _len_or_none(getattr(loader, "dataset", None)),
            "batches_per_epoch_this_rank": batches,
            # accelerate gives every rank the same number of batches (wrapping around at the end)
            "num_train_samples_this_rank": batches * self.trainer.args.per_device_train_batch_size if batches else None,
            "sample_packing": bool(getattr(self.trainer.args, "sample_packing", False)),
            # identical on every rank after data-parallel training; different after independent runs
            # that saw different data (and world size / wrapper catch independent runs on the same data)
            **(_trainable_digest(self.trainer.model) if phase == "end" else {}),
        }
        _write_json(os.path.join(self.output_dir, "ranks", f"rank{self.rank}.json"), info, indent=2)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            _write_quantized_weights(self.trainer.model, self.output_dir)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:  # the DDP wrapper exists once the first step ran
            self._write_rank(state, "training")

    def on_train_end(self, args, state, control, **kwargs):
        self._write_rank(state, "end")
        if state.is_world_process_zero and self.trainer.eval_dataset is not None:
            try:
                _write_eval_split(self.trainer, self.cfg, state, self.output_dir)
            except Exception as exc:  # noqa: BLE001 - `make agree` reports the missing file
                print(f"[RunRecorderPlugin] eval split not recorded: {type(exc).__name__}: {exc}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        import json
        import time

        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(os.path.join(self.output_dir, "train_log.jsonl"), "a") as f:
            f.write(json.dumps(row, default=float) + "\n")


EVAL_SPLIT = "eval_split.json"


def _write_quantized_weights(model, output_dir) -> None:
    """`<output_dir>/quantized_weights.json`: the base weights the trainer held in 4 bits (bitsandbytes
    Params4bit), in the base checkpoint's names, and how they were quantized (quant type, double
    quantization, block size). `make merge` replays exactly that rounding and keeps every other weight
    at its base value (experiments.train.qlora_merge). Written only when some weight is quantized."""
    from experiments.train.qlora_merge import QUANTIZED_WEIGHTS

    names, settings = [], set()
    for name, param in model.named_parameters():
        if type(param).__name__ == "Params4bit":
            names.append(name.removeprefix("base_model.model.").replace(".base_layer.", "."))
            settings.add((param.quant_type, bool(param.compress_statistics), int(param.blocksize)))
    if not names:
        return
    if len(settings) != 1:
        raise RuntimeError(f"4-bit weights quantized with different settings {sorted(settings)}: the merge cannot replay them")
    [(quant_type, double_quant, blocksize)] = settings
    _write_json(os.path.join(output_dir, QUANTIZED_WEIGHTS),
                {"format": "bitsandbytes 4-bit", "quant_type": quant_type, "double_quant": double_quant,
                 "blocksize": blocksize, "weights": sorted(names)}, indent=1)


def _write_eval_split(trainer, cfg, state, output_dir) -> None:
    """`<output_dir>/eval_split.json`: the held-out rows the trainer evaluated on (token ids and
    labels as Axolotl prepared them, and the line of data/train.jsonl each came from), the batches
    its eval loop formed (lists of packed sequences, each a list of row indices) and which eval loss
    belongs to the saved weights. `make agree` recomputes that loss from the served model."""
    import json

    from experiments.data import toolace

    ds, tok = trainer.eval_dataset, trainer.processing_class
    # data/train.jsonl then data/heldout.jsonl (Axolotl's test_datasets): `make agree` reads the same order
    paths = [d["path"] for d in [*(cfg.datasets or [])[:1], *(cfg.get("test_datasets") or [])[:1]]] if cfg is not None else []
    lines = [line for p in paths for line in open(p).read().splitlines()]
    rendered = {}
    for n, line in enumerate(lines):
        row = toolace.to_native(json.loads(line))
        rendered.setdefault(tok.apply_chat_template(row["messages"], tools=row["tools"] or None, tokenize=False), n)
    rows = []
    for i in range(len(ds)):
        ids = list(ds[i]["input_ids"])
        rows.append({"index": i, "line": rendered.get(tok.decode(ids, skip_special_tokens=False)),
                     "input_ids": ids, "labels": list(ds[i]["labels"])})
    batches = []
    for batch in trainer.get_eval_dataloader().batch_sampler:
        batches.append([b if isinstance(b, list) else [b] for b in batch])
    with_best = bool(trainer.args.load_best_model_at_end and state.best_metric is not None)
    info = {"rows": rows, "batches": batches, "sample_packing": bool(getattr(trainer.args, "eval_sample_packing", False)
                                                                     and getattr(trainer.args, "sample_packing", False)),
            "global_step": state.global_step, "load_best_model_at_end": bool(trainer.args.load_best_model_at_end),
            "best_metric": state.best_metric, "best_global_step": getattr(state, "best_global_step", None),
            "saved_weights_eval_loss": state.best_metric if with_best else None,
            "metric_for_best_model": trainer.args.metric_for_best_model}
    _write_json(os.path.join(output_dir, EVAL_SPLIT), info)


def _write_json(path: str, obj, indent: int | None = None) -> None:
    """Atomically (temp file, then rename), creating the folder."""
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(path + ".tmp", path)


def _len_or_none(obj):
    try:
        return len(obj)
    except Exception:
        return None


def _trainable_digest(model) -> dict:
    """SHA-256 over the full trainable (LoRA) tensors in name order, plus their count and size.

    Sharded parameters are gathered first (FSDP2 DTensor.full_tensor, DeepSpeed ZeRO-3
    GatheredParameters): collectives, so every rank must call this at the same point, as the
    callback does. A failure is recorded, not raised: training is over and the adapter is saved."""
    import contextlib
    import hashlib

    import torch

    params = [(n, p) for n, p in sorted(model.named_parameters(), key=lambda kv: kv[0]) if p.requires_grad]
    try:
        gather = contextlib.nullcontext()
        if any(hasattr(p, "ds_id") for _, p in params):  # ZeRO-3: each rank holds a partition
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None)
        h, numel = hashlib.sha256(), 0
        with gather, torch.no_grad():
            for name, p in params:
                t = p.detach()
                t = t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2: the whole tensor
                h.update(name.encode())
                h.update(t.to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
                numel += t.numel()
        return {"lora_sha256": h.hexdigest(), "trainable_tensors": len(params), "trainable_numel": numel}
    except Exception as exc:  # noqa: BLE001 - evidence is best effort; verify_ranks skips a missing digest
        return {"lora_sha256": None, "lora_digest_error": f"{type(exc).__name__}: {exc}",
                "trainable_tensors": len(params), "trainable_numel": None}
