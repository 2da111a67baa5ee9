"""Composed Hydra config -> the Axolotl config dict of one run. Pure: no I/O, no Axolotl import."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import world_size
from experiments.data.heldout import HELDOUT_FILE


class CombinationError(ValueError):
    """Keys that each validate but cannot go together; the message names them."""


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


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
    _check_parallel(ax)


def _check_parallel(ax: dict) -> None:
    """FSDP / DeepSpeed combinations that pass Axolotl's schema but fail (or hang) at run time."""
    ds = ax.get("deepspeed")
    if ds is not None and not isinstance(ds, dict):
        raise CombinationError("axolotl.deepspeed: expected the DeepSpeed config as a mapping (conf/launcher/deepspeed_*.yaml)")
    stage = ((ds or {}).get("zero_optimization") or {}).get("stage")
    if stage == 3:
        if ax.get("load_in_8bit"):
            raise CombinationError("axolotl.load_in_8bit cannot be used with DeepSpeed ZeRO-3 "
                                   "(axolotl.deepspeed.zero_optimization.stage=3): ZeRO-3 cannot partition int8 weights")
        storage = (ax.get("bnb_config_kwargs") or {}).get("bnb_4bit_quant_storage")
        if ax.get("load_in_4bit") and storage is not None and str(storage) not in ("bfloat16", "float16", "float32"):
            # ZeRO-3 flattens all parameters of a group into one tensor: 4-bit weights must be
            # stored in the float dtype of the rest (Axolotl's default is bfloat16).
            raise CombinationError(f"axolotl.bnb_config_kwargs.bnb_4bit_quant_storage={storage} cannot be used with "
                                   "DeepSpeed ZeRO-3 (axolotl.deepspeed.zero_optimization.stage=3); use bfloat16")
        reentrant = (ax.get("gradient_checkpointing_kwargs") or {}).get("use_reentrant")
        if ax.get("adapter") == "qlora" and ax.get("gradient_checkpointing") and reentrant is False:
            raise CombinationError("axolotl.gradient_checkpointing_kwargs.use_reentrant=false with QLoRA under "
                                   "DeepSpeed ZeRO-3 fails with a CheckpointError (recomputed values differ)")
    fsdp = ax.get("fsdp_config")
    if fsdp and ds:
        raise CombinationError("axolotl.fsdp_config and axolotl.deepspeed cannot be used together (one launcher only)")


def apply_global_batch(ax: dict, global_batch_size: int | None, world: int) -> dict:
    """launcher.global_batch_size -> gradient_accumulation_steps for this world size.

    Axolotl's global batch is micro_batch_size x gradient_accumulation_steps x world size, so it
    grows with GPUs; a fixed global batch keeps the optimisation the same from 1 GPU to 16."""
    if global_batch_size is None:
        return ax
    micro = int(ax.get("micro_batch_size", 1))
    if int(global_batch_size) % (micro * world):
        raise CombinationError(
            f"launcher.global_batch_size={global_batch_size} is not divisible by axolotl.micro_batch_size x world size "
            f"({micro} x {world} = {micro * world}); pick a multiple of {micro * world} or change GPUS/NNODES")
    ax = dict(ax)
    ax.pop("batch_size", None)  # Axolotl refuses batch_size together with gradient_accumulation_steps
    ax["gradient_accumulation_steps"] = int(global_batch_size) // (micro * world)
    return ax


def build_axolotl_config(cfg: DictConfig, *, run_dir: Path, dataset_path: Path, mlflow_run_name: str) -> dict[str, Any]:
    """The axolotl.yaml of a run: the `axolotl` node of the composed config plus the run's paths,
    its dataset entry and its tracking keys. Keys set to null in conf/ are left to Axolotl's defaults."""
    ax = _drop_none(OmegaConf.to_container(cfg.axolotl, resolve=True))
    run_dir = Path(run_dir)
    dataset = _drop_none(OmegaConf.to_container(cfg.data.axolotl_dataset, resolve=True))
    ax["datasets"] = [{"path": str(dataset_path), "ds_type": "json", **dataset}]
    if cfg.data.get("heldout_rows"):  # the run's fixed held-out split (train.stage.prepare_data)
        ax["test_datasets"] = [{"path": str(Path(dataset_path).parent / HELDOUT_FILE), "ds_type": "json",
                                "split": "train", **dataset}]
    ax["dataset_prepared_path"] = str(run_dir / "prepared")
    ax["output_dir"] = str(run_dir / "adapter")
    ax.update(
        use_mlflow=True,
        mlflow_tracking_uri=str(cfg.tracking.uri),
        mlflow_experiment_name=str(cfg.tracking.experiment),
        mlflow_run_name=mlflow_run_name,
        hf_mlflow_log_artifacts=False,  # we log axolotl.yaml and metrics ourselves; no checkpoints
    )
    ax = apply_global_batch(ax, cfg.launcher.get("global_batch_size"), world_size(cfg))
    check_combinations(ax, world_size(cfg))
    return ax
