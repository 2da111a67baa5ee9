"""The command line shared by the stages that act on a served model (`make eval`, `make bench`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from experiments.core import runs
from experiments.core.config import compose


def compose_for_run(overrides: list[str], run: str | None):
    """(config, run folder) for a stage that acts on an existing run. The run's own model group
    (run.json `model`) is composed in, so its serving limits (max model length, generation cap)
    hold without repeating `model=` on the command line; a `model=` given there still wins."""
    cfg = compose(overrides)
    run_dir = runs.resolve_run(Path(cfg.paths.results), run)
    model = runs.read_json(run_dir / runs.RUN_JSON).get("model")
    named = any(o.lstrip("+~").split("=", 1)[0] == "model" for o in overrides)
    if model and model != cfg.model.name and not named:
        cfg = compose([f"model={model}", *overrides])
    return cfg, run_dir


def run_model_stage(name: str, description: str, stage: Callable, errors: tuple[type[Exception], ...], argv=None) -> int:
    """Parse `--run --model --endpoint overrides...`, compose the config, resolve the run and call
    `stage(cfg, run_dir, kind, endpoint_url=...)`; a known error prints one line and exits 2, an
    incomplete stage (runs.StageIncomplete: results kept, run.json partial/failed) exits 3."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--run", default=None, help="run id or folder (default: results/latest)")
    ap.add_argument("--model", default="merged", help="merged | adapter | base")
    ap.add_argument("--endpoint", default=None, help="any OpenAI-compatible base URL (…/v1)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg, run_dir = compose_for_run(args.overrides, args.run)
        stage(cfg, run_dir, args.model, endpoint_url=args.endpoint)
    except runs.StageIncomplete as exc:
        print(f"[{name}] {exc.status}: {exc}", file=sys.stderr)
        return 3
    except errors as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        return 2
    return 0
