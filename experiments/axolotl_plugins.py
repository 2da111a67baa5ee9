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

    def pre_model_load(self, cfg):
        import torch

        if torch.cuda.is_available():
            return
        try:
            import bitsandbytes.nn.modules as bnb_modules

            bnb_modules.has_avx512bf16 = lambda: False
        except ImportError:
            pass
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cfg.device_map = "cpu"


class RunRecorderPlugin(BasePlugin):
    """Writes what training did into the run folder, independent of any tracking server:

    - `<output_dir>/train_log.jsonl`: every Trainer log line (loss, eval_loss, grad_norm, lr,
      tokens/s, memory) from rank 0 — the local source of truth for train_metrics.json.
    - `<output_dir>/ranks/rank<k>.json` from every rank: world size, parallel mode, the wrapper
      around the model and the steps it ran — the evidence that distributed training was real.
    """

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [_RecorderCallback(trainer, cfg.output_dir)]


def _recorder_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _RecorderCallback(_recorder_callback_base()):
    def __init__(self, trainer, output_dir):
        self.trainer = trainer
        self.output_dir = output_dir
        self.rank = int(os.environ.get("RANK", "0"))

    def _write_rank(self, state, phase):
        import json
        import torch.distributed as dist

        wrapped = getattr(self.trainer, "model_wrapped", None)
        info = {
            "rank": self.rank,
            "phase": phase,
            "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
            "parallel_mode": str(self.trainer.args.parallel_mode),
            "model_wrapper": type(wrapped).__name__ if wrapped is not None else None,
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "train_batch_size": self.trainer.args.train_batch_size,
            "num_train_samples_this_rank": _len_or_none(self.trainer.get_train_dataloader()),
        }
        path = os.path.join(self.output_dir, "ranks", f"rank{self.rank}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(info, f, indent=2)
        os.replace(path + ".tmp", path)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:  # the DDP wrapper exists once the first step ran
            self._write_rank(state, "training")

    def on_train_end(self, args, state, control, **kwargs):
        self._write_rank(state, "end")

    def on_log(self, args, state, control, logs=None, **kwargs):
        import json
        import time

        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(os.path.join(self.output_dir, "train_log.jsonl"), "a") as f:
            f.write(json.dumps(row, default=float) + "\n")


def _len_or_none(loader):
    try:
        return len(loader.dataset)
    except Exception:
        return None
