"""The command line shared by the stages that act on a served model (`make eval`, `make bench`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from experiments.core import runs
from experiments.core.config import compose


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
        cfg = compose(args.overrides)
        run_dir = runs.resolve_run(Path(cfg.paths.results), args.run)
        stage(cfg, run_dir, args.model, endpoint_url=args.endpoint)
    except runs.StageIncomplete as exc:
        print(f"[{name}] {exc.status}: {exc}", file=sys.stderr)
        return 3
    except errors as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        return 2
    return 0
