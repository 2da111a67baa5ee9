"""Section 1b, BFCL at every checkpoint: score vs step per run, the chosen checkpoint, and whether
eval loss ranks checkpoints the way BFCL does (Spearman rank correlation)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from experiments.report.common import code_path, fmt, image, markdown_table, pyplot, save_png
from experiments.report.training import best_checkpoint_of
from experiments.train.checkpoints import column_value

DEFAULT_COLUMN = "bfcl/Overall Acc"  # shown when report.best_by is not a BFCL column


def column(d: dict) -> str:
    return d["best_by"] if d["best_by"].startswith("bfcl/") else DEFAULT_COLUMN


def eval_loss_at(metrics: dict | None, step: int) -> float | None:
    for s, v in (metrics or {}).get("eval_loss_curve") or []:
        if int(s) == int(step):
            return v
    return None


def points(rows: Sequence[dict], col: str) -> pd.DataFrame:
    """One row per scored checkpoint of every run: run, step, checkpoint, score, eval loss there."""
    out = []
    for r in rows:
        for c in (r.get("checkpoints") or {}).get("checkpoints", []):
            out.append({"run": r["id"], "step": c["step"], "checkpoint": c["name"],
                        "score": column_value(c["leaderboard"], col), "eval_loss": eval_loss_at(r.get("metrics"), c["step"]),
                        "wall_s": c.get("wall_s")})
    return pd.DataFrame(out, columns=["run", "step", "checkpoint", "score", "eval_loss", "wall_s"])


def rank_correlation(df: pd.DataFrame) -> tuple[float | None, int]:
    """Spearman's rho between eval loss and the score over checkpoints that have both (pooled over
    runs), and how many there were; None below 3 points or when either side is constant."""
    both = df.dropna(subset=["score", "eval_loss"])
    if len(both) < 3 or both["score"].nunique() < 2 or both["eval_loss"].nunique() < 2:
        return None, len(both)
    return float(both["eval_loss"].astype(float).corr(both["score"].astype(float), method="spearman")), len(both)


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines (pure); nothing when no compared run has checkpoint scores."""
    rows = [r for r in d["rows"] if (r.get("checkpoints") or {}).get("checkpoints")]
    if not rows:
        return []
    col = column(d)
    df = points(rows, col)
    L = [f"### BFCL at every checkpoint (`{col}`)\n"]
    add = L.append
    table = []
    for r in rows:
        chosen = best_checkpoint_of(r, col, d["best_goal"] if col == d["best_by"] else "max")
        for _, p in df[df["run"] == r["id"]].iterrows():
            table.append({"run": f"`{r['id']}`", "step": str(p["step"]),
                          "checkpoint": p["checkpoint"] + (" (chosen)" if chosen and chosen["name"] == p["checkpoint"] else ""),
                          col: fmt(p["score"], 2), "eval loss at step": fmt(p["eval_loss"], 4),
                          "eval wall s": fmt(p["wall_s"], 1)})
    add(markdown_table(pd.DataFrame(table)))
    rho, n = rank_correlation(df)
    add(f"Rank correlation of eval loss with `{col}` across checkpoints (Spearman, pooled over runs, n={n}): "
        + (f"**{rho:+.2f}** (−1: the lowest eval loss is always the best score; 0: eval loss says nothing "
           "about the score)." if rho is not None else "not computed (fewer than 3 checkpoints with both, or "
           "one side constant).") + "\n")
    add("Chosen: each run's best checkpoint by that column (`report.best_by`); `make merge RUN=<run> CHECKPOINT=best` "
        "merges it. Source: " + ", ".join(code_path(d, r["dir"] / "bfcl_checkpoints" / "checkpoints.json") for r in rows) + ".\n")
    if "checkpoint_scores" in plots:
        add(image(d, plots, "checkpoint_scores", "BFCL per checkpoint") + "\n")
    return L


def plot_checkpoints(d: dict, path: Path) -> Path | None:
    rows = [r for r in d["rows"] if (r.get("checkpoints") or {}).get("checkpoints")]
    if not rows:
        return None
    col = column(d)
    df = points(rows, col)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, r in enumerate(rows):
        part = df[df["run"] == r["id"]].sort_values("step")
        ax.plot(part["step"], part["score"], "-o", color=f"C{i}", label=r["id"])
        chosen = best_checkpoint_of(r, col, d["best_goal"] if col == d["best_by"] else "max")
        if chosen:
            ax.plot([chosen["step"]], [column_value(chosen["leaderboard"], col)], "*", color=f"C{i}", markersize=16,
                    markeredgecolor="black", label=f"{r['id']} chosen ({chosen['name']})")
    ax.set(xlabel="step", ylabel=col, title="BFCL per checkpoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
