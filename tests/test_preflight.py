"""`make preflight`: the pure checks on given facts (failures name what to do), and the real run on this CPU."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments.core import preflight as pf
from experiments.core.config import compose

from conftest import make

H100 = {"name": "h100", "accelerator": "cuda", "gpu_name": "NVIDIA H100 80GB", "gpu_memory_gib": 80,
        "capabilities": {"compute_capability": "sm_90"}}
CPU = {"name": "cpu", "accelerator": "cpu", "gpu_name": None, "gpu_memory_gib": None, "capabilities": {}}


def gpu(name="NVIDIA H100 80GB HBM3", total_gib=80, free_gib=79, cc="9.0"):
    return {"name": name, "memory_total_mib": total_gib * 1024, "memory_free_mib": free_gib * 1024, "compute_cap": cc}


def probe(cuda="13.0", available=True, **kw):
    return {"torch": "2.14.1", "cuda": cuda, "available": available, "devices": int(available), "warning": "",
            "flash_attn": "ModuleNotFoundError: No module named 'flash_attn'", **kw}


def test_driver_too_old_for_torch_cuda_is_refused_naming_the_minimum():
    c = pf.check_driver("535.183.01", {"train": "13.0", "serve": "13.0"}, "cuda")
    assert c.status == "fail" and "580.65.06" in c.detail and "CUDA 13.0" in c.detail and "580" in c.fix
    assert pf.check_driver("580.159.03", {"train": "13.0"}, "cuda").status == "ok"
    assert pf.check_driver("550.54.14", {"train": "12.4"}, "cuda").status == "ok"   # 12.x needs >= 525.60.13
    assert pf.check_driver("520.61.05", {"train": "12.4"}, "cuda").status == "fail"
    # the newest CUDA among the envs decides
    assert pf.check_driver("560.35.03", {"train": "12.6", "serve": "13.0"}, "cuda").status == "fail"


def test_no_driver_fails_on_gpu_profiles_and_informs_on_cpu():
    assert pf.check_driver(None, {}, "cpu") == pf.Check("driver", "info", pf.NO_GPU)
    c = pf.check_driver(None, {"train": "13.0"}, "cuda")
    assert c.status == "fail" and "PROFILE=cpu" in c.fix


@pytest.mark.parametrize("p, status, needle", [
    (None, "info", "make env-train"),
    ({"error": "ImportError: libcudart.so.13"}, "fail", "libcudart"),
    (probe(cuda=None), "fail", "CPU build"),
    (probe(available=False, warning="The NVIDIA driver on your system is too old"), "fail", "too old"),
    (probe(), "ok", "sees 1 GPU"),
])
def test_cuda_available_in_an_env(p, status, needle):
    c = pf.check_cuda_available("train", p, "cuda")
    assert c.status == status and (needle in c.detail or needle in c.fix), c


def test_cpu_profile_needs_no_cuda():
    assert pf.check_cuda_available("serve", probe(cuda=None, available=False), "cpu").status == "ok"


def test_gpu_checks_against_the_profile():
    assert [c.status for c in pf.check_gpus([gpu()], H100, 0.9)] == ["ok"]
    small = pf.check_gpus([gpu("NVIDIA A100-SXM4-40GB", 40, 39, "8.0")], H100, 0.9)[0]
    assert small.status == "fail" and "expects 80 GiB" in small.detail and "micro_batch_size" in small.fix
    busy = pf.check_gpus([gpu(free_gib=30)], H100, 0.9)[0]
    assert busy.status == "fail" and "gpu_memory_utilization=0.9" in busy.detail and "nvidia-smi" in busy.fix
    h200 = pf.check_gpus([gpu("NVIDIA H200", 141, 140)], H100, 0.9)[0]
    assert h200.status == "warn" and "memory suffices" in h200.detail
    a100 = pf.check_gpus([gpu("NVIDIA A100-SXM4-80GB", 80, 79, "8.0")], H100, 0.9)[0]
    assert a100.status == "warn" and "8.0 < the profile's sm_90" in a100.detail


def test_no_gpu_fails_on_h100_and_is_the_cpu_message_on_cpu():
    assert pf.check_gpus(None, H100, 0.9)[0].status == "fail"
    assert pf.check_gpus(None, CPU, 0.9) == [pf.Check("gpu", "info", "no GPU: the cpu profile will be used")]
    assert pf.check_gpus([gpu()], CPU, 0.9)[0].status == "warn"


def test_flash_attn_only_when_asked_for():
    assert pf.check_flash_attn("sdpa", probe(), "cuda").status == "ok"
    missing = pf.check_flash_attn("flash_attention_2", probe(), "cuda")
    assert missing.status == "fail" and "No module named 'flash_attn'" in missing.detail
    assert "--no-build-isolation flash-attn==" in missing.fix and "attn_implementation=sdpa" in missing.fix
    assert pf.check_flash_attn("flash_attention_2", probe(flash_attn=True), "cuda").status == "ok"
    assert pf.check_flash_attn("flash_attention_2", None, "cpu").status == "fail"


def test_disk():
    low = pf.check_disk({"/data/results": 12.0}, 60)[0]
    assert low.status == "fail" and "12 GiB free" in low.detail and "RESULTS_DIR=" in low.fix
    assert pf.check_disk({"/data/results": 500.0, "/root/.cache/huggingface": 61.0}, 60)[1].status == "ok"


def facts(**kw):
    return {"local": False, "offline": False, "cached": False, "token": False, "hub": {}, **kw}


@pytest.mark.parametrize("f, status, needle", [
    (facts(), "ok", "reachable on the hub"),
    (facts(hub={"gated": True}), "fail", "HF_TOKEN"),
    (facts(hub={"gated": True}, token=True), "ok", "gated, token set"),
    (facts(hub={"error": "gated"}, token=True), "fail", "accept its licence"),
    (facts(hub={"error": "not_found"}), "fail", "no such model"),
    (facts(hub={"error": "unreachable", "detail": "ConnectError"}), "fail", "HF_HUB_OFFLINE=1"),
    (facts(offline=True), "fail", "huggingface-cli download"),
    (facts(offline=True, cached=True), "ok", "cache"),
    (facts(local=True), "ok", "local folder"),
])
def test_model_reachability(f, status, needle):
    c = pf.check_model({"path": "org/model", "build": None}, f)
    assert c.status == status and (needle in c.detail or needle in c.fix), c


def test_render_exit_code_and_fixes():
    text, code = pf.render([pf.Check("a", "ok", "fine"), pf.Check("b", "fail", "broken", "do this")])
    assert code == 1 and "FAIL  b: broken" in text and "-> do this" in text and "FAILED: 1 check(s)" in text
    assert pf.render([pf.Check("a", "warn", "hm")])[1] == 0


def test_run_checks_on_the_composed_h100_config():
    cfg = OmegaConf.to_container(compose(["profile=h100"]), resolve=True)
    good = {"driver": "580.159.03", "gpus": [gpu()], "probes": {"train": probe(), "serve": probe()},
            "disk": {"/r": 500.0}, "model": facts()}
    checks = pf.run_checks(cfg, good)
    assert {c.status for c in checks} == {"ok"}, checks
    assert {c.name for c in checks} >= {"driver", "cuda in train env", "cuda in serve env", "gpu 0", "flash-attn", "disk", "model"}
    bad = pf.run_checks(cfg, {**good, "driver": "550.54.14"})
    assert [c.name for c in bad if c.status == "fail"] == ["driver"]


def test_nvidia_smi_rows():
    driver, gpus = pf.parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 81004, 580.95.05, 9.0\n"
                                       "NVIDIA H100 80GB HBM3, 81559, 1200, 580.95.05, 9.0\n")
    assert driver == "580.95.05" and len(gpus) == 2
    assert gpus[1] == {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559.0, "memory_free_mib": 1200.0, "compute_cap": "9.0"}
    assert [c.status for c in pf.check_gpus(gpus, H100, 0.9)] == ["ok", "fail"]  # one card busy
    assert pf.parse_nvidia_smi("") == (None, [])


def test_capability():
    assert pf.capability("9.0") == pf.capability("sm_90") == (9, 0)
    assert pf.capability("sm_120") == (12, 0) and pf.capability("8.9") < pf.capability("sm_90")


def test_make_preflight_on_this_cpu():
    proc = make("preflight", "PROFILE=cpu")
    assert "no GPU: the cpu profile will be used" in proc.stdout
    assert "[preflight] ready" in proc.stdout and "FAIL" not in proc.stdout
