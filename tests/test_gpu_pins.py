"""The GPU profile's environments, checked without a GPU.

- requirements/gpu/{train,serve}.txt resolve for CPython 3.12 against the public index alone (the
  machine's local indexes, find-links and constraints off), with no "does not provide the extra";
- on GPU profiles the eval env takes PyTorch's CPU build of torch (no CUDA wheels);
- `make env-train PROFILE=h100` with a Python 3.10 fails in seconds, before any .venv exists;
- every h100 method x launcher config validates under the h100 train env's Axolotl (0.21, Python
  3.12), with CUDA simulated as available so the GPU-only attention check runs. Its 8 GB env
  (scripts/axolotl021_env.sh, 154 s here) is built by .ci/run beside `make env`, so CI runs it; locally
  TEST_AXOLOTL_021=1 builds it, and it runs whenever .cache/ already holds it.
Venvs are cached under .cache/gpu-pins/ between runs.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.core.config import compose
from experiments.train.axolotl_config import build_axolotl_config

from conftest import REPO

CACHE = REPO / ".cache" / "gpu-pins"
LAUNCHERS = [("single", 1), ("ddp", 8), ("fsdp", 8), ("deepspeed_zero2", 8), ("deepspeed_zero3", 8)]
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))


def python_of(version: str) -> str | None:
    """A CPython `version` (3.10, 3.12) on this machine: PATH, then pyenv's versions."""
    for cand in [shutil.which(f"python{version}"), *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))]:
        if cand and subprocess.run([cand, "-c", "pass"], capture_output=True).returncode == 0:
            return cand
    return None


def public_pip_env() -> dict:
    """No local index, find-links or constraints: what a fresh GPU machine's pip sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "DS_BUILD_OPS": "0"}


def resolution_problems(returncode: int, output: str) -> list[str]:
    """What makes a resolution unfit: pip's error, or an extra that would be silently absent."""
    problems = [line.strip() for line in output.splitlines() if "does not provide the extra" in line]
    if returncode != 0:
        problems.append(f"pip exited {returncode}: " + " | ".join(output.strip().splitlines()[-5:]))
    return problems


def throwaway_venv(python: str, name: str) -> Path:
    venv = CACHE / name
    if not (venv / ".ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "--isolated", "install", "-q", "--upgrade", "pip"],
                       check=True, env=public_pip_env(), timeout=300)
        (venv / ".ready").write_text("ok\n")
    return venv


def dry_run(venv: Path, args: list[str], tmp_path: Path, extra_env: dict | None = None) -> tuple[list[str], dict]:
    report = tmp_path / "report.json"
    proc = subprocess.run([str(venv / "bin/python"), "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
                           "--report", str(report), *args], capture_output=True, text=True, timeout=900,
                          env={**public_pip_env(), **(extra_env or {})})
    problems = resolution_problems(proc.returncode, proc.stdout + proc.stderr)
    installed = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]  # PEP 503 names
                 for i in json.loads(report.read_text())["install"]} if report.exists() else {}
    return problems, installed


