"""A run's saved checkpoints and their BFCL scores: listing, the scores file, the best one.

    results/<run>/adapter/checkpoint-<step>/     Axolotl's saved adapters (save_steps, save_total_limit)
    results/<run>/adapter/                       the final adapter (counted as a checkpoint at the last
                                                 step when no checkpoint was saved there)
    results/<run>/bfcl_checkpoints/checkpoints.json   `make eval-checkpoints`: one record per checkpoint

The scores file is written by experiments.bfcl.checkpoints; it is read here (train layer) so that
`make merge CHECKPOINT=best` and the report can pick a checkpoint without the BFCL code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from experiments.core import runs

SCORES_DIR = "bfcl_checkpoints"
INDEX = "checkpoints.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """No such checkpoint / no scores / an unknown column; the message names what is missing."""


def list_checkpoints(run_dir: Path) -> list[dict]:
    """[{step, name, path}] of a run, by step: every adapter/checkpoint-<step>/ holding an adapter,
    plus the final adapter as `final` when no checkpoint was saved at the last step."""
    adapter = Path(run_dir) / "adapter"
    found = []
    for p in adapter.glob("checkpoint-*"):
        m = _CKPT_RE.match(p.name)
        if m and (p / "adapter_config.json").is_file():
            found.append({"step": int(m.group(1)), "name": p.name, "path": str(p)})
    found.sort(key=lambda c: c["step"])
    metrics_path = Path(run_dir) / "train_metrics.json"
    last = runs.read_json(metrics_path).get("steps") if metrics_path.is_file() else None
    if last and (adapter / "adapter_config.json").is_file() and last not in {c["step"] for c in found}:
        found.append({"step": int(last), "name": "final", "path": str(adapter)})
    return found


def adapter_settings(path: Path) -> dict:
    """The adapter's rank and whether it is DoRA (vLLM serves only plain LoRA adapters)."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    return {"r": int(cfg.get("r") or 0), "use_dora": bool(cfg.get("use_dora"))}


def norm_column(name: str) -> str:
    """`bfcl/Non_Live_AST_Acc`, `Non-Live AST Acc`, `bfcl/Non-Live_AST_Acc` -> one spelling."""
    name = name[len("bfcl/"):] if name.startswith("bfcl/") else name
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def column_value(leaderboard: dict, column: str) -> float | None:
    """A leaderboard value by any spelling of its column (see norm_column); None when absent/N/A."""
    want = norm_column(column)
    for col, value in (leaderboard or {}).items():
        if norm_column(col) == want:
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def read_scores(run_dir: Path) -> dict | None:
    """checkpoints.json of a run, or None when `make eval-checkpoints` has not run."""
    path = Path(run_dir) / SCORES_DIR / INDEX
    return runs.read_json(path) if path.is_file() else None


def best_checkpoint(records: list[dict], column: str, goal: str = "max") -> dict | None:
    """Pure: the record with the best value of `column` (ties: the earlier step); None when no
    record has the column."""
    if goal not in ("min", "max"):
        raise CheckpointError(f"report.best_goal={goal!r}: use min or max")
    scored = [r for r in records if column_value(r.get("leaderboard"), column) is not None]
    if not scored:
        return None
    sign = 1 if goal == "min" else -1
    return min(scored, key=lambda r: (sign * column_value(r["leaderboard"], column), r["step"]))


def resolve(run_dir: Path, which: str, best_by: str, goal: str) -> dict:
    """CHECKPOINT=best|<step>|<name> -> {step, name, path} of an existing checkpoint."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"{Path(run_dir) / 'adapter'}: no saved checkpoint (did the training finish?)")
    if which == "best":
        if not best_by.startswith("bfcl/"):
            raise CheckpointError(f"CHECKPOINT=best needs report.best_by=bfcl/<column> (got {best_by!r})")
        scores = read_scores(run_dir)
        if not scores:
            raise CheckpointError(f"{Path(run_dir) / SCORES_DIR / INDEX}: no checkpoint scores; run "
                                  f"`make eval-checkpoints RUN={Path(run_dir).name}` first")
        best = best_checkpoint(scores["checkpoints"], best_by, goal)
        if best is None:
            known = sorted(scores["checkpoints"][0].get("leaderboard", {})) if scores["checkpoints"] else []
            raise CheckpointError(f"report.best_by={best_by}: no checkpoint has that column; known: {known}")
        which = best["name"]
    for c in ckpts:
        if which in (c["name"], str(c["step"])):
            return c
    raise CheckpointError(f"CHECKPOINT={which}: not a checkpoint of {Path(run_dir).name}; "
                          f"saved: {', '.join(c['name'] for c in ckpts)} (steps {', '.join(str(c['step']) for c in ckpts)})")
