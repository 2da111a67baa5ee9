"""`make report SWEEP=<id>`: results/sweeps/<id>/report.md from the sweep's record and its runs' files.

One row per point: its swept values, run, eval loss, best BFCL score and the checkpoint step it
came from, throughput (when benched), training cost; the best point by `report.best_by`; a plot of
that value over the swept dimensions (a line for one dimension, a heat map for two, bars beyond).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments.core import runs
from experiments.report.common import REPORT, ReportError, fmt, markdown_table, pyplot, rel_path, run_accelerator, save_png, usd
from experiments.report.cost import devices, hourly_price
from experiments.report.files import bench_outputs, bfcl_summary, load_run
from experiments.report.training import best_checkpoint_of, best_value, pick_best
from experiments.train.checkpoints import column_value

SWEEP_JSON = "sweep.json"
DEFAULT_COLUMN = "bfcl/Overall Acc"


def gather(cfg: DictConfig, sweep_id: str) -> dict:
    """The sweep record + each point's run as the run report loads it (the only I/O)."""
    results = Path(cfg.paths.results)
    sdir = results / "sweeps" / sweep_id
    if not (sdir / SWEEP_JSON).is_file():
        raise ReportError(f"{sdir / SWEEP_JSON}: no such sweep; `make sweep SWEEP=<name>` writes it "
                          f"(known: {', '.join(sorted(p.name for p in (results / 'sweeps').glob('*'))) or 'none'})")
    record = runs.read_json(sdir / SWEEP_JSON)
    kind = str(cfg.report.model_kind)
    points = []
    for p in record["points"]:
        run = None
        if p.get("run_id") and (results / p["run_id"] / runs.RUN_JSON).is_file():
            run = load_run(results / p["run_id"])
            run["bfcl"] = bfcl_summary(run["dir"], kind)
            run["bench"] = bench_outputs(run["dir"], "merged")
        points.append({**p, "run": run})
    return {"record": record, "points": points, "dir": sdir, "results": results,
            "best_by": str(cfg.report.best_by), "best_goal": str(cfg.report.best_goal),
            "cost": OmegaConf.to_container(cfg.cost, resolve=True),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def score_column(d: dict) -> str:
    return d["best_by"] if d["best_by"].startswith("bfcl/") else DEFAULT_COLUMN


def point_row(d: dict, p: dict) -> dict:
    """Numbers of one point (pure): what the table shows, unformatted."""
    run, col = p["run"], score_column(d)
    out = {o.partition("=")[0]: o.partition("=")[2] for o in p["overrides"]}
    out.update({"point": p["index"], "run": p.get("run_id"), "status": "done" if not p.get("todo") else
                ("failed: " + p["error"][:80] if p.get("error") else "to do: " + ", ".join(p["todo"]))})
    if run is None:
        return out
    m = run.get("metrics") or {}
    ckpt = best_checkpoint_of(run, col, "max")
    best_bfcl = column_value(ckpt["leaderboard"], col) if ckpt else None
    tput = [lv["summary"]["throughput"]["output_tokens_per_s"] for lv in (run.get("bench") or {}).get("levels", [])]
    acc = run_accelerator(run)
    price, _ = hourly_price(d["cost"], acc)
    n, _ = devices(run, acc)
    out.update({"eval_loss": m.get("final_eval_loss"), "best_bfcl": best_bfcl, "best_step": ckpt["step"] if ckpt else None,
                "out_tok_s": max(tput) if tput else None, "train_wall_s": m.get("wall_time_s"),
                "cost_usd": m["wall_time_s"] / 3600 * price * n if m.get("wall_time_s") is not None else None,
                "value": best_value(run, d["best_by"], d["best_goal"]), "sweep_wall_s": p.get("wall_s")})
    return out


def render(d: dict, plot: Path | None) -> str:
    rec, col = d["record"], score_column(d)
    dims = rec["dimensions"]
    rows = [point_row(d, p) for p in d["points"]]
    competing = [p["run"] for p in d["points"] if p["run"] is not None]
    best = pick_best(competing, d["best_by"], d["best_goal"]) if competing else None
    table = [{**{k: str(r.get(k, "-")) for k in dims}, "point": f"{r['point']:02d}",
              "run": f"`{r['run']}`" if r.get("run") else "-", "status": r["status"],
              "eval loss": fmt(r.get("eval_loss"), 4), f"best {col}": fmt(r.get("best_bfcl"), 2),
              "at step": fmt(r.get("best_step")), "out tok/s": fmt(r.get("out_tok_s"), 1),
              "train s": fmt(r.get("train_wall_s"), 1), "cost": usd(r.get("cost_usd")),
              d["best_by"]: fmt(r.get("value"), 4)} for r in rows]
    done = sum(r["status"] == "done" for r in rows)
    L = [f"# Sweep `{rec['id']}`\n",
         f"Generated {d['generated']} by `make report SWEEP={rec['id']}` from `{rel_path(d['dir'] / SWEEP_JSON, d['results'])}` "
         f"and each point's run folder. {len(rows)} points over {', '.join(f'`{k}`' for k in dims)}, {done} done"
         + (f"; fixed overrides: `{' '.join(rec['fixed'])}`" if rec.get("fixed") else "") + ". "
         f"Sweep wall time so far: {fmt(rec.get('total_wall_s'), 1)} s.\n",
         markdown_table(pd.DataFrame(table))]
    if best is not None:
        ckpt = best_checkpoint_of(best, d["best_by"], d["best_goal"])
        point = next(r for r in rows if r.get("run") == best["id"])
        L.append(f"**Best point** by `{d['best_by']}` ({'lowest' if d['best_goal'] == 'min' else 'highest'} wins, "
                 f"`report.best_by`/`report.best_goal`): point {point['point']:02d} "
                 f"(`{' '.join(o for o in d['points'][point['point']]['overrides'])}`), run `{best['id']}`, "
                 f"{d['best_by']} = {fmt(best_value(best, d['best_by'], d['best_goal']), 4)}"
                 + (f" at checkpoint `{ckpt['name']}` (`make merge RUN={best['id']} CHECKPOINT=best ARGS=\"report.best_by="
                    f"{d['best_by']}\"`)" if ckpt else "") + ".\n")
    else:
        L.append(f"No point has `{d['best_by']}` yet, so no best point is named.\n")
    L.append(f"Columns: best `{col}` = the highest score over the point's checkpoints (`make eval-checkpoints`, "
             "`bfcl_checkpoints/checkpoints.json`) and the step it was reached at; out tok/s = the highest output "
             "throughput over the point's load-test levels (`bench/merged/`); cost = training wall time x the price "
             "per hour in `conf/cost/` (an assumption) x devices.\n")
    if plot is not None:
        L.append(f"![{d['best_by']} over the grid]({plot.name})\n")
    return "\n".join(L).rstrip() + "\n"


def plot_grid(d: dict, path: Path) -> Path | None:
    dims = d["record"]["dimensions"]
    rows = [r for r in (point_row(d, p) for p in d["points"]) if r.get("value") is not None]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if len(dims) == 2:
        table = df.pivot_table(index=dims[0], columns=dims[1], values="value", aggfunc="first")
        im = ax.imshow(table.values.astype(float), cmap="viridis", aspect="auto")
        ax.set(xticks=range(len(table.columns)), xticklabels=table.columns, yticks=range(len(table.index)),
               yticklabels=table.index, xlabel=dims[1], ylabel=dims[0])
        for (i, j), v in pd.DataFrame(table.values).stack().items():
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="white")
        fig.colorbar(im, ax=ax, label=d["best_by"])
    elif len(dims) == 1:
        ax.plot(df[dims[0]].astype(str), df["value"], "-o")
        ax.set(xlabel=dims[0], ylabel=d["best_by"])
    else:
        ax.bar([f"{r['point']:02d}" for r in rows], df["value"])
        ax.set(xlabel="point (see the table)", ylabel=d["best_by"])
    ax.set_title(f"{d['best_by']} over the sweep {d['record']['id']}")
    return save_png(fig, path)


def write_sweep_report(cfg: DictConfig, sweep_id: str) -> Path:
    d = gather(cfg, sweep_id)
    plot = plot_grid(d, d["dir"] / "sweep.png")
    if plot is None:
        (d["dir"] / "sweep.png").unlink(missing_ok=True)
    return runs.write_text_atomic(d["dir"] / REPORT, render(d, plot))
