"""Accuracy vs serving cost, one point per compared run: the Pareto fronts of the Cost section.

x: the run's max sustainable throughput (capacity.json of `make bench CAPACITY=1`; else the highest
successful req/s among its bench levels, labelled as such) and the $ per 1M requests at that rate;
y: the BFCL leaderboard column `report.pareto_metric`. A point is non-dominated when no other point
is at least as accurate and at least as fast (or as cheap), and strictly better in one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from experiments.report.common import fmt, markdown_table, pyplot, save_png, usd
from experiments.report.training import bfcl_metric


def throughput_of(bench: dict | None) -> tuple[float | None, str]:
    if not bench or not bench.get("levels"):
        return None, "no bench"
    cap = bench.get("capacity") or {}
    if cap.get("capacity_rate"):
        return float(cap["capacity_rate"]), "capacity search"
    best = max((lv["summary"]["throughput"]["requests_per_s"] or 0.0) for lv in bench["levels"])
    return (best or None), "max req/s of the levels (no capacity search)"


def points(rows: Sequence[dict], metric: str, usd_per_hour: float, devices: int = 1) -> pd.DataFrame:
    """rows: report runs, each with `bfcl` and `bench`; one row per run that has both numbers."""
    out = []
    for r in rows:
        acc = bfcl_metric(r.get("bfcl"), metric)
        rps, source = throughput_of(r.get("bench"))
        if acc is None or rps is None:
            continue
        out.append({"run": r["id"], "method": r["info"].get("method", "?"), "accuracy": float(acc),
                    "req_per_s": rps, "usd_per_1m_requests": 1e6 / rps / 3600 * usd_per_hour * devices,
                    "throughput_source": source})
    df = pd.DataFrame(out, columns=["run", "method", "accuracy", "req_per_s", "usd_per_1m_requests", "throughput_source"])
    df["front_throughput"] = non_dominated(df, "req_per_s", maximize=True)
    df["front_cost"] = non_dominated(df, "usd_per_1m_requests", maximize=False)
    return df


def non_dominated(df: pd.DataFrame, x: str, maximize: bool) -> list[bool]:
    """Accuracy is maximised; x maximised (throughput) or minimised (cost)."""
    sign = 1 if maximize else -1
    pts = list(zip(df["accuracy"], sign * df[x]))
    return [not any(a2 >= a and b2 >= b and (a2, b2) != (a, b) for a2, b2 in pts) for a, b in pts]


def plot(df: pd.DataFrame, metric: str, path: Path) -> Path | None:
    if df.empty:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, x, front, label in ((axes[0], "req_per_s", "front_throughput", "max sustainable req/s"),
                                (axes[1], "usd_per_1m_requests", "front_cost", "$ per 1M requests")):
        for is_front, style in ((True, dict(marker="*", s=180, color="tab:red", label="non-dominated")),
                                (False, dict(marker="o", s=60, color="tab:gray", label="dominated"))):
            sub = df[df[front] == is_front]
            if len(sub):
                ax.scatter(sub[x], sub["accuracy"], **style)
        for row in df.itertuples():
            ax.annotate(row.method, (getattr(row, x), row.accuracy), textcoords="offset points", xytext=(5, 5))
        ax.set(xlabel=label, ylabel=f"BFCL {metric}", title=f"BFCL {metric} vs {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(fig, path)


def lines(df: pd.DataFrame, metric: str, price_key: str, image_md: str | None) -> list[str]:
    L = ["### Accuracy vs serving cost (Pareto)\n"]
    if df.empty:
        return L + [f"No compared run has both a BFCL `{metric}` value and a bench: `make eval` and "
                    "`make bench CAPACITY=1` for each run draw this.\n"]
    table = pd.DataFrame({"run": [f"`{r}`" for r in df["run"]], "method": df["method"],
                          f"BFCL {metric}": [fmt(v, 2) for v in df["accuracy"]],
                          "max req/s": [fmt(v, 3) for v in df["req_per_s"]],
                          "$ / 1M requests": [usd(v) for v in df["usd_per_1m_requests"]],
                          "throughput from": df["throughput_source"],
                          "front (req/s)": [fmt(v) for v in df["front_throughput"]],
                          "front ($)": [fmt(v) for v in df["front_cost"]]})
    L.append(markdown_table(table))
    L.append(f"$ per 1M requests = 1e6 / max req/s / 3600 × `{price_key}`. Non-dominated: no other run is at "
             "least as accurate and at least as fast (cheap) and better in one of them.\n")
    if image_md:
        L.append(image_md)
    return L
