"""`make preflight`: is this machine ready for the profile? Run before `make train` / `make all` on
GPU profiles, by hand on any.

    python -m experiments.core.preflight profile=h100 [overrides]

Checks: the NVIDIA driver against the CUDA version each env's torch was built for,
torch.cuda.is_available() in the train and serve envs, GPU name / memory / free memory against the
profile, flash-attn if the method asks for it, free disk, and the base model (local, cached or on
the hub, token for gated models). Every failure says what to do; exit 1 if any check fails.
The check functions are pure (facts in, Check out); gathering the facts is the thin I/O at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.core import envs
from experiments.core.config import ConfigError, compose

GIB = 1024 ** 3
# Minimum Linux driver for a CUDA major version (NVIDIA's minor-version compatibility table:
# CUDA 13.x >= 580, 12.x >= 525.60.13, 11.x >= 450.80.02).
MIN_DRIVER = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}
FLASH_ATTN_IMPLS = ("flash_attention_2", "flash_attention_3")
NO_GPU = "no GPU: the cpu profile will be used"


@dataclass(frozen=True)
class Check:
    name: str
    status: str          # ok | info | warn | fail
    detail: str
    fix: str = ""


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split(".") if p.isdigit())


def capability(text: str) -> tuple[int, int]:
    """"9.0" (nvidia-smi) or "sm_90" (profile) -> (9, 0)."""
    text = text.strip().removeprefix("sm_")
    major, _, minor = text.partition(".") if "." in text else (text[:-1], "", text[-1:])
    return int(major), int(minor)


def check_driver(driver: str | None, torch_cuda: dict[str, str | None], accelerator: str) -> Check:
    """driver: nvidia-smi's driver_version; torch_cuda: env -> torch.version.cuda (None: CPU build)."""
    built = {env: cuda for env, cuda in torch_cuda.items() if cuda}
    if driver is None:
        if accelerator != "cuda":
            return Check("driver", "info", NO_GPU)
        need = MIN_DRIVER.get(max((version_tuple(c)[0] for c in built.values()), default=13), MIN_DRIVER[13])
        return Check("driver", "fail", "no NVIDIA driver answers (nvidia-smi not found or failing)",
                     f"install NVIDIA driver >= {need} (CUDA 13 builds of torch need it), or use PROFILE=cpu")
    if not built:
        return Check("driver", "info", f"NVIDIA driver {driver}; no env with a CUDA build of torch to compare")
    worst = max(built.values(), key=version_tuple)
    major = version_tuple(worst)[0]
    need = MIN_DRIVER.get(major)
    where = ", ".join(f"{env} CUDA {cuda}" for env, cuda in sorted(built.items()))
    if need is None:
        return Check("driver", "warn", f"driver {driver}; torch built for CUDA {worst}: no known minimum driver")
    if version_tuple(driver) < version_tuple(need):
        return Check("driver", "fail", f"NVIDIA driver {driver} is too old for torch built with {where}: "
                     f"CUDA {major}.x needs driver >= {need}",
                     f"install NVIDIA driver >= {need} (e.g. the 580 server branch), reboot, rerun `make preflight`")
    return Check("driver", "ok", f"NVIDIA driver {driver} >= {need} needed by {where}")


