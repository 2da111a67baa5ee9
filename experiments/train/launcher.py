"""The command that starts `axolotl train`, rendered from the launcher group (config, not code),
and the check that a multi-process launch really trained in parallel.

    single      python -m axolotl.cli.train cfg.yml
    ddp, fsdp   torchrun --nnodes N --node_rank R --nproc_per_node G --master_addr A --master_port P -m axolotl.cli.train cfg.yml
    deepspeed_* accelerate launch --multi_gpu --num_processes N*G --num_machines N --machine_rank R ... -m axolotl.cli.train cfg.yml

Pure functions: launcher config -> argv / shell script / verdict. No I/O except `read_rank_records`.
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from omegaconf import DictConfig

from experiments.train.axolotl_config import CombinationError

KINDS = ("python", "torchrun", "accelerate")


def world_size(launcher: DictConfig) -> int:
    return int(launcher.gpus) * int(launcher.nnodes)


def check_launcher(cfg: DictConfig) -> None:
    """What the launcher keys must satisfy before anything starts; the message names the key."""
    ln = cfg.launcher
    if ln.kind not in KINDS:
        raise CombinationError(f"launcher.kind={ln.kind!r}: expected one of {', '.join(KINDS)}")
    for key in ("gpus", "nnodes"):
        if int(ln[key]) < 1:
            raise CombinationError(f"launcher.{key}={ln[key]}: must be >= 1")
    if not 0 <= int(ln.node_rank) < int(ln.nnodes):
        raise CombinationError(f"launcher.node_rank={ln.node_rank}: must be in 0..{int(ln.nnodes) - 1} (launcher.nnodes={ln.nnodes})")
    if ln.kind == "python" and world_size(ln) > 1:
        raise CombinationError(f"launcher.kind=python starts one process, but launcher.gpus x launcher.nnodes = "
                               f"{world_size(ln)}; use LAUNCHER=ddp (torchrun) or another multi-process launcher")
    if int(ln.nnodes) > 1 and not cfg.run.id:
        # Every node must write into (and log to) the same run; a time-stamped id would differ per node.
        raise CombinationError(f"launcher.nnodes={ln.nnodes} needs run.id=<the same id on every node>")


def launch_command(launcher: DictConfig, train_venv: Path, axolotl_yaml: Path, module: str = "axolotl.cli.train") -> list[str]:
    """This node's argv. Every rank runs `module` on the same axolotl.yaml."""
    bin_dir = Path(train_venv) / "bin"
    world = world_size(launcher)
    if launcher.kind == "python":
        return [str(bin_dir / "python"), "-m", module, str(axolotl_yaml)]
    if launcher.kind == "torchrun":
        cmd = [
            str(bin_dir / "torchrun"),
            f"--nnodes={launcher.nnodes}",
            f"--node_rank={launcher.node_rank}",
            f"--nproc_per_node={launcher.gpus}",
            f"--master_addr={launcher.master_addr}",
            f"--master_port={launcher.master_port}",
        ]
        return cmd + ["-m", module, str(axolotl_yaml)]
    if launcher.kind == "accelerate":
        cmd = [
            str(bin_dir / "accelerate"), "launch",
            "--num_processes", str(world),            # accelerate counts processes over all machines
            "--num_machines", str(launcher.nnodes),
            "--machine_rank", str(launcher.node_rank),
            "--main_process_ip", str(launcher.master_addr),
            "--main_process_port", str(launcher.master_port),
        ]
        if world > 1:
            # Without --multi_gpu, accelerate on a machine without CUDA starts ONE process and exits 0.
            cmd.append("--multi_gpu")
        return cmd + ["-m", module, str(axolotl_yaml)]
    raise CombinationError(f"launcher.kind={launcher.kind!r}: expected one of {', '.join(KINDS)}")


def launch_script(cmd: list[str], env: dict, launcher: DictConfig) -> str:
    """launch.sh: the exact command of this node, with the variables it needs (no secrets: the
    caller passes only config-derived variables)."""
    world = world_size(launcher)
    lines = [
        "#!/usr/bin/env bash",
        f"# launcher={launcher.name}: node {launcher.node_rank} of {launcher.nnodes}, "
        f"{launcher.gpus} process(es) here, world size {world}",
    ]
    if int(launcher.nnodes) > 1:
        lines.append("# every other node runs the same line with its own --node_rank / --machine_rank")
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items())]
    lines.append("exec " + shlex.join(cmd))
    return "\n".join(lines) + "\n"


def expected_ranks(launcher: DictConfig) -> list[int]:
    """Global ranks whose processes run on this node (torchrun's numbering)."""
    g = int(launcher.gpus)
    return list(range(int(launcher.node_rank) * g, (int(launcher.node_rank) + 1) * g))


def read_rank_records(ranks_dir: Path) -> dict[int, dict]:
    """rank<k>.json written by experiments.train.axolotl_plugins.RunRecorderPlugin, by rank."""
    records = {}
    for path in sorted(Path(ranks_dir).glob("rank*.json")):
        rec = json.loads(path.read_text())
        records[int(rec["rank"])] = rec
    return records


def verify_ranks(records: dict[int, dict], launcher: DictConfig) -> list[str]:
    """Problems with the evidence that this node trained as the launcher asked; [] when it did.

    Several launches exit 0 while running something else (two independent trainings, one
    process, DDP instead of FSDP), so the exit code proves nothing: each rank must report the
    world size, the expected wrapper, the same LoRA weights at the end, and only its share of
    the data.
    """
    world = world_size(launcher)
    wanted = expected_ranks(launcher)
    problems = []
    missing = [r for r in wanted if r not in records or records[r].get("phase") != "end"]
    if missing:
        return [f"ranks {missing} wrote no end-of-training record (expected ranks {wanted})"]
    for r in wanted:
        rec = records[r]
        if rec.get("world_size") != world:
            problems.append(f"rank {r}: world size {rec.get('world_size')}, expected {world}")
        wrapper = launcher.get("expected_wrapper")
        if wrapper and wrapper not in str(rec.get("model_wrapper")):
            problems.append(f"rank {r}: model wrapper {rec.get('model_wrapper')!r}, expected {wrapper}")
        if world > 1 and "DISTRIBUTED" not in str(rec.get("parallel_mode")):
            problems.append(f"rank {r}: parallel mode {rec.get('parallel_mode')}, expected ParallelMode.DISTRIBUTED")
        total, bs, batches = rec.get("num_train_samples_total"), rec.get("per_device_train_batch_size"), rec.get("batches_per_epoch_this_rank")
        # (with sample packing a batch holds several samples: the count says nothing about the share)
        if world > 1 and total and bs and batches is not None and not rec.get("sample_packing"):
            share = math.ceil(total / (world * bs))  # accelerate gives every rank the same number of batches
            if batches != share:
                problems.append(f"rank {r}: {batches} batches per epoch, expected {share} "
                                f"(1/{world} of {total} samples in batches of {bs})")
    steps = {records[r].get("global_step") for r in wanted}
    if len(steps) != 1:  # early stopping may end before max_steps, but all ranks together
        problems.append(f"ranks {wanted} stopped at different steps: {sorted(map(str, steps))}")
    # A rank that could not compute its digest (its record says why) is not a disagreement.
    hashes = {records[r]["lora_sha256"] for r in wanted if records[r].get("lora_sha256")}
    if len(hashes) > 1:
        problems.append(f"ranks {wanted} ended with different LoRA weights: {sorted(hashes)}")
    return problems

