"""`make compare [METHODS=qlora,dora] [COMPARISON=<id>]`: train several methods under one comparison
id and report them side by side.

Each method is trained with `experiments.train.stage.train` (the same path as `make train`) with
`run.comparison=<id>` added, so run.json and every MLflow run of it (train, and later eval and bench)
carry the id as the `comparison` tag. A method whose run with that id already finished is not
trained again: rerunning the same command after an interruption trains only what is missing.
Then the best run (by `report.best_by`) gets the report, which covers every method of the comparison.

    make compare                                  # the three methods, a new id cmp-<UTC time>
    make compare METHODS=qlora,dora COMPARISON=cmp-20261130-101500   # reuse an id: only missing methods train
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from experiments.core import runs
from experiments.core.config import ConfigError, compose
from experiments.core.paths import CONF_DIR

DEFAULT_METHODS = ("qlora", "dora", "qlora_opt")


class CompareError(RuntimeError):
    pass


def new_comparison_id(now: float | None = None) -> str:
    return "cmp-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))


def available_methods() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def check_request(methods: Sequence[str], overrides: Sequence[str]) -> None:
    """Everything wrong with the request that can be said before anything trains."""
    known = available_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise CompareError(f"METHODS: unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise CompareError(f"METHODS={','.join(methods)}: a method is named twice")
    for o in overrides:
        key = o.lstrip("+~").partition("=")[0]
        if key in ("method", "run.id", "run.comparison"):
            raise CompareError(f"{o}: `make compare` sets {key} itself (use METHODS= / COMPARISON=)")


def plan(existing: Sequence[dict], comparison: str, methods: Sequence[str]) -> dict[str, str | None]:
    """method -> the finished run of this comparison to reuse (the latest), or None: train it. Pure."""
    out: dict[str, str | None] = {m: None for m in methods}
    for r in sorted(existing, key=lambda r: r.get("created", "")):
        if (r.get("comparison") == comparison and r.get("method") in out
                and r.get("stages", {}).get("train") == "done"):
            out[r["method"]] = r["run_id"]
    return out


def _comparable(overrides: Sequence[str]) -> set[str]:
    return {o for o in overrides if o.partition("=")[0] not in ("method", "run.comparison", "run.id")}


def compare(overrides: Sequence[str], methods: Sequence[str] | None = None, comparison: str | None = None) -> Path:
    # Imported here: `make compare --help` stays instant.
    from experiments import report
    from experiments.train import stage as train

    methods = list(methods or DEFAULT_METHODS)
    overrides = list(overrides)
    check_request(methods, overrides)
    cfg = compose(overrides)  # a bad override fails here, before anything trains
    results = Path(cfg.paths.results)
    comparison = comparison or new_comparison_id()
    if not runs._RUN_ID_RE.match(comparison):
        raise CompareError(f"COMPARISON={comparison!r}: use letters, digits, '.', '_' or '-'")
    todo = plan(runs.list_runs(results), comparison, methods)
    print(f"[compare] comparison {comparison}: methods {', '.join(methods)}", flush=True)
    failed: dict[str, str] = {}
    for method in methods:
        reuse = todo[method]
        if reuse:
            recorded = _comparable(runs.read_json(results / reuse / runs.RUN_JSON).get("overrides") or [])
            differs = recorded ^ _comparable(overrides)
            print(f"[compare] {method}: reusing finished run {reuse}"
                  + (f" (warning: it was trained with other overrides: {sorted(differs)})" if differs else ""), flush=True)
            continue
        print(f"[compare] {method}: training", flush=True)
        try:
            train.train([f"method={method}", f"run.comparison={comparison}", *overrides])
        except Exception as exc:  # one method failing does not lose the others
            failed[method] = str(exc)
            print(f"[compare] {method}: failed: {exc}", file=sys.stderr, flush=True)

    done = plan(runs.list_runs(results), comparison, methods)
    finished = [r for r in done.values() if r]
    if not finished:
        raise CompareError(f"comparison {comparison}: no method finished training: {failed}")
    rows = [report.load_run(results / r) for r in finished]
    for r in rows:
        r["bfcl"] = report.bfcl_summary(r["dir"], str(cfg.report.model_kind))
    best = report.pick_best(rows, str(cfg.report.best_by), str(cfg.report.best_goal)) or rows[-1]
    path = report.write_report(cfg, best["dir"])
    print(f"[compare] best by {cfg.report.best_by} ({cfg.report.best_goal}): {best['id']} ({best['info']['method']})")
    print(f"[compare] report: {path}")
    print(f"[compare] MLflow: `make ui`, then filter the runs with  tags.comparison = '{comparison}'")
    if failed:
        raise CompareError("failed: " + "; ".join(f"{m}: {e}" for m, e in failed.items())
                           + f" (the report covers the others; rerun with COMPARISON={comparison} to train only these)")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train several methods under one comparison id and report them")
    ap.add_argument("--methods", default=None, help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})")
    ap.add_argument("--comparison", default=os.environ.get("COMPARISON") or None,
                    help="comparison id to create or continue (default: cmp-<UTC time>)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        compare(args.overrides, methods, args.comparison)
    except (CompareError, ConfigError, runs.RunError) as exc:
        print(f"[compare] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
