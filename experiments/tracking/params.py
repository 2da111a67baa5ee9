"""The params and tags of a training's MLflow run: one definition for a live run (`make train`)
and for a replayed one (`make sync`)."""
from __future__ import annotations

from omegaconf import DictConfig

from experiments.core.config import world_size

# Axolotl keys logged as `cfg.<key>` params (Axolotl's own callback logs ~195 others, not LoRA r/alpha).
LOGGED_AXOLOTL_PARAMS = (
    "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "peft_use_dora",
    "load_in_4bit", "learning_rate", "lr_scheduler", "optimizer", "micro_batch_size",
    "gradient_accumulation_steps", "sequence_len", "sample_packing", "max_steps", "num_epochs",
)


def train_tags(cfg: DictConfig, run_id: str) -> dict:
    """Tags of a training's MLflow run (also used by `make sync` to re-create it)."""
    return {"stage": "train", "method": cfg.method.name, "model": cfg.model.name, "data": cfg.data.name,
            "profile": cfg.profile.name, "launcher": cfg.launcher.name, "comparison": cfg.run.comparison,
            "sweep": cfg.run.get("sweep"), "training_run": run_id}


def train_params(cfg: DictConfig, ax: dict, data_report: dict) -> dict:
    """Params of a training's MLflow run (also used by `make sync` to re-create it)."""
    params = {"method": cfg.method.name, "model": cfg.model.name, "model_path": cfg.model.path,
              "data": cfg.data.name, "profile": cfg.profile.name, "launcher": cfg.launcher.name,
              "world_size": world_size(cfg), "train_rows": data_report.get("train_rows", data_report["rows_out"]),
              "heldout_rows": (data_report.get("heldout") or {}).get("rows", 0),
              "rejected_rows": data_report["rejected"]}
    params.update({f"cfg.{k}": ax.get(k) for k in LOGGED_AXOLOTL_PARAMS})
    return params