def check_cuda_available(env: str, probe: dict | None, accelerator: str) -> Check:
    """probe: what torch reported inside the env (see PROBE), None if the env is not built."""
    name = f"cuda in {env} env"
    if probe is None:
        return Check(name, "info", f".venv/{env} not built yet; checked once `make env-{env}` made it")
    if "error" in probe:
        return Check(name, "fail", f"torch does not import in .venv/{env}: {probe['error']}",
                     f"rebuild it: rm -rf .venv/{env} && make env-{env} PROFILE=...")
    if accelerator != "cuda":
        return Check(name, "ok", f"torch {probe['torch']} ({'CUDA ' + probe['cuda'] if probe['cuda'] else 'CPU build'}); "
                     "the cpu profile needs no GPU")
    if not probe["cuda"]:
        return Check(name, "fail", f"torch {probe['torch']} in .venv/{env} is a CPU build",
                     f"this env was built for another profile: rm -rf .venv/{env} && make env-{env} PROFILE=h100")
    if not probe["available"]:
        why = probe.get("warning") or "no device visible"
        return Check(name, "fail", f"torch {probe['torch']} (CUDA {probe['cuda']}) sees no GPU: {why}",
                     "check the driver line above, `nvidia-smi`, and CUDA_VISIBLE_DEVICES")
    return Check(name, "ok", f"torch {probe['torch']} (CUDA {probe['cuda']}) sees {probe['devices']} GPU(s)")


def check_gpus(gpus: list[dict] | None, profile: dict, serve_util: float) -> list[Check]:
    """gpus: nvidia-smi rows (name, memory_total_mib, memory_free_mib, compute_cap); None: no driver."""
    cuda = profile["accelerator"] == "cuda"
    if not gpus:
        if cuda:
            return [Check("gpu", "fail", "no NVIDIA GPU found (nvidia-smi missing or it lists none)",
                          "install the NVIDIA driver, or run on a CPU with PROFILE=cpu")]
        return [Check("gpu", "info", NO_GPU)]
    if not cuda:
        return [Check("gpu", "warn", f"{gpus[0]['name']} present but PROFILE={profile['name']}",
                      "make picks h100 by itself where nvidia-smi answers; pass PROFILE=h100")]
    checks = []
    want_name, want_gib = profile.get("gpu_name"), profile.get("gpu_memory_gib")
    want_cc = (profile.get("capabilities") or {}).get("compute_capability")
    for i, g in enumerate(gpus):
        total, free = g["memory_total_mib"] / 1024, g["memory_free_mib"] / 1024
        label = f"gpu {i}: {g['name']}, {total:.0f} GiB, {free:.0f} GiB free"
        if want_gib and total < 0.95 * want_gib:
            checks.append(Check(f"gpu {i}", "fail", f"{label}; profile {profile['name']} expects {want_gib} GiB",
                                "lower axolotl.micro_batch_size / sequence_len and serve.max_model_len, or use a larger GPU"))
            continue
        need_free = serve_util * total
        if free < need_free:
            checks.append(Check(f"gpu {i}", "fail", f"{label}; vLLM takes serve.gpu_memory_utilization={serve_util} "
                                f"of the card ({need_free:.0f} GiB), so it would refuse to start",
                                "stop the process holding GPU memory (see nvidia-smi) or lower serve.gpu_memory_utilization"))
            continue
        cc = g.get("compute_cap")
        if want_cc and cc and capability(cc) < capability(want_cc):
            checks.append(Check(f"gpu {i}", "warn", f"{label}; compute capability {cc} < the profile's {want_cc}",
                                "set profile.capabilities for this card (bf16/fp8/tf32) or expect Axolotl to refuse fp8"))
        elif want_name and want_name not in g["name"]:
            checks.append(Check(f"gpu {i}", "warn", f"{label}; not the profile's {want_name}, memory suffices"))
        else:
            checks.append(Check(f"gpu {i}", "ok", label))
    return checks


def check_flash_attn(attn_impl: str | None, probe: dict | None, accelerator: str) -> Check:
    if attn_impl not in FLASH_ATTN_IMPLS:
        return Check("flash-attn", "ok", f"not needed (attn_implementation: {attn_impl})")
    if accelerator != "cuda":
        return Check("flash-attn", "fail", f"attn_implementation: {attn_impl} needs CUDA",
                     "use axolotl.attn_implementation=sdpa on this profile")
    if probe is not None and probe.get("flash_attn") is True:
        return Check("flash-attn", "ok", f"flash_attn imports in .venv/train ({attn_impl})")
    why = (probe or {}).get("flash_attn") or "train env not built"
    return Check("flash-attn", "fail", f"attn_implementation: {attn_impl} but flash_attn does not import: {why}",
                 ".venv/train/bin/pip install --no-build-isolation flash-attn==2.8.3.post2 (an nvcc build when no "
                 "prebuilt wheel matches), or ARGS=\"axolotl.attn_implementation=sdpa\"")


