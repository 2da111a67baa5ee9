"""Section 1, Training: the compared runs' metrics, the best run, the loss curves."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from experiments.train.checkpoints import best_checkpoint, column_value
from experiments.report.common import ReportError, code_path, fmt, image, markdown_table, pyplot, rel_path, save_png


def bfcl_metric(summary: dict | None, name: str) -> float | None:
    """bfcl/<column> (any spelling: spaces or '-' as _, as MLflow logs it) -> that leaderboard value."""
    return column_value(summary.get("leaderboard", {}), name) if summary else None


def best_checkpoint_of(run: dict, best_by: str, goal: str) -> dict | None:
    """With best_by=bfcl/<column>: the run's best checkpoint by `make eval-checkpoints` scores."""
    scores = run.get("checkpoints")
    if not best_by.startswith("bfcl/") or not scores:
        return None
    return best_checkpoint(scores.get("checkpoints", []), best_by, goal)


def best_value(run: dict, best_by: str, goal: str = "min") -> float | None:
    """A run's value of best_by: a train_metrics.json key, or bfcl/<column> of its best checkpoint
    (when its checkpoints were scored), else of its `make eval` summary."""
    if best_by.startswith("bfcl/"):
        ckpt = best_checkpoint_of(run, best_by, goal)
        if ckpt is not None:
            return column_value(ckpt["leaderboard"], best_by)
        return bfcl_metric(run.get("bfcl"), best_by[len("bfcl/"):])
    value = (run.get("metrics") or {}).get(best_by)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pick_best(rows: Sequence[dict], best_by: str, goal: str) -> dict | None:
    """The run with the lowest (goal=min) or highest (goal=max) value of best_by; runs without
    the value do not compete; ties go to the earlier run in `rows`. With a BFCL column and scored
    checkpoints, the run's value is its best checkpoint's (`best_checkpoint_of` names it)."""
    if goal not in ("min", "max"):
        raise ReportError(f"report.best_goal={goal!r}: use min or max")
    scored = [r for r in rows if best_value(r, best_by, goal) is not None]
    if not scored:
        return None
    sign = 1 if goal == "min" else -1
    return min(scored, key=lambda r: sign * best_value(r, best_by, goal))


def training_table(rows: Sequence[dict], best_id: str | None) -> pd.DataFrame:
    out = []
    for r in rows:
        m, info = r.get("metrics") or {}, r["info"]
        status = info.get("stages", {}).get("train", "?")
        out.append({
            "method": info.get("method", "?") + (" (best)" if r["id"] == best_id else ""),
            "run": f"`{r['id']}`",
            "train": status,
            "final train loss": fmt(m.get("final_train_loss"), 4),
            "final eval loss": fmt(m.get("final_eval_loss"), 4),
            "best eval loss": fmt(m.get("best_eval_loss"), 4),
            "steps": fmt(m.get("steps")),
            "wall time s": fmt(m.get("wall_time_s"), 1),
            "tokens/s": fmt(m.get("tokens_per_s"), 1),
            "peak GPU mem GiB": fmt(m.get("peak_gpu_mem_gib"), 2),
            "peak memory GiB (PSS)": fmt(m.get("peak_pss_gib"), 2),   # unique memory of the trainer tree
            "trainable params": fmt(m.get("trainable_params")),
        })
    return pd.DataFrame(out)


def data_table(rows: Sequence[dict]) -> pd.DataFrame:
    """Per run: the training data (data_report.json): conversion, BFCL overlap, packing."""
    out = []
    for r in rows:
        rep = r.get("data") or {}
        dec, pk = rep.get("decontamination") or {}, rep.get("packing") or {}
        tpr = pk.get("tokens_per_row") or {}
        out.append({
            "run": f"`{r['id']}`", "data": r["info"].get("data", "?"),
            "sources": ", ".join(f"{n} {s.get('rows_in_mix')}" for n, s in (rep.get("sources") or {}).items()) or "-",
            "rows in": fmt(rep.get("rows_in")), "rejected": fmt(rep.get("rejected")), "rows out": fmt(rep.get("rows_out")),
            "BFCL overlap": fmt(dec.get("rows_overlapping")) + (f" ({fmt(dec.get('rows_dropped'))} dropped)"
                                                                if dec.get("mode") == "drop" else ""),
            "dropped by Axolotl": fmt(pk.get("rows_dropped")),
            "tokens/row p50": fmt(tpr.get("p50"), 0), "p95": fmt(tpr.get("p95"), 0), "max": fmt(tpr.get("max")),
            "packing efficiency": fmt(pk.get("packing_efficiency"), 3), "trained share": fmt(pk.get("trained_share"), 3),
        })
    return pd.DataFrame(out)


