"""Every method x profile composes and passes Axolotl's own validation; bad input fails fast, naming the key."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.train.axolotl_config import CombinationError, build_axolotl_config
from experiments.core.cpu import native_bf16
from experiments.core.config import ConfigError, compose
from experiments.core.envs import subprocess_env

from conftest import REPO, TRAIN_PY, hydra_args, make

METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
PROFILES = sorted(p.stem for p in (REPO / "conf" / "profile").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def render(overrides, tmp_path: Path, name: str) -> Path:
    cfg = compose(overrides)
    ax = build_axolotl_config(cfg, run_dir=tmp_path / name, dataset_path=tmp_path / "d.jsonl", mlflow_run_name=name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(ax))
    return path, cfg


def validate(paths, cfg) -> subprocess.CompletedProcess:
    caps = json.dumps(OmegaConf.to_container(cfg.profile.capabilities))
    return subprocess.run([str(TRAIN_PY), "-m", "experiments.train.axolotl_validate", *map(str, paths), "--capabilities", caps],
                          capture_output=True, text=True, env=subprocess_env())


def test_methods_and_profiles_exist():
    assert {"lora", "qlora", "dora", "qlora_opt"} <= set(METHODS)
    assert {"cpu", "h100"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_method_and_experiment_passes_axolotl_validation(profile, tmp_path):
    combos = ([[f"method={m}"] for m in METHODS] + [[f"experiment={e}"] for e in EXPERIMENTS]
              + [["model=smol", f"method={m}"] for m in METHODS])
    rendered = [render([f"profile={profile}", *o], tmp_path, f"c{i}") for i, o in enumerate(combos)]
    proc = validate([p for p, _ in rendered], rendered[0][1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("valid (Axolotl schema)") == len(combos)


def test_qlora_opt_states_only_its_differences():
    qlora, opt = (compose([f"method={m}", "profile=h100"]).axolotl for m in ("qlora", "qlora_opt"))
    assert opt.adapter == qlora.adapter == "qlora" and opt.load_in_4bit
    assert opt.bnb_config_kwargs.bnb_4bit_use_double_quant and opt.bnb_config_kwargs.bnb_4bit_quant_type == "nf4"
    assert opt.attn_implementation == "sdpa" and opt.sdpa_varlen and opt.gradient_checkpointing and opt.sample_packing
    assert opt.lr_scheduler == "cosine" and opt.warmup_ratio == 0.05 and opt.max_grad_norm == 1.0
    assert opt.optimizer == "adamw_torch_fused" and len(opt.lora_target_modules) == 7
    assert opt.early_stopping_patience == 3
    text = (REPO / "conf" / "method" / "qlora_opt.yaml").read_text()
    assert "- qlora" in text and "lora_r:" not in text  # inherited, not copied


def test_lora_inherits_and_trains_bf16_on_cpu_through_a_plugin():
    gpu, cpu = (compose(["method=lora", f"profile={p}"]).axolotl for p in ("h100", "cpu"))
    assert gpu.adapter == cpu.adapter == "lora" and not gpu.load_in_4bit and gpu.bf16 == "auto"
    assert len(gpu.lora_target_modules) == 7 and gpu.lora_r == compose(["method=qlora", "profile=h100"]).axolotl.lora_r
    # conf/profile_method/cpu_lora.yaml (Hydra specialisation): bf16 weights where this CPU computes
    # bf16 natively, use_cpu from the plugin; a hand-set value wins over the probe
    assert cpu.bf16 is native_bf16() and cpu.plugins[-1] == "experiments.train.axolotl_plugins.CpuBf16Plugin"
    for forced in (True, False):
        assert compose(["method=lora", "profile=cpu", f"axolotl.bf16={forced}"]).axolotl.bf16 is forced
    # model=smol is served in the dtype this CPU computes fast; the tiny model keeps vLLM's choice
    assert compose(["profile=cpu", "model=smol"]).serve.dtype == ("bfloat16" if native_bf16() else "float32")
    assert compose(["profile=cpu"]).serve.dtype == compose(["profile=h100", "model=smol"]).serve.dtype == "auto"
    assert cpu.attn_implementation == "sdpa" and cpu.lora_mlp_kernel is False   # the profile still applies
    dora = compose(["method=dora", "profile=cpu"]).axolotl
    assert dora.bf16 is False and not any("CpuBf16" in p for p in dora.plugins)  # lora's combination only
    text = (REPO / "conf" / "method" / "lora.yaml").read_text()
    assert "- qlora" in text and "lora_r:" not in text  # inherited, not copied


def test_model_group_carries_its_limits():
    smol, tiny = compose(["profile=cpu", "model=smol"]), compose(["profile=cpu"])
    assert smol.serve.max_model_len == 8192 and smol.axolotl.sequence_len == 1024
    assert '{"max_new_tokens": 192}' in smol.serve.extra_args
    assert tiny.serve.max_model_len == 16384 and '{"max_new_tokens": 64}' in tiny.serve.extra_args
    assert compose(["profile=h100"]).axolotl.sequence_len == 4096 and compose(["profile=h100"]).serve.extra_args == ["--generation-config", "vllm"]
    assert compose(["profile=cpu", "model=smol", "serve.max_model_len=4096"]).serve.max_model_len == 4096
    assert smol.model.build == "experiments.models.smol" and tiny.model.build == "experiments.models.tiny_model"


def test_cpu_profile_carries_the_cpu_differences():
    cfg = compose(["profile=cpu", "method=qlora_opt"])
    assert cfg.model.name == "tiny" and cfg.data.name == "toolace_sample"
    ax = cfg.axolotl
    assert ax.attn_implementation == "sdpa" and ax.bf16 is False and ax.tf32 is False
    assert not (ax.lora_mlp_kernel or ax.lora_qkv_kernel or ax.lora_o_kernel)
    # the command line still beats the profile
    assert compose(["profile=cpu", "model=qwen2_5_7b"]).model.name == "qwen2_5_7b"


def test_every_method_file_says_how_to_run_it():
    for m in METHODS:
        assert f"make train METHOD={m}" in (REPO / "conf" / "method" / f"{m}.yaml").read_text()


def test_unknown_method_is_named():
    with pytest.raises(ConfigError, match="method/nope"):
        compose(["method=nope"])


def test_misspelt_key_without_plus_is_named():
    with pytest.raises(ConfigError, match="lora_targt_modules"):
        compose(["axolotl.lora_targt_modules=[q_proj]"])


def test_impossible_combination_is_named(tmp_path):
    with pytest.raises(CombinationError, match="load_in_4bit"):
        render(["method=qlora", "axolotl.load_in_4bit=false"], tmp_path, "x")


def test_axolotl_rejects_with_the_key_named(tmp_path):
    cases = {"+axolotl.lora_targt_modules=[q_proj]": "axolotl.lora_targt_modules",
             "axolotl.lora_r=abc": "axolotl.lora_r",
             "+axolotl.datasets_typo=1": "axolotl.datasets_typo"}
    rendered = [render(["profile=cpu", o], tmp_path, f"bad{i}") for i, o in enumerate(cases)]
    proc = validate([p for p, _ in rendered], rendered[0][1])  # one process: importing axolotl is slow
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    for (path, _), expected in zip(rendered, cases.values()):
        assert any(str(path) in line and expected in line for line in lines), (expected, proc.stderr[-2000:])


def test_make_train_rejects_bad_input_fast_and_leaves_nothing(results_dir):
    before = set(results_dir.iterdir())
    for args, expected in [(["METHOD=nope"], "method/nope"),
                           (["METHOD=qlora", hydra_args("+axolotl.lora_targt_modules=[q_proj]")], "lora_targt_modules"),
                           (["METHOD=qlora", hydra_args("axolotl.load_in_4bit=false")], "load_in_4bit")]:
        start = time.time()
        proc = make("train", *args, check=False)
        assert proc.returncode != 0
        assert expected in proc.stderr, proc.stderr[-2000:]
        assert time.time() - start < 60  # seconds, not a model load
    assert set(results_dir.iterdir()) - before <= {results_dir / "mlflow.db", results_dir / "mlartifacts"}


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 fma avx512f avx512bw amx_bf16 amx_tile", True),     # Sapphire Rapids
    ("fpu sse2 avx2 avx512f avx512_bf16", True),                          # Zen 4 / Cooper Lake
    ("fpu sse2 avx2 fma avx512f avx512bw avx512_vnni", False),           # AVX-512 without bf16
    ("fpu sse2 avx2 fma vaes vpclmulqdq", False),                         # AVX2 only (Zen 3)
])
def test_native_bf16_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert native_bf16(cpuinfo) is native
    assert native_bf16(tmp_path / "missing") is False     # not Linux: fp32, the safe choice
