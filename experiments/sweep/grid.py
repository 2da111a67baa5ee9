"""A sweep's grid (pure, apart from reading its file): conf/sweep/<name>.yaml + ARGS -> points.

    # conf/sweep/<name>.yaml
    grid:                        # Hydra's multirun syntax, one dimension per line ...
      - method=qlora,dora
      - axolotl.lora_r=8,16,32
    #   ... or a mapping {key: [values]}
    fixed: [axolotl.max_steps=30] # every point gets these (ARGS= adds more)
    max_points: 16               # a larger grid is refused (MAX_POINTS= overrides)
    eval_checkpoints: false      # BFCL at every checkpoint of each point (make eval-checkpoints)
    bench: false                 # merge + serve + load test of each point (throughput in the report)

ARGS= may itself use the multirun syntax (`axolotl.learning_rate=1e-4,2e-4`): such overrides become
dimensions too; the others are fixed. Sweep values are expanded by Hydra's own override parser
(`a,b`, `range(1,4)`, `choice(...)`, `glob(...)`), in the order given; points are their product.
"""
from __future__ import annotations

import itertools
import re
import statistics
from pathlib import Path
from typing import Sequence

import yaml

from experiments.core.paths import CONF_DIR

SWEEP_DIR = CONF_DIR / "sweep"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Set by the sweep itself: a point cannot choose them.
RESERVED = ("run.id", "run.sweep")
DEFAULTS = {"grid": [], "fixed": [], "max_points": 16, "eval_checkpoints": False, "bench": False}


class SweepError(ValueError):
    """A sweep file or request is wrong; the message names the file, key or value."""


def load(name: str | None) -> dict:
    """conf/sweep/<name>.yaml (or a path) with defaults filled in; {} + defaults when name is None."""
    if name is None:
        return {**DEFAULTS, "name": None, "file": None}
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEP_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
        raise SweepError(f"SWEEP={name}: {path} not found; known sweeps: {', '.join(known) or '(none)'}")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - set(DEFAULTS) - {"name"})
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **data, "file": str(path)}
    out["name"] = str(data.get("name") or path.stem)
    grid = out["grid"]
    if isinstance(grid, dict):
        out["grid"] = [f"{k}={','.join(_hydra_value(v) for v in (vals if isinstance(vals, list) else [vals]))}"
                       for k, vals in grid.items()]
    elif not isinstance(grid, list) or not all(isinstance(g, str) for g in grid):
        raise SweepError(f"{path}: grid: expected a list of overrides (key=a,b) or a mapping key: [values]")
    if not isinstance(out["fixed"], list):
        raise SweepError(f"{path}: fixed: expected a list of overrides")
    return out


def _hydra_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def expand(grid: Sequence[str], extra: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(fixed overrides, points) from the file's grid and ARGS: every sweep override (a,b / range /
    choice) is a dimension; a point is one value of each, in the order given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([*grid, *extra])
    except HydraException as exc:
        raise SweepError(f"sweep overrides: {exc}") from None
    fixed, dims = [], []
    for o in parsed:
        key = o.get_key_element()
        if key.lstrip("+~") in RESERVED:
            raise SweepError(f"{o.input_line}: the sweep sets {key.lstrip('+~')} itself (use SWEEP_ID=)")
        if o.is_sweep_override():
            dims.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        elif o.input_line in grid:
            raise SweepError(f"grid: {o.input_line} has one value; put it under fixed: or give a,b")
        else:
            fixed.append(o.input_line)
    keys = [d[0].partition("=")[0] for d in dims]
    if len(set(keys)) != len(keys):
        raise SweepError(f"sweep: a key is swept twice: {keys}")
    return fixed, [list(p) for p in itertools.product(*dims)] if dims else []


def check_size(points: Sequence, cap: int) -> None:
    if not points:
        raise SweepError("sweep: no dimension to sweep (give grid: in the file or ARGS with a,b values)")
    if len(points) > cap:
        raise SweepError(f"sweep: {len(points)} points exceed the cap max_points={cap} (MAX_POINTS= raises it)")


def check_id(sweep_id: str) -> str:
    if not _ID_RE.match(sweep_id):
        raise SweepError(f"SWEEP_ID={sweep_id!r}: use letters, digits, '.', '_' or '-'")
    return sweep_id


def run_id(sweep_id: str, index: int, attempt: int = 0) -> str:
    return f"{sweep_id}-p{index:02d}" + (f"-a{attempt}" if attempt else "")


def runs_of_point(existing: Sequence[dict], sweep_id: str, point: Sequence[str]) -> list[dict]:
    """The run.json dicts of a point's runs (its overrides all among the run's), oldest first."""
    return [r for r in existing if r.get("sweep") == sweep_id and set(point) <= set(r.get("overrides") or [])]


def point_state(existing: Sequence[dict], sweep_id: str, point: Sequence[str], *, eval_checkpoints: bool,
                bench: bool) -> tuple[dict | None, list[str]]:
    """(the point's finished training run or None, what it still lacks: train, eval_checkpoints, bench)."""
    done = [r for r in runs_of_point(existing, sweep_id, point) if r.get("stages", {}).get("train") == "done"]
    if not done:
        return None, ["train"] + (["eval_checkpoints"] if eval_checkpoints else []) + (["bench"] if bench else [])
    r = done[-1]
    stages = r.get("stages", {})
    todo = (["eval_checkpoints"] if eval_checkpoints and stages.get("eval_checkpoints") != "done" else []) \
        + (["bench"] if bench and stages.get("bench_merged") != "done" else [])
    return r, todo


def estimate(history: Sequence[dict], steps: int | None, n_checkpoints: int, eval_checkpoints: bool) -> dict:
    """Seconds one point should take, from finished runs of the same model and profile: start-up
    (wall - Trainer runtime) + steps x s/step, + per-checkpoint BFCL. history: {metrics, checkpoints}."""
    startups = [h["metrics"]["wall_time_s"] - float(h["metrics"]["train_runtime_s"]) for h in history
                if h.get("metrics") and h["metrics"].get("train_runtime_s")]
    per_step = [float(h["metrics"]["train_runtime_s"]) / h["metrics"]["steps"] for h in history
                if h.get("metrics") and h["metrics"].get("train_runtime_s") and h["metrics"].get("steps")]
    if not per_step or steps is None:
        return {"point_s": None, "basis": "no finished run of this model and profile in results/ to measure from"
                if not per_step else "axolotl.max_steps is not set (epochs): steps unknown"}
    train_s = statistics.median(startups) + statistics.median(per_step) * steps
    ck = [c["wall_s"] for h in history for c in (h.get("checkpoints") or {}).get("checkpoints", []) if c.get("wall_s")]
    boot = [(h.get("checkpoints") or {}).get("server_startup_s") for h in history]
    boot = [b for b in boot if b]
    ck_s = 0.0
    if eval_checkpoints:
        ck_s = (statistics.median(ck) * n_checkpoints if ck else 0.0) + (statistics.median(boot) if boot else 0.0)
    return {"point_s": round(train_s + ck_s, 1), "train_s": round(train_s, 1), "checkpoints_s": round(ck_s, 1),
            "basis": f"median of {len(per_step)} finished run(s): {statistics.median(per_step):.2f} s/step, "
                     f"{statistics.median(startups):.0f} s start-up"
                     + (f", {statistics.median(ck):.0f} s per checkpoint evaluation" if eval_checkpoints and ck else
                        (", no checkpoint evaluation measured yet" if eval_checkpoints else ""))}
