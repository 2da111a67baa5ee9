"""The command that starts `axolotl train`, rendered from the launcher group (config, not code).

single: python -m axolotl.cli.train cfg.yml
ddp/fsdp/deepspeed_*: torchrun --nnodes N --node_rank R --nproc_per_node G ... -m axolotl.cli.train cfg.yml
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def launch_command(launcher: DictConfig, train_venv: Path, axolotl_yaml: Path, module: str = "axolotl.cli.train") -> list[str]:
    if launcher.kind == "python":
        return [str(Path(train_venv) / "bin" / "python"), "-m", module, str(axolotl_yaml)]
    if launcher.kind == "torchrun":
        cmd = [
            str(Path(train_venv) / "bin" / "torchrun"),
            f"--nnodes={launcher.nnodes}",
            f"--node_rank={launcher.node_rank}",
            f"--nproc_per_node={launcher.gpus}",
            f"--master_addr={launcher.master_addr}",
            f"--master_port={launcher.master_port}",
        ]
        return cmd + ["-m", module, str(axolotl_yaml)]
    raise ValueError(f"launcher.kind={launcher.kind!r}: expected python or torchrun")