def check_disk(free_by_path: dict[str, float], need_gib: float) -> list[Check]:
    """free_by_path: folder -> free GiB on its filesystem (one entry per filesystem)."""
    out = []
    for path, free in free_by_path.items():
        if free < need_gib:
            out.append(Check("disk", "fail", f"{path}: {free:.0f} GiB free, the profile needs {need_gib} GiB "
                             "(model cache, merged model, checkpoints, results)",
                             "free space, or move them: RESULTS_DIR=/big/results HF_HOME=/big/hf make ..."))
        else:
            out.append(Check("disk", "ok", f"{path}: {free:.0f} GiB free (>= {need_gib})"))
    return out


def check_model(model: dict, facts: dict) -> Check:
    """facts: local (folder exists), offline, cached, token, hub ({"gated": bool} or {"error": kind, "detail": str})."""
    path = model["path"]
    if model.get("build"):
        return Check("model", "ok", f"{path}: built locally on first use ({model['build']}), nothing to download")
    if facts["local"]:
        return Check("model", "ok", f"{path}: local folder")
    if facts["offline"]:
        if facts["cached"]:
            return Check("model", "ok", f"{path}: in the local Hugging Face cache (HF_HUB_OFFLINE=1)")
        return Check("model", "fail", f"{path}: HF_HUB_OFFLINE=1 and the model is not in the cache",
                     f"download it once where the hub is reachable (huggingface-cli download {path}) or set model.path to a folder")
    hub = facts["hub"]
    error = hub.get("error")
    if error == "gated" or (hub.get("gated") and not facts["token"]):
        return Check("model", "fail", f"{path} is gated and {'the token has no access' if facts['token'] else 'HF_TOKEN is not set'}",
                     f"accept its licence on https://huggingface.co/{path}, then export HF_TOKEN=hf_...")
    if error == "not_found":
        return Check("model", "fail", f"{path}: no such model on the hub (or private)",
                     "check model.path; for a private model export HF_TOKEN")
    if error:
        return Check("model", "fail", f"{path}: hub unreachable ({hub.get('detail', error)})",
                     "fix the network, or put the model in the cache and set HF_HUB_OFFLINE=1, or set model.path to a folder")
    return Check("model", "ok", f"{path}: reachable on the hub{' (gated, token set)' if hub.get('gated') else ''}")


