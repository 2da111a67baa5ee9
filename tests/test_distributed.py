"""Beyond one process: the launcher group renders Axolotl keys and launch commands, rejects
impossible combinations before launch, and two ranks really train together on this CPU.

A multi-process launch can exit 0 while running something else (two independent trainings, one
process, DDP instead of FSDP; see findings), so the tests never trust the exit code: every rank
reports its world size, wrapper, share of the data and a digest of its LoRA weights."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from experiments.train.axolotl_config import CombinationError, build_axolotl_config
from experiments.core.config import compose
from experiments.core.envs import subprocess_env
from experiments.train.launcher import check_launcher, launch_command, read_rank_records, verify_ranks

from conftest import REPO, SHORT_TRAIN, TRAIN_PY, hydra_args, make, read_json

LAUNCHERS = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
# Whole epochs on the shipped sample (steps depend on the data split, not on max_steps), short evals.
EPOCH_TRAIN = ["axolotl.max_steps=null", "axolotl.num_epochs=1", "axolotl.eval_steps=3", "axolotl.save_steps=3",
               "axolotl.warmup_steps=1"]


def render(overrides, tmp_path: Path, name: str) -> tuple[dict, object]:
    cfg = compose(overrides)
    return build_axolotl_config(cfg, run_dir=tmp_path / name, dataset_path=tmp_path / "d.jsonl", mlflow_run_name=name), cfg


# --------------------------------------------------------------------------- config and commands (fast)


def test_launcher_group_keeps_its_keys():
    for name in ["single", *LAUNCHERS]:
        ln = compose([f"launcher={name}"]).launcher
        assert {"name", "kind", "gpus", "nnodes", "node_rank", "master_addr", "master_port", "env",
                "global_batch_size", "expected_wrapper", "resources"} <= set(ln), name
        assert ln.name == name
        assert f"LAUNCHER={name}" in (REPO / "conf" / "launcher" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("profile, gpus", [("h100", 8), ("cpu", 2)])
def test_every_method_and_launcher_passes_axolotl_validation(profile, gpus, tmp_path):
    """FSDP and DeepSpeed keys through Axolotl's own schema, told the world size."""
    paths = []
    for launcher in LAUNCHERS:
        for method in METHODS:
            ax, cfg = render([f"profile={profile}", f"method={method}", f"launcher={launcher}", f"launcher.gpus={gpus}"],
                             tmp_path, f"{launcher}-{method}")
            if launcher == "fsdp":
                assert ax["fsdp_version"] == 2 and ax["fsdp_config"]["transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
            if launcher.startswith("deepspeed"):
                assert ax["deepspeed"]["zero_optimization"]["stage"] == int(launcher[-1])
            path = tmp_path / f"{launcher}-{method}.yaml"
            path.write_text(yaml.safe_dump(ax))
            paths.append(path)
    caps = json.dumps(OmegaConf.to_container(cfg.profile.capabilities))
    proc = subprocess.run([str(TRAIN_PY), "-m", "experiments.train.axolotl_validate", *map(str, paths), "--capabilities", caps,
                           "--world-size", str(gpus)], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("valid (Axolotl schema)") == len(paths)


def test_launch_commands_for_8_gpus_and_2_nodes():
    """The GPU commands of the README, rendered: one node of 8 GPUs, then 2 nodes of 8."""
    venv, yml = Path("/r/.venv/train"), Path("/r/results/ft/axolotl.yaml")

    one = compose(["profile=h100", "method=qlora_opt", "launcher=ddp", "launcher.gpus=8"]).launcher
    assert launch_command(one, venv, yml) == [
        "/r/.venv/train/bin/torchrun", "--nnodes=1", "--node_rank=0", "--nproc_per_node=8",
        "--master_addr=127.0.0.1", "--master_port=29500", "-m", "axolotl.cli.train", str(yml)]

    for rank in (0, 1):
        cfg = compose(["profile=h100", "method=qlora_opt", "launcher=ddp", "launcher.gpus=8", "launcher.nnodes=2",
                       f"launcher.node_rank={rank}", "launcher.master_addr=10.0.0.1", "run.id=ft-2n"])
        check_launcher(cfg)
        cmd = launch_command(cfg.launcher, venv, yml)
        assert cmd[1:6] == ["--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=8", "--master_addr=10.0.0.1",
                            "--master_port=29500"]

    ds = compose(["profile=h100", "launcher=deepspeed_zero3", "launcher.gpus=8", "launcher.nnodes=2",
                  "launcher.node_rank=1", "launcher.master_addr=10.0.0.1", "run.id=ft-2n"]).launcher
    cmd = launch_command(ds, venv, yml)
    assert cmd[:2] == ["/r/.venv/train/bin/accelerate", "launch"] and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "16" and cmd[cmd.index("--machine_rank") + 1] == "1"

    readme = (REPO / "README.md").read_text()
    for line in ["make train METHOD=qlora_opt LAUNCHER=ddp GPUS=8",
                 "make train METHOD=qlora_opt LAUNCHER=ddp GPUS=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=",
                 "make train METHOD=qlora_opt LAUNCHER=ddp GPUS=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=",
                 "--nproc_per_node=8", "make k8s"]:
        assert line in readme, line


def test_global_batch_size_is_kept_across_world_sizes(tmp_path):
    for gpus, accum in [(1, 16), (2, 8), (8, 2)]:
        ax, _ = render(["profile=h100", "method=qlora_opt", "launcher=ddp", f"launcher.gpus={gpus}",
                        "launcher.global_batch_size=32"], tmp_path, f"g{gpus}")
        assert ax["micro_batch_size"] == 2 and ax["gradient_accumulation_steps"] == accum
        assert ax["micro_batch_size"] * ax["gradient_accumulation_steps"] * gpus == 32


@pytest.mark.parametrize("overrides, key", [
    (["launcher=ddp", "launcher.gpus=3", "launcher.global_batch_size=16"], "launcher.global_batch_size"),
    (["launcher=deepspeed_zero3", "method=qlora", "+axolotl.bnb_config_kwargs.bnb_4bit_quant_storage=uint8"],
     "bnb_4bit_quant_storage"),
    (["launcher=deepspeed_zero3", "method=dora", "+axolotl.load_in_8bit=true"], "axolotl.load_in_8bit"),
    (["launcher=deepspeed_zero3", "method=qlora_opt", "+axolotl.gradient_checkpointing_kwargs.use_reentrant=false"],
     "use_reentrant"),
])
def test_impossible_parallel_combinations_are_named(overrides, key, tmp_path):
    with pytest.raises(CombinationError, match=key.replace(".", r"\.")):
        render(["profile=h100", *overrides], tmp_path, "bad")


@pytest.mark.parametrize("overrides, key", [
    (["launcher=ddp", "launcher.nnodes=2"], "run.id"),
    (["launcher=ddp", "launcher.nnodes=2", "launcher.node_rank=2", "run.id=x"], "launcher.node_rank"),
    (["launcher=single", "launcher.gpus=2"], "launcher.kind=python"),
    (["launcher=ddp", "launcher.kind=mpirun"], "launcher.kind"),
])
def test_impossible_launches_are_named(overrides, key):
    with pytest.raises(CombinationError, match=key.replace(".", r"\.")):
        check_launcher(compose(overrides))


def test_make_train_rejects_bad_launches_before_anything_starts(results_dir):
    before = set(results_dir.iterdir())
    for args, expected in [(["LAUNCHER=ddp", "GPUS=3", hydra_args("launcher.global_batch_size=16")], "launcher.global_batch_size"),
                           (["LAUNCHER=ddp", "GPUS=2", "NNODES=2"], "run.id"),
                           (["LAUNCHER=deepspeed_zero3", "METHOD=qlora", hydra_args("+axolotl.load_in_8bit=true")],
                            "axolotl.load_in_8bit")]:
        proc = make("train", *args, check=False)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-2000:]
    assert set(results_dir.iterdir()) - before <= {results_dir / "mlflow.db", results_dir / "mlartifacts"}


# --------------------------------------------------------------------------- the verdict on rank records


def _good_records() -> dict[int, dict]:
    rec = {"phase": "end", "world_size": 2, "backend": "gloo", "parallel_mode": "ParallelMode.DISTRIBUTED",
           "model_wrapper": "DistributedDataParallel", "global_step": 5, "max_steps": 5,
           "gradient_accumulation_steps": 1, "per_device_train_batch_size": 2, "num_train_samples_total": 18,
           "batches_per_epoch_this_rank": 5, "lora_sha256": "ab" * 32}
    return {r: {**rec, "rank": r} for r in (0, 1)}


@pytest.mark.parametrize("change, why", [
    # what `accelerate launch --multi_gpu` without ACCELERATE_USE_CPU does (measured): a process
    # group of 2 exists, but each rank trains alone on all the data, unwrapped
    ({"model_wrapper": "PeftModelForCausalLM", "parallel_mode": "ParallelMode.NOT_PARALLEL",
      "batches_per_epoch_this_rank": 9}, "expected ParallelMode.DISTRIBUTED"),
    ({"world_size": 1}, "world size 1"),                            # one process per group
    ({"model_wrapper": "PeftModelForCausalLM"}, "model wrapper"),   # FSDP on CPU silently fell back / no wrapper
    ({"batches_per_epoch_this_rank": 9}, "batches per epoch"),      # every rank saw all the data
    ({"lora_sha256": "cd" * 32}, "different LoRA weights"),         # ranks drifted apart
    ({"phase": "training"}, "no end-of-training record"),           # a rank died before the end
    ({"global_step": 3}, "stopped at different steps"),
])
def test_verify_ranks_catches_launches_that_run_something_else(change, why):
    launcher = compose(["launcher=ddp", "launcher.gpus=2"]).launcher
    assert verify_ranks(_good_records(), launcher) == []
    records = _good_records()
    records[1].update(change)
    problems = verify_ranks(records, launcher)
    assert any(why in p for p in problems), problems
    assert any("ranks [1]" in p for p in verify_ranks({0: records[0]}, launcher))  # one process only


def test_verify_ranks_does_not_count_packed_batches():
    """With sample packing a batch holds several samples: the share check would be wrong."""
    launcher = compose(["launcher=ddp", "launcher.gpus=2"]).launcher
    records = _good_records()
    for rec in records.values():
        rec.update(sample_packing=True, batches_per_epoch_this_rank=2)
    assert verify_ranks(records, launcher) == []


# --------------------------------------------------------------------------- real training on this CPU


def _ddp_args(run_id: str, port: int, *extra: str) -> list[str]:
    return ["METHOD=dora", "LAUNCHER=ddp", hydra_args(f"run.id={run_id}", f"launcher.master_port={port}", *EPOCH_TRAIN, *extra)]


@pytest.fixture(scope="module")
def ddp_run(results_dir) -> Path:
    """`make train LAUNCHER=ddp GPUS=2`: two gloo ranks train the tiny model through Axolotl."""
    make("train", "GPUS=2", *_ddp_args("test-ddp", 29611))
    return results_dir / "test-ddp"


def test_two_ranks_train_together(ddp_run):
    info = read_json(ddp_run / "run.json")
    assert info["stages"]["train"] == "done" and info["launch"]["world_size"] == 2
    launch = (ddp_run / "launch.sh").read_text()
    assert "torchrun --nnodes=1 --node_rank=0 --nproc_per_node=2" in launch
    assert "export ACCELERATE_USE_CPU=true" in launch  # the CPU profile's adaptation, not the GPU path's

    records = read_rank_records(ddp_run / "adapter" / "ranks")
    assert sorted(records) == [0, 1]
    for rec in records.values():
        assert rec["phase"] == "end" and rec["world_size"] == 2 and rec["backend"] == "gloo"
        assert rec["model_wrapper"] == "DistributedDataParallel" and rec["parallel_mode"] == "ParallelMode.DISTRIBUTED"
        assert rec["trainable_numel"] > 0
    assert records[0]["lora_sha256"] == records[1]["lora_sha256"]  # the same weights on both ranks after training

    # Each rank saw half of the data: one epoch is half the optimizer steps of one process.
    rec = records[0]
    total, bs, accum = rec["num_train_samples_total"], rec["per_device_train_batch_size"], rec["gradient_accumulation_steps"]
    steps_two_ranks = math.ceil(math.ceil(total / (2 * bs)) / accum)
    steps_one_rank = math.ceil(math.ceil(total / bs) / accum)
    assert rec["batches_per_epoch_this_rank"] == math.ceil(total / (2 * bs))
    assert rec["global_step"] == records[1]["global_step"] == steps_two_ranks < steps_one_rank
    metrics = read_json(ddp_run / "train_metrics.json")
    assert metrics["steps"] == steps_two_ranks and len(metrics["loss_curve"]) == steps_two_ranks  # what was logged
    assert metrics["distributed"]["problems"] == [] and len(metrics["distributed"]["lora_sha256"]) == 1

    # One adapter (rank 0 saves; checkpoints aside), one MLflow run.
    adapters = [p for p in ddp_run.rglob("adapter_model.safetensors") if not p.parent.name.startswith("checkpoint-")]
    assert adapters == [ddp_run / "adapter" / "adapter_model.safetensors"]
    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    mlrun = client.get_run(info["mlflow"]["train_run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["world_size"] == "2"
    assert len(client.get_metric_history(mlrun.info.run_id, "loss")) == steps_two_ranks


def test_a_launch_that_trains_twice_instead_of_together_fails(results_dir):
    """accelerate --multi_gpu without ACCELERATE_USE_CPU exits 0 after two independent trainings
    (findings); make train must say so instead of reporting success. The exit code of the launch
    itself is 0: only the ranks' records show it."""
    proc = make("train", "GPUS=2", *_ddp_args("test-ddp-wrong", 29612, "launcher.kind=accelerate",
                                               "~profile.env.ACCELERATE_USE_CPU"), check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "did not train as asked" in err, err[-3000:]
    # measured: each rank trained alone, unwrapped, on all the data, and ended elsewhere
    for symptom in ("expected DistributedDataParallel", "batches per epoch, expected", "ended with different LoRA weights"):
        assert symptom in err, (symptom, err[-3000:])
    assert read_json(results_dir / "test-ddp-wrong" / "train_metrics.json")["exit_code"] == 0  # the launch said "fine"
    assert read_json(results_dir / "test-ddp-wrong" / "run.json")["stages"]["train"] == "failed"


def test_two_nodes_on_localhost_train_as_one(results_dir):
    """NNODES=2 with one process each, both on this machine: the multi-node path (static
    rendezvous at MASTER_ADDR, node folders, one MLflow run) for real, with the default method
    (qlora_opt: 4-bit base, sample packing, gradient checkpointing, early stopping)."""
    common = ["LAUNCHER=ddp", "GPUS=1", "NNODES=2", "MASTER_ADDR=127.0.0.1"]
    args = hydra_args("run.id=test-2n", "launcher.master_port=29613", *SHORT_TRAIN)
    env = {**os.environ}
    cmd = ["make", "--no-print-directory", "-C", str(REPO), "train", *common, args]
    nodes = [subprocess.Popen([*cmd[:-1], f"NODE_RANK={r}", cmd[-1]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for r in (0, 1)]
    outs = [p.communicate(timeout=1200)[0] for p in nodes]
    for p, out in zip(nodes, outs):
        assert p.returncode == 0, out[-4000:]

    run, node1 = results_dir / "test-2n", results_dir / "test-2n.node1"
    r0 = read_rank_records(run / "adapter" / "ranks")
    r1 = read_rank_records(node1 / "adapter" / "ranks")
    assert sorted(r0) == [0] and sorted(r1) == [1]  # global rank 1 lives on node 1
    for rec in (r0[0], r1[1]):
        assert rec["world_size"] == 2 and rec["model_wrapper"] == "DistributedDataParallel"
    assert r0[0]["lora_sha256"] == r1[1]["lora_sha256"]
    assert read_json(run / "run.json")["stages"]["train"] == "done"
    assert read_json(node1 / "node.json")["status"] == "done" and not (node1 / "run.json").exists()
    assert "--nnodes=2 --node_rank=1 --nproc_per_node=1" in (node1 / "launch.sh").read_text()
    # Axolotl saves from each node's local rank 0: node 1's copy is the same adapter
    assert (node1 / "adapter" / "adapter_model.safetensors").read_bytes() == (run / "adapter" / "adapter_model.safetensors").read_bytes()
    client = MlflowClient(tracking_uri=read_json(run / "run.json")["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(read_json(run / "run.json")["mlflow"]["experiment"])
    assert len(client.search_runs([exp.experiment_id], "tags.training_run = 'test-2n'")) == 1
