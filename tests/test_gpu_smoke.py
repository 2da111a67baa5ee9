"""scripts/gpu_smoke.sh without a GPU: its arithmetic (MFU, decode roofline), reading a run folder,
the commands it runs (--dry-run) composing for the h100 profile, and the random-weight model it builds."""
from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from experiments.core.config import compose
from experiments.report import gpu_smoke as gs

from conftest import REPO, TRAIN_PY


def test_mfu_and_roofline_arithmetic():
    # Qwen2.5-7B (7.6e9 parameters) at 3,000 tokens/s on an H100 SXM (989 TFLOP/s bf16): 6N per token
    assert gs.mfu(7.6e9, 3000, 989e12) == pytest.approx(6 * 7.6e9 * 3000 / 989e12) == pytest.approx(0.1383, abs=1e-4)
    # 15.2 GB of bf16 weights read once per step at 3.35 TB/s: 4.54 ms; a 9.07 ms TPOT is half the bound
    assert gs.decode_step_floor_ms(15.2e9, 3.35e12) == pytest.approx(4.537, abs=1e-3)
    assert gs.roofline_ratio(9.075, 15.2e9, 3.35e12) == pytest.approx(0.5, abs=1e-3)


def test_gpu_specs_by_nvidia_smi_name():
    assert gs.gpu_spec("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert gs.gpu_spec("NVIDIA H100 PCIe") == (756e12, 2.0e12)
    assert gs.gpu_spec("NVIDIA H200") == (989e12, 4.8e12)
    with pytest.raises(ValueError, match="known: H100 PCIe.*--peak-tflops"):
        gs.gpu_spec("Tesla T4")


def level(conc, tpot, out_tps, failed=0):
    return {"concurrency": conc, "tpot_ms": {"median": tpot}, "throughput": {"output_tokens_per_s": out_tps},
            "requests": {"failed": failed}}


def test_summary_and_its_text():
    train = {"tokens_per_s": 20000.0, "peak_gpu_mem_gib": 21.5, "steps": 30}
    s = gs.summarize(train, 1_300_000_000, 2.6e9, [level(32, 12.0, 2500.0), level(1, 4.0, 240.0)], (989e12, 3.35e12))
    assert s["mfu"] == pytest.approx(6 * 1.3e9 * 20000 / 989e12, abs=1e-4)
    assert [lv["concurrency"] for lv in s["serve"]] == [1, 32]
    assert s["serve"][0]["per_stream_tokens_per_s"] == 250.0
    assert s["serve"][0]["roofline_ratio"] == pytest.approx(1000 * 2.6e9 / 3.35e12 / 4.0, abs=1e-3)
    text = gs.render(s, "NVIDIA H100 80GB HBM3")
    assert "MFU 15.8%" in text and "21.5 GiB" in text and "concurrency  32" in text and "of the roofline" in text
    assert gs.summarize({}, 1, 2.0, [], (1.0, 1.0))["mfu"] is None


def test_run_folder_reading(tmp_path):
    from safetensors.numpy import save_file
    import numpy as np

    (tmp_path / "merged").mkdir()
    save_file({"a": np.zeros((4, 8), dtype=np.float32), "b": np.zeros(16, dtype=np.float16)}, str(tmp_path / "merged" / "m.safetensors"))
    assert gs.model_size(tmp_path / "merged") == (48, 4 * 8 * 4 + 16 * 2)
    with pytest.raises(FileNotFoundError, match="no finished `make bench`"):
        gs.latest_bench(tmp_path)
    for stamp, status in [("20261201-000000", "done"), ("20261202-000000", "done"), ("20261203-000000", "running")]:
        d = tmp_path / "bench" / "merged" / stamp
        d.mkdir(parents=True)
        (d / "bench.json").write_text(json.dumps({"status": status}))
        (d / "summary_c1.json").write_text(json.dumps({"stamp": stamp, **level(1, 4.0, 240.0)}))
    assert [s["stamp"] for s in gs.latest_bench(tmp_path)] == ["20261202-000000"]  # the newest finished one


def dry_run(env: dict | None = None) -> list[list[str]]:
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_smoke.sh"), "--dry-run"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def make_vars(cmd: list[str]) -> dict:
    return dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("-"))


def test_dry_run_prints_the_chain_and_its_overrides_compose():
    cmds = dry_run({"SMOKE_RUN": "smoke-t"})
    targets = [c[2] if c[0] == "make" else " ".join(c[:3]) for c in cmds]
    assert targets == ["env", "train", "merge", "bench", ".venv/eval/bin/python -m experiments.report.gpu_smoke",
                       "bash scripts/setup_env.sh train", "bash scripts/setup_env.sh serve", "bash scripts/setup_env.sh eval"]
    train, merge, bench = (make_vars(c) for c in cmds[1:4])
    assert train["PROFILE"] == bench["PROFILE"] == "h100" and train["METHOD"] == "qlora_opt"
    assert merge["RUN"] == bench["RUN"] == "smoke-t" and bench["CONC"] == "1,8,32" and bench["MODEL"] == "merged"
    cfg = compose(["profile=h100", f"method={train['METHOD']}", *train["ARGS"].split()])
    assert cfg.model.name == "random_qwen2_5_1_5b" and cfg.data.name == "toolace_sample" and cfg.axolotl.max_steps == 30
    assert cfg.axolotl.attn_implementation == "sdpa" and cfg.run.id == "smoke-t"
    bcfg = compose(["profile=h100", *bench["ARGS"].split(), f"bench.concurrency=[{bench['CONC']}]"])
    assert bcfg.workload.name == "synthetic" and list(bcfg.bench.concurrency) == [1, 8, 32]
    assert all(c[-1] == "--lock" for c in cmds[5:])
    assert make_vars(dry_run({"SMOKE_MODEL": "random_qwen2_5_7b", "SMOKE_STEPS": "12"})[1])["ARGS"].split()[:1] == ["model=random_qwen2_5_7b"]


@pytest.mark.parametrize("name, hidden, layers", [("random_qwen2_5_1_5b", 1536, 28), ("random_qwen2_5_7b", 3584, 28)])
def test_random_models_are_qwen_shaped_tiny_model_builds(name, hidden, layers):
    from experiments.models.tiny_model import DEFAULTS

    model = compose([f"model={name}"]).model
    assert model.build == "experiments.models.tiny_model" and set(model.shape) <= set(DEFAULTS)
    assert model.shape.hidden_size == hidden and model.shape.num_hidden_layers == layers
    assert model.shape.hidden_size // model.shape.num_attention_heads == 128  # Qwen2.5's head_dim


def test_tiny_model_cli_takes_shape_overrides(tmp_path):
    if not TRAIN_PY.exists():
        pytest.skip("train env not built")
    small = ["--set", "hidden_size=64", "--set", "num_attention_heads=2", "--set", "num_key_value_heads=1",
             "--set", "intermediate_size=96", "--set", "init_std=0.02", "--set", "vocab_size=600"]
    proc = subprocess.run([str(TRAIN_PY), "-m", "experiments.models.tiny_model", "--out", str(tmp_path / "m"), *small],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]) == (64, 2, 96)
    bad = subprocess.run([str(TRAIN_PY), "-m", "experiments.models.tiny_model", "--out", str(tmp_path / "x"), "--set", "hiden_size=8"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "hiden_size" in bad.stderr
