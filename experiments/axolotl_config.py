"""Composed Hydra config -> the Axolotl config dict of one run. Pure: no I/O, no Axolotl import."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class CombinationError(ValueError):
    """Keys that each validate but cannot go together; the message names them."""


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def world_size(cfg: DictConfig) -> int:
    return int(cfg.launcher.gpus) * int(cfg.launcher.nnodes)


def check_combinations(ax: dict, world: int) -> None:
    """What Axolotl accepts key by key but would fail on (or silently ignore) at run time."""
    if ax.get("adapter") == "qlora" and not (ax.get("load_in_4bit") or ax.get("load_in_8bit")):
        raise CombinationError("axolotl.adapter=qlora needs axolotl.load_in_4bit=true")
    if ax.get("peft_use_dora") and ax.get("adapter") not in ("lora", "qlora"):
        raise CombinationError(f"axolotl.peft_use_dora needs adapter lora or qlora, got {ax.get('adapter')!r}")
    if ax.get("early_stopping_patience"):
        eval_steps, save_steps = ax.get("eval_steps"), ax.get("save_steps")
        if ax.get("save_strategy") == "no" or not eval_steps or not save_steps or save_steps % eval_steps:
            raise CombinationError(
                "axolotl.early_stopping_patience needs save_strategy=steps and "
                f"save_steps ({save_steps}) a multiple of eval_steps ({eval_steps})"
            )
    batch = ax.get("batch_size")
    if batch is not None and batch % (ax.get("micro_batch_size", 1) * world):
        raise CombinationError(
            f"axolotl.batch_size={batch} is not divisible by micro_batch_size x world size "
            f"({ax.get('micro_batch_size', 1)} x {world})"
        )


def build_axolotl_config(cfg: DictConfig, *, run_dir: Path, dataset_path: Path, mlflow_run_name: str) -> dict[str, Any]:
    """The axolotl.yaml of a run: the `axolotl` node of the composed config plus the run's paths,
    its dataset entry and its tracking keys. Keys set to null in conf/ are left to Axolotl's defaults."""
    ax = _drop_none(OmegaConf.to_container(cfg.axolotl, resolve=True))
    run_dir = Path(run_dir)
    dataset = _drop_none(OmegaConf.to_container(cfg.data.axolotl_dataset, resolve=True))
    ax["datasets"] = [{"path": str(dataset_path), "ds_type": "json", **dataset}]
    ax["dataset_prepared_path"] = str(run_dir / "prepared")
    ax["output_dir"] = str(run_dir / "adapter")
    ax.update(
        use_mlflow=True,
        mlflow_tracking_uri=str(cfg.tracking.uri),
        mlflow_experiment_name=str(cfg.tracking.experiment),
        mlflow_run_name=mlflow_run_name,
        hf_mlflow_log_artifacts=False,  # we log axolotl.yaml and metrics ourselves; no checkpoints
    )
    check_combinations(ax, world_size(cfg))
    return ax