def render(checks: list[Check]) -> tuple[str, int]:
    lines = []
    for c in checks:
        mark = {"ok": "ok", "info": "--", "warn": "WARN", "fail": "FAIL"}[c.status]
        lines.append(f"[preflight] {mark:>4}  {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"[preflight]        -> {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    lines.append(f"[preflight] {'FAILED: ' + str(failed) + ' check(s)' if failed else 'ready'}")
    return "\n".join(lines), 1 if failed else 0


def run_checks(cfg: dict, facts: dict) -> list[Check]:
    """All checks from the composed config (as a plain dict) and the gathered facts."""
    prof = cfg["profile"]
    probes = facts["probes"]
    torch_cuda = {env: p.get("cuda") for env, p in probes.items() if p and "error" not in p}
    checks = [check_driver(facts["driver"], torch_cuda, prof["accelerator"])]
    checks += [check_cuda_available(env, probes.get(env), prof["accelerator"]) for env in ("train", "serve")]
    checks += check_gpus(facts["gpus"], prof, float(cfg["serve"]["gpu_memory_utilization"]))
    checks.append(check_flash_attn(cfg["axolotl"].get("attn_implementation"), probes.get("train"), prof["accelerator"]))
    checks += check_disk(facts["disk"], float(prof["min_free_disk_gib"]))
    checks.append(check_model(cfg["model"], facts["model"]))
    return checks


# --- gathering the facts (I/O) --------------------------------------------------------------
PROBE = r"""
import json, warnings
out = {}
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    try:
        import torch
        out.update(torch=torch.__version__, cuda=torch.version.cuda, available=torch.cuda.is_available())
        out["devices"] = torch.cuda.device_count() if out["available"] else 0
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
out["warning"] = " ".join(str(w.message).split()[:40]) if seen else ""
try:
    import flash_attn  # noqa: F401
    out["flash_attn"] = True
except Exception as exc:
    out["flash_attn"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def probe_env(stage: str) -> dict | None:
    """What torch says inside an env; None if the env is not built."""
    try:
        exe = envs.python(stage)
    except FileNotFoundError:
        return None
    try:
        proc = subprocess.run([str(exe), "-c", PROBE], capture_output=True, text=True, timeout=300,
                              env=envs.subprocess_env())
    except subprocess.TimeoutExpired:
        return {"error": "the probe (import torch) took over 300 s"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"probe failed: {proc.stderr.strip()[-300:]}"}


def nvidia_smi() -> tuple[str | None, list[dict] | None]:
    """(driver version, one row per GPU) or (None, None) where no driver answers."""
    query = "name,memory.total,memory.free,driver_version,compute_cap"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> tuple[str | None, list[dict]]:
    """`nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap --format=csv,noheader,nounits`."""
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    gpus = [{"name": r[0], "memory_total_mib": float(r[1]), "memory_free_mib": float(r[2]), "compute_cap": r[4]}
            for r in rows]
    return (rows[0][3] if rows else None), gpus


def disk_free(paths: list[Path]) -> dict[str, float]:
    """Free GiB per filesystem, named by the first of the paths on it (missing folders: nearest parent)."""
    seen, out = set(), {}
    for path in paths:
        existing = next(p for p in [path, *path.parents] if p.exists())
        dev = existing.stat().st_dev
        if dev not in seen:
            seen.add(dev)
            out[str(path)] = shutil.disk_usage(existing).free / GIB
    return out


def model_facts(path: str, build) -> dict:
    token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    facts = {"local": Path(path).is_dir(), "offline": os.environ.get("HF_HUB_OFFLINE") == "1",
             "cached": False, "token": token, "hub": {}}
    if build or facts["local"]:
        return facts
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError
    facts["cached"] = isinstance(huggingface_hub.try_to_load_from_cache(path, "config.json"), str)
    if facts["offline"]:
        return facts
    try:
        info = huggingface_hub.HfApi().model_info(path, timeout=15)
        facts["hub"] = {"gated": bool(getattr(info, "gated", False))}
    except GatedRepoError:
        facts["hub"] = {"error": "gated"}
    except RepositoryNotFoundError:
        facts["hub"] = {"error": "not_found"}
    except Exception as exc:  # network: DNS, timeout, proxy
        facts["hub"] = {"error": "unreachable", "detail": f"{type(exc).__name__}: {str(exc)[:160]}"}
    return facts


def gather(cfg: dict) -> dict:
    driver, gpus = nvidia_smi()
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    paths = [Path(cfg["paths"]["results"]), Path(cfg["paths"]["models"]), hf_home]
    return {"driver": driver, "gpus": gpus, "probes": {s: probe_env(s) for s in ("train", "serve")},
            "disk": disk_free(paths), "model": model_facts(cfg["model"]["path"], cfg["model"].get("build"))}


def main(argv=None) -> int:
    from omegaconf import OmegaConf
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    except ConfigError as exc:
        print(f"[preflight] error: {exc}", file=sys.stderr)
        return 2
    print(f"[preflight] profile {cfg['profile']['name']}, method {cfg['method']['name']}, model {cfg['model']['path']}")
    text, code = render(run_checks(cfg, gather(cfg)))
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