def data_lines(d: dict, rows: Sequence[dict]) -> list[str]:
    with_data = [r for r in rows if r.get("data")]
    if not with_data:
        return []
    L = ["### Training data\n", markdown_table(data_table(with_data))]
    for r in with_data:
        cats = ((r["data"].get("decontamination") or {}).get("by_category") or {})
        if cats:
            L.append(f"- `{r['id']}` BFCL overlap by category: " + ", ".join(
                f"{c} {v.get('rows')} ({', '.join(f'{k} {n}' for k, n in v.items() if k != 'rows')})"
                for c, v in cats.items()) + ".")
    L.append("Columns: rows read, rejected by the converters (reasons in the file), written to train.jsonl; "
             "rows overlapping BFCL test items (normalised exact match, word n-gram containment, identical "
             "function-doc sets; `data.decontaminate=drop` removes them); rows Axolotl dropped from its "
             "prepared dataset (longer than `sequence_len`, or nothing to train); tokens per prepared row; "
             "packing efficiency = tokens / (packed sequences x `sequence_len`) with Axolotl's packer "
             "(only with `sample_packing`); trained share = tokens with a label / all tokens.\n")
    L.append("Source: " + ", ".join(code_path(d, r["dir"] / "data" / "data_report.json") for r in with_data) + ".\n")
    return L


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines of the Training section (pure)."""
    rows, info, sid = d["rows"], d["subject"]["info"], d["subject"]["id"]
    L = ["## 1. Training\n", f"Runs compared: {d['rule']}.\n"]
    add = L.append
    with_metrics = [r for r in rows if r.get("metrics")]
    if not with_metrics:
        add(f"No training metrics: `make train METHOD={info.get('method')}` writes "
            f"`results/<run_id>/train_metrics.json` (and `make compare` one run per method).\n")
        return L
    best = pick_best(rows, d["best_by"], d["best_goal"])
    add(markdown_table(training_table(rows, best["id"] if best else None)))
    for r in rows:
        if not r.get("metrics"):
            add(f"- `{r['id']}`: no `train_metrics.json` (train: {r['info'].get('stages', {}).get('train', '?')}); "
                f"see `{rel_path(r['dir'] / 'train.log', d['results'])}`.")
    goal = "lowest" if d["best_goal"] == "min" else "highest"
    if best is not None:
        val = best_value(best, d["best_by"], d["best_goal"])
        ckpt = best_checkpoint_of(best, d["best_by"], d["best_goal"])
        add(f"**Best run** by `{d['best_by']}` ({goal} wins; `report.best_by`/`report.best_goal` in "
            f"`conf/report/default.yaml`): **`{best['id']}`** ({best['info'].get('method')}), "
            f"{d['best_by']} = {fmt(val, 4)}"
            + (f" at checkpoint **`{ckpt['name']}`** (step {ckpt['step']}; `make merge RUN={best['id']} "
               f"CHECKPOINT=best` merges it)" if ckpt else "") + ". Runs without the value do not compete."
            + (f" This report is about `{sid}`; `make all RUN={best['id']}` merges, serves, evaluates and "
               f"load-tests the best run and writes its report." if best["id"] != sid else "") + "\n")
    else:
        add(f"No run has `{d['best_by']}`, so no best run is named (`report.best_by`).\n")
    add("Columns: losses as the Trainer logged them (last logged step); wall time of `axolotl train` "
        "including start-up (measured by `make train`); tokens/s = tokens trained / Trainer runtime; "
        "peak GPU memory = the Trainer's max allocated; peak memory (PSS) = the training process tree's "
        "proportional set size, summed (pages that forked workers share with the trainer counted once; "
        "`peak_rss_largest_process_gib` in train_metrics.json is the largest single process); trainable parameters = elements of the saved adapter.\n")
    add("Source: " + ", ".join(code_path(d, r["dir"] / "train_metrics.json") for r in with_metrics) + ".\n")
    if "loss_curves" in plots:
        add(image(d, plots, "loss_curves", "loss curves") + "\n")
        add("Training loss (solid) and evaluation loss (dashed, markers) per step, from `loss_curve` "
            "and `eval_loss_curve` of the same files.\n")
    return L + data_lines(d, rows)


def plot_losses(rows: Iterable[dict], path: Path) -> Path | None:
    rows = [r for r in rows if (r.get("metrics") or {}).get("loss_curve")]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, r in enumerate(rows):
        color = f"C{i}"
        m = r["metrics"]
        label = f"{r['info'].get('method')} ({r['id']})"
        steps, losses = zip(*m["loss_curve"])
        ax.plot(steps, losses, "-", color=color, alpha=0.85, label=f"{label} train")
        if m.get("eval_loss_curve"):
            es, ev = zip(*m["eval_loss_curve"])
            ax.plot(es, ev, "--o", color=color, label=f"{label} eval")
    ax.set(xlabel="step", ylabel="loss", title="Training and evaluation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
