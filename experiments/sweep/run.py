"""`make sweep SWEEP=<name> [DRY_RUN=1] [MAX_POINTS=n] [SWEEP_ID=id] [POINT=i]`: a grid of normal runs.

Each point is a `make train` run (its own folder `<sweep_id>-p<NN>`, run.json `sweep`, MLflow tags
`sweep=<id>`, `sweep_point=<NN>` and one `sweep.<key>` tag per swept override), then, as the sweep
file asks, BFCL at every checkpoint and a load test of its merged model. Resumable: a rerun finds
each point's finished run by its overrides and only does what is missing; a point whose training
was interrupted trains again in a new folder (`-a1`, ...), since run folders are never reused.
One point failing does not stop the others. Points run one after another (POINT=i runs one: what
each pod of `make k8s SWEEP=...` does). The sweep's record is results/sweeps/<id>/sweep.json;
`make report SWEEP=<id>` writes results/sweeps/<id>/report.md.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from experiments.core import runs
from experiments.core.config import ConfigError, compose
from experiments.sweep import grid
from experiments.sweep.grid import SweepError
from experiments.train.checkpoints import read_scores

SWEEPS_DIR = "sweeps"


def sweep_dir(results: Path, sweep_id: str) -> Path:
    return Path(results) / SWEEPS_DIR / sweep_id


def build(sweep: str | None, overrides: Sequence[str], sweep_id: str | None, max_points: int | None) -> dict:
    """The sweep's plan (pure apart from reading its file and composing each point to check it)."""
    spec = grid.load(sweep)
    fixed, points = grid.expand(spec["grid"], [*spec["fixed"], *overrides])
    grid.check_size(points, int(max_points or spec["max_points"]))
    sid = grid.check_id(sweep_id or spec["name"] or f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    configs = []
    for i, p in enumerate(points):  # a bad value fails here, before anything trains
        try:
            configs.append(compose([*fixed, *p]))
        except ConfigError as exc:
            raise SweepError(f"point {i} ({' '.join(p)}): {exc}") from None
    return {"id": sid, "name": spec["name"], "file": spec["file"], "fixed": fixed, "points": points,
            "dimensions": [p.partition("=")[0] for p in points[0]], "configs": configs,
            "eval_checkpoints": bool(spec["eval_checkpoints"]), "bench": bool(spec["bench"])}


def n_checkpoints(cfg: DictConfig) -> int:
    ax = cfg.axolotl
    steps, save = ax.get("max_steps"), ax.get("save_steps")
    if not steps or not save:
        return 1
    n = int(steps) // int(save)
    limit = ax.get("save_total_limit")
    n = min(n, int(limit)) if limit else n
    return n + (int(steps) % int(save) != 0 or n == 0)


def dry_run(plan: dict, results: Path) -> str:
    """The grid, what is already done and the estimated time, as printed by DRY_RUN=1."""
    cfg0 = plan["configs"][0]
    history = [{"metrics": r.get("metrics_data"), "checkpoints": r.get("checkpoints_data")}
               for r in _history(results, cfg0)]
    existing = runs.list_runs(results)
    lines = [f"[sweep] {plan['id']}: {len(plan['points'])} points over {', '.join(plan['dimensions'])}"
             + (f" (file {plan['file']})" if plan["file"] else "") + (f"; fixed: {' '.join(plan['fixed'])}" if plan["fixed"] else "")]
    total, unknown = 0.0, False
    for i, (p, cfg) in enumerate(zip(plan["points"], plan["configs"])):
        done, todo = grid.point_state(existing, plan["id"], p, eval_checkpoints=plan["eval_checkpoints"], bench=plan["bench"])
        steps = cfg.axolotl.get("max_steps")
        est = grid.estimate(history, int(steps) if steps else None, n_checkpoints(cfg), plan["eval_checkpoints"])
        if todo and est["point_s"] is None:
            unknown = True
        total += (est["point_s"] or 0.0) if todo else 0.0
        state = "done" if not todo else ("to do: " + ", ".join(todo))
        lines.append(f"  {i:02d}  {' '.join(p):<60} {state:<32} ~{_fmt_s(est['point_s']) if todo else '0 s'}")
    lines.append(f"[sweep] estimated time of what is left: {'unknown' if unknown and not total else _fmt_s(total)}"
                 + (" (+ points without an estimate)" if unknown and total else "")
                 + f" ({est['basis']}{'; bench not included' if plan['bench'] else ''})")
    return "\n".join(lines)


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def _history(results: Path, cfg: DictConfig) -> list[dict]:
    out = []
    for r in runs.list_runs(results):
        if (r.get("model"), r.get("profile")) != (cfg.model.name, cfg.profile.name) or r.get("stages", {}).get("train") != "done":
            continue
        m = Path(r["path"]) / "train_metrics.json"
        if m.is_file():
            out.append({**r, "metrics_data": runs.read_json(m), "checkpoints_data": read_scores(Path(r["path"]))})
    return out


def point_overrides(plan: dict, i: int, rid: str) -> list[str]:
    return [*plan["fixed"], *plan["points"][i], f"run.id={rid}", f"run.sweep={plan['id']}",
            *([] if not plan["eval_checkpoints"] else ["train.eval_checkpoints=true"])]


def tag_point(run_dir: Path, plan: dict, i: int) -> None:
    """sweep_point and one sweep.<key> tag per swept override on the point's training run."""
    from experiments.tracking.client import client_for

    info = runs.read_json(run_dir / runs.RUN_JSON)
    client = client_for(info["mlflow"]["tracking_uri"])
    client.set_tag(info["mlflow"]["train_run_id"], "sweep_point", f"{i:02d}")
    for o in plan["points"][i]:
        key, _, value = o.partition("=")
        client.set_tag(info["mlflow"]["train_run_id"], f"sweep.{key.lstrip('+~')}", value)


def run_point(plan: dict, i: int, results: Path) -> Path:
    """Train point i if it has no finished run, then do what it still lacks."""
    from experiments.bench import stage as benchmark
    from experiments.bfcl import checkpoints
    from experiments.serve import server as serving
    from experiments.train import merge
    from experiments.train import stage as train

    existing = runs.list_runs(results)
    done, todo = grid.point_state(existing, plan["id"], plan["points"][i], eval_checkpoints=plan["eval_checkpoints"],
                                  bench=plan["bench"])
    if done is None:
        attempt = len(grid.runs_of_point(existing, plan["id"], plan["points"][i]))
        rid = grid.run_id(plan["id"], i, attempt)
        while (results / rid).exists():
            attempt += 1
            rid = grid.run_id(plan["id"], i, attempt)
        print(f"[sweep] point {i:02d} {' '.join(plan['points'][i])}: training {rid}", flush=True)
        run_dir = train.train(point_overrides(plan, i, rid))
        try:
            tag_point(run_dir, plan, i)
        except Exception as exc:  # the run folder has everything; tags are a convenience
            print(f"[sweep] warning: MLflow tags of {rid} not set ({exc})", file=sys.stderr)
    else:
        run_dir = Path(done["path"])
        print(f"[sweep] point {i:02d} {' '.join(plan['points'][i])}: trained ({run_dir.name})"
              + (f"; to do: {', '.join(todo)}" if todo else "; complete, skipped"), flush=True)
    cfg = compose(point_overrides(plan, i, run_dir.name))
    if "eval_checkpoints" in todo:
        checkpoints.evaluate_checkpoints(cfg, run_dir)
    if "bench" in todo:
        if not (run_dir / "merged" / "config.json").exists():
            merge.merge(run_dir, Path(cfg.paths.venv))
        with contextlib.ExitStack() as stack:
            endpoint = stack.enter_context(serving.server_for(cfg, run_dir, "merged"))
            benchmark.bench(cfg, run_dir, "merged", endpoint)
    return run_dir


def record(plan: dict, results: Path, timings: dict, failed: dict) -> Path:
    """results/sweeps/<id>/sweep.json: the grid and each point's run (what the sweep report reads)."""
    existing = runs.list_runs(results)
    path = sweep_dir(results, plan["id"]) / "sweep.json"
    points = []
    for i, p in enumerate(plan["points"]):
        done, todo = grid.point_state(existing, plan["id"], p, eval_checkpoints=plan["eval_checkpoints"], bench=plan["bench"])
        points.append({"index": i, "overrides": p, "run_id": done["run_id"] if done else None, "todo": todo,
                       "wall_s": timings.get(i), "error": failed.get(i)})
    data = {"id": plan["id"], "name": plan["name"], "file": plan["file"], "dimensions": plan["dimensions"],
            "fixed": plan["fixed"], "eval_checkpoints": plan["eval_checkpoints"], "bench": plan["bench"],
            "points": points, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "total_wall_s": round(sum(p["wall_s"] or 0 for p in points), 1)}
    return runs.write_json_atomic(path, data)


def sweep(plan: dict, results: Path, only: int | None = None) -> Path:
    indices = range(len(plan["points"])) if only is None else [only]
    if only is not None and not 0 <= only < len(plan["points"]):
        raise SweepError(f"POINT={only}: the grid has points 0..{len(plan['points']) - 1}")
    old = sweep_dir(results, plan["id"]) / "sweep.json"
    timings = {p["index"]: p["wall_s"] for p in (runs.read_json(old)["points"] if old.is_file() else [])}
    failed: dict[int, str] = {}
    for i in indices:
        start = time.time()
        try:
            run_point(plan, i, results)
        except Exception as exc:  # one point failing does not lose the others
            failed[i] = str(exc)
            print(f"[sweep] point {i:02d} failed: {exc}", file=sys.stderr, flush=True)
        timings[i] = round((timings.get(i) or 0) + time.time() - start, 1)
        record(plan, results, timings, failed)
    path = record(plan, results, timings, failed)
    print(f"[sweep] {plan['id']}: {path}; `make report SWEEP={plan['id']}` writes its report")
    if failed:
        raise SweepError("points failed: " + "; ".join(f"{i:02d}: {e}" for i, e in failed.items())
                         + " (rerun the same command to retry only these)")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run a grid of trainings (conf/sweep/<name>.yaml)")
    ap.add_argument("--sweep", default=None, help="conf/sweep/<name>.yaml (or a path)")
    ap.add_argument("--id", default=None, help="sweep id (default: the sweep's name; the same id resumes)")
    ap.add_argument("--point", type=int, default=None, help="run only this point (0-based)")
    ap.add_argument("--max-points", type=int, default=None, help="cap on the number of points")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and the estimated time, train nothing")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every point; a,b values add dimensions")
    args = ap.parse_intermixed_args(argv)
    try:
        plan = build(args.sweep, args.overrides, args.id, args.max_points)
        results = Path(plan["configs"][0].paths.results)
        if args.dry_run:
            print(dry_run(plan, results))
            return 0
        sweep(plan, results, args.point)
    except (SweepError, ConfigError, runs.RunError) as exc:
        print(f"[sweep] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
