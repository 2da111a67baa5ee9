"""The three isolated environments (see docs/architecture.md) and how to run code in them."""
from __future__ import annotations

import os
from pathlib import Path

from experiments.core.paths import REPO_ROOT

STAGES = ("train", "serve", "eval")


def venv_dir(stage: str, venv_root: Path | None = None) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown environment {stage!r}; one of {STAGES}")
    return Path(venv_root or REPO_ROOT / ".venv") / stage


def python(stage: str, venv_root: Path | None = None) -> Path:
    """The interpreter of an environment; a clear error (with the make target) if it is missing."""
    exe = venv_dir(stage, venv_root) / "bin" / "python"
    if not exe.exists():
        raise FileNotFoundError(f"{exe}: the {stage} environment is missing; run `make env-{stage}`")
    return exe


def bin_path(stage: str, name: str, venv_root: Path | None = None) -> Path:
    return venv_dir(stage, venv_root) / "bin" / name


def subprocess_env(extra: dict | None = None) -> dict:
    """Environment for a child in another venv: the repo importable, no leaking VIRTUAL_ENV."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # No phoning home: these machines are offline, and a user's runs are nobody else's business.
    env.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env
