"""Compose `conf/` with Hydra's compose API (no Hydra app: no cwd change, no outputs/ folder)."""
from __future__ import annotations

import os
from typing import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.core.cpu import native_bf16
from experiments.core.paths import CONF_DIR, REPO_ROOT

# `${cpu_bf16:}`: this CPU computes bf16 natively (conf/profile_method/cpu_lora.yaml).
OmegaConf.register_new_resolver("cpu_bf16", native_bf16, replace=True)
# `${cpu_dtype:}`: bfloat16 where this CPU computes it natively, else float32 (conf/profile_model/cpu_smol.yaml).
OmegaConf.register_new_resolver("cpu_dtype", lambda: "bfloat16" if native_bf16() else "float32", replace=True)


class ConfigError(ValueError):
    """A composition or override problem; the message names the key or value at fault."""


def one_line(exc: BaseException) -> str:
    """Hydra's multi-line messages (a caret under the override, a link to its docs) as one line."""
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and set(line) != {"^"} and not line.startswith("See https://"))
    override = getattr(exc, "override", None)  # OverrideParseException knows which one
    return f"override {override!r} is not valid Hydra syntax ({text})" if override else text


def compose(overrides: Sequence[str] = (), *, resolve: bool = True) -> DictConfig:
    """Compose conf/config.yaml with command-line style overrides (`method=dora`, `axolotl.lora_r=8`)."""
    os.environ.setdefault("EXPERIMENTS_ROOT", str(REPO_ROOT))
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        if resolve:
            OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"conf/: {one_line(exc)}") from None
    return cfg


def world_size(cfg: DictConfig) -> int:
    """Training processes in all: GPUs per node x nodes (`launcher` group)."""
    return int(cfg.launcher.gpus) * int(cfg.launcher.nnodes)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