def setup_args(stage: str, profile: str, env: dict | None = None) -> list[str]:
    """The pip arguments scripts/setup_env.sh would install with (its --pip-args mode creates nothing)."""
    out = subprocess.run(["bash", str(REPO / "scripts/setup_env.sh"), stage, profile, "--pip-args"], check=True,
                         capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    return out.splitlines()


@pytest.fixture(scope="module")
def public_index(tmp_path_factory):
    proc = subprocess.run(["pip", "--isolated", "download", "--no-deps", "-d", str(tmp_path_factory.mktemp("dl")), "six==1.17.0"],
                          capture_output=True, text=True, env=public_pip_env(), timeout=120)
    if proc.returncode != 0:
        pytest.skip("the public package index is not reachable from here: " + proc.stderr.strip()[-300:])


def test_resolution_problems_catch_a_missing_extra(public_index, tmp_path):
    """The checker itself, on a real pip run: an extra the package does not have is flagged."""
    venv = throwaway_venv(python_of("3.12") or pytest.skip("no Python 3.12 here"), "resolver-py312")
    problems, installed = dry_run(venv, ["six[no-such-extra]==1.17.0"], tmp_path)
    assert installed == {"six": "1.17.0"}
    assert problems and "does not provide the extra 'no-such-extra'" in problems[0]
    assert resolution_problems(1, "ERROR: ResolutionImpossible")


@pytest.mark.parametrize("stage, must", [("train", {"axolotl": "0.21.0", "mlflow": "3.17.2"}), ("serve", {"vllm": "0.33.0"})])
def test_gpu_requirements_resolve_for_python_312(public_index, stage, must, tmp_path):
    venv = throwaway_venv(python_of("3.12") or pytest.skip("no Python 3.12 here"), "resolver-py312")
    start = time.time()
    problems, installed = dry_run(venv, setup_args(stage, "h100"), tmp_path)
    assert not problems, problems
    assert {k: installed.get(k) for k in must} == must
    cuda = {k: v for k, v in installed.items() if k.startswith("nvidia-cuda-runtime")}
    print(f"{stage}: {len(installed)} packages in {time.time() - start:.0f} s; torch {installed.get('torch')}, {cuda}")
    assert "torch" in installed and cuda, "a GPU env without CUDA torch"


def test_gpu_eval_env_takes_the_cpu_build_of_torch(public_index, tmp_path):
    """setup_env.sh adds PyTorch's CPU index on GPU profiles; pip then prefers torch==X+cpu over PyPI's
    CUDA build. PyTorch's index is not reachable here, so a local index holding the same CPU wheel
    stands in for it (TORCH_CPU_INDEX); Python 3.11, the one that wheel is for."""
    wheels = glob.glob("/opt/wheels/torch-*+cpu-cp311-*.whl")
    python311 = python_of("3.11")
    if not wheels or not python311:
        pytest.skip("no local torch CPU wheel for Python 3.11 (/opt/wheels) to stand in for PyTorch's CPU index")
    index = tmp_path / "simple" / "torch"
    index.mkdir(parents=True)
    wheel = Path(wheels[0])
    index.joinpath("index.html").write_text(f'<a href="{wheel.as_uri().replace("+", "%2B")}">{wheel.name}</a>\n')
    args = setup_args("eval", "h100", {"TORCH_CPU_INDEX": (tmp_path / "simple").as_uri()})
    assert "--extra-index-url" in args
    venv = throwaway_venv(python311, "resolver-py311")
    problems, installed = dry_run(venv, args, tmp_path)
    assert not problems, problems
    assert installed["torch"].endswith("+cpu") and installed["bfcl-eval"] == "2026.3.23"
    assert not [k for k in installed if k.startswith("nvidia-")], "CUDA wheels in the eval env"


def scratch_copy(tmp_path: Path) -> Path:
    """What `make env-*` needs, without the shared .venv (nothing of the real checkout is touched)."""
    dst = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", dst / "scripts")
    shutil.copytree(REPO / "requirements", dst / "requirements")
    for f in ("Makefile", "requirements.txt", "requirements.lock"):
        shutil.copy2(REPO / f, dst / f)
    return dst


@pytest.mark.parametrize("target", ["env-train", "train"])
def test_old_python_is_refused_before_anything_is_created(target, tmp_path):
    py310 = python_of("3.10") or pytest.skip("no Python 3.10 here")
    repo = scratch_copy(tmp_path)
    start = time.time()
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(repo), target, "PROFILE=h100", f"PYTHON={py310}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 30, "it must fail before any install"
    assert "3.12" in proc.stderr and "PYTHON=" in proc.stderr and "(3.10)" in proc.stderr, proc.stderr
    assert "uv python install 3.12" in proc.stderr and "deadsnakes" in proc.stderr
    assert f"make {target} PROFILE=h100" in proc.stderr
    assert not (repo / ".venv").exists(), "created before refusing"


def test_cpu_profile_keeps_its_python(tmp_path):
    """The check is for GPU profiles: on cpu the same Python 3.10 is not refused by it (--pip-args)."""
    py310 = python_of("3.10") or pytest.skip("no Python 3.10 here")
    proc = subprocess.run(["bash", str(REPO / "scripts/setup_env.sh"), "train", "cpu", "--pip-args"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": py310})
    assert proc.returncode == 0 and "requirements/cpu/train.txt" in proc.stdout


# --------------------------------------------------------------------------- Axolotl 0.21 (opt-in)

AXOLOTL_021 = CACHE / "axolotl-0.21-py312"
VALIDATE_WITH_CUDA = """import sys, torch
import axolotl.utils.config, axolotl.utils.schemas.config, axolotl.utils.schemas.datasets  # imported with the real answer
torch.cuda.is_available = lambda: True  # from here on Axolotl's GPU-only checks run, as on an H100
from experiments.train.axolotl_validate import main
sys.exit(main(sys.argv[1:]))
"""


def axolotl_021_env() -> Path:
    """The h100 train env's requirements in a Python 3.12 venv (CUDA torch that runs on CPU), built once
    by scripts/axolotl021_env.sh (.ci/run starts it beside `make env`)."""
    digest = hashlib.sha256((REPO / "requirements/gpu/train.txt").read_bytes()).hexdigest()[:16]
    stamp = AXOLOTL_021 / ".ready"
    if not (stamp.exists() and stamp.read_text().strip() == digest):
        if os.environ.get("TEST_AXOLOTL_021") != "1":
            pytest.skip("opt-in (~2.5 min, 8 GB): TEST_AXOLOTL_021=1 builds .cache/gpu-pins/axolotl-0.21-py312")
        py312 = python_of("3.12") or pytest.skip("no Python 3.12 here")
        proc = subprocess.run(["bash", str(REPO / "scripts/axolotl021_env.sh")], capture_output=True, text=True,
                              timeout=1800, env={**os.environ, "PYTHON312": py312})
        assert proc.returncode == 0, proc.stderr[-3000:]
    return AXOLOTL_021


def render(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    cfg = compose(["profile=h100", *overrides])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(build_axolotl_config(cfg, run_dir=tmp_path / name, dataset_path=tmp_path / "d.jsonl",
                                                        mlflow_run_name=name)))
    return path


def test_h100_configs_validate_under_axolotl_021_with_cuda(tmp_path):
    venv = axolotl_021_env()
    caps = json.dumps(OmegaConf.to_container(compose(["profile=h100"]).profile.capabilities))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    # the proof that the GPU-only check runs: flash_attention_2 without the package is refused, as on an H100
    bad = render(tmp_path, "fa2", ["method=qlora_opt", "axolotl.attn_implementation=flash_attention_2"])
    for gpus in sorted({g for _, g in LAUNCHERS}):  # one process per world size: importing Axolotl costs ~30 s
        paths = [render(tmp_path, f"{ln}-{m}", [f"method={m}", f"launcher={ln}", f"launcher.gpus={gpus}"])
                 for ln, g in LAUNCHERS if g == gpus for m in METHODS]
        proc = subprocess.run([str(venv / "bin/python"), "-c", VALIDATE_WITH_CUDA, *map(str, paths + [bad] * (gpus == 1)),
                               "--capabilities", caps, "--world-size", str(gpus)], capture_output=True, text=True, env=env, timeout=600)
        for path in paths:
            assert f"{path}: valid (Axolotl schema)" in proc.stdout, proc.stderr[-3000:]
        if gpus == 1:
            assert proc.returncode == 2 and f"{bad}: invalid" in proc.stderr and "flash-attn package is not installed" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]


def test_gpu_lock_is_written_once_then_applied(tmp_path):
    """scripts/gpu_smoke.sh ends with `setup_env.sh <env> h100 --lock`: pip freeze of the env that passed,
    written once, then a constraint of every later install; the env is re-stamped, so no reinstall."""
    repo = scratch_copy(tmp_path)
    venv = repo / ".venv" / "train"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "fake_pkg-1.0.dist-info").mkdir()
    (site / "fake_pkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pkg\nVersion: 1.0\n")
    (venv / ".ready").write_text("hw=gpu req=0000000000000000\n")
    setup = ["bash", str(repo / "scripts/setup_env.sh"), "train", "h100"]
    lock = repo / "requirements/gpu/train.lock"
    assert not lock.exists()
    first = subprocess.run([*setup, "--lock"], capture_output=True, text=True)
    assert first.returncode == 0 and "wrote requirements/gpu/train.lock" in first.stdout, first.stderr
    assert "fake-pkg==1.0" in lock.read_text().splitlines()
    args = subprocess.run([*setup, "--pip-args"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert args[-2:] == ["-c", str(lock)]
    again = subprocess.run(setup, capture_output=True, text=True, timeout=60)  # stamped: nothing to install
    assert again.returncode == 0 and again.stdout == "" and not (repo / ".venv/train-install.log").exists()
    lock.write_text("fake-pkg==1.0\n# kept\n")
    assert "exists; kept" in subprocess.run([*setup, "--lock"], capture_output=True, text=True).stdout
    assert lock.read_text().endswith("# kept\n")
