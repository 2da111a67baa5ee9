"""Section 2, BFCL: measured leaderboard columns beside the published anchors, error taxonomy, per category."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from experiments.core.paths import REPO_ROOT
from experiments.report.common import MISSING, code_path, fmt, image, markdown_table, need_merge, pyplot, rel_path, save_png


BFCL_COLUMNS = ("Overall Acc", "Non-Live AST Acc", "Non-Live Simple AST", "Non-Live Multiple AST",
                "Non-Live Parallel AST", "Non-Live Parallel Multiple AST", "Live Acc", "Multi Turn Acc",
                "Irrelevance Detection", "Relevance Detection", "Memory Acc")


def measured_rows(d: dict) -> list[dict]:
    """The BFCL summaries the section shows: each compared run's (d["kind"]), then the base model's."""
    kind, info = d["kind"], d["subject"]["info"]
    measured = [{"label": f"{r['info'].get('method')} `{r['id']}` ({kind})", "summary": r["bfcl"], "run": r}
                for r in d["rows"] if r.get("bfcl")]
    if d["base"]:
        measured.append({"label": f"base model `{info.get('model')}`", "summary": d["base"]["summary"],
                         "run": None, "base_run": d["base"]["run"]})
    return measured


def bfcl_rows(measured: Sequence[dict], anchors: dict | None) -> pd.DataFrame:
    """measured: [{"label", "summary"}]; anchors: data/bfcl_anchors.yaml. Percent, 2 decimals."""
    out = []
    for m in measured:
        s = m["summary"]
        row = {"model": m["label"], "kind": f"measured here ({s['category_set']}, {s['n_items']} items)"}
        row.update({c: fmt(s["leaderboard"].get(c), 2) for c in BFCL_COLUMNS})
        out.append(row)
    for a in (anchors or {}).get("anchors", []):
        sources = {a["columns"][c]["source"] for c in a["columns"]}
        dates = sorted({str(anchors["sources"][k]["date"]) for k in sources})
        row = {"model": a["name"], "kind": f"published, not measured here ({anchors.get('benchmark', 'BFCL')}, {', '.join(dates)})"}
        row.update({c: fmt(a["columns"][c]["value"], 2) if c in a["columns"] else MISSING for c in BFCL_COLUMNS})
        out.append(row)
    return pd.DataFrame(out)


def taxonomy_table(measured: Sequence[dict]) -> pd.DataFrame:
    buckets: list[str] = []
    for m in measured:
        for b, n in m["summary"]["errors"]["by_bucket"].items():
            if n and b not in buckets:
                buckets.append(b)
    rows = [{"error": b, **{m["label"]: fmt(m["summary"]["errors"]["by_bucket"].get(b, 0)) for m in measured}}
            for b in buckets]
    rows.append({"error": "hallucinated function (items)",
                 **{m["label"]: fmt(m["summary"]["errors"]["hallucinated_functions"]["items"]) for m in measured}})
    rows.append({"error": "failed requests", **{m["label"]: fmt(m["summary"]["n_failed_requests"]) for m in measured}})
    rows.append({"error": "items scored", **{m["label"]: fmt(m["summary"]["n_items"]) for m in measured}})
    return pd.DataFrame(rows)


def summary_path(d: dict, m: dict, kind: str) -> Path:
    if m.get("run") is not None:
        return m["run"]["dir"] / "bfcl" / kind / "summary.json"
    return d["results"] / m["base_run"] / "bfcl" / "base" / "summary.json"


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines of the BFCL section (pure)."""
    sid, kind = d["subject"]["id"], d["kind"]
    L = ["## 2. BFCL (Berkeley Function-Calling Leaderboard)\n"]
    add = L.append
    measured = measured_rows(d)
    if d["subject"].get("bfcl") is None:
        add(f"No BFCL results for `{sid}` ({kind}): {need_merge(d)}`make eval RUN={sid} MODEL={kind}` writes "
            f"`{sid}/bfcl/{kind}/summary.json`.\n")
    if d["base"] is None:
        add(f"No BFCL results for the base model: `make eval RUN={sid} MODEL=base` writes `{sid}/bfcl/base/summary.json`.\n")
    anchors = d["anchors"]
    if anchors is None:
        add(f"No published anchors: `{rel_path(d['anchors_path'], REPO_ROOT)}` is missing (`report.anchors`).\n")
    add("### Leaderboard columns (%)\n")
    add(markdown_table(bfcl_rows(measured, anchors)))
    if measured:
        L.extend(measured_notes(d, measured))
    if anchors:
        L.extend(anchor_notes(d, anchors, measured))
    if measured:
        add("### Error taxonomy (failed items per bucket)\n")
        add(markdown_table(taxonomy_table(measured)))
        add("Buckets group bfcl-eval's own error types (`experiments/bfcl/tables.py`); from `errors` of the same "
            "summary.json files (per item: `items.csv` beside them).\n")
        if "bfcl_categories" in plots:
            add("### Per category\n")
            add(image(d, plots, "bfcl_categories", "BFCL accuracy per category") + "\n")
            add("Accuracy per BFCL category (`per_category` of the same summary.json files, = `categories.csv`).\n")
    return L


def measured_notes(d: dict, measured: Sequence[dict]) -> list[str]:
    L = ["Measured rows: bfcl-eval's own aggregation of its own checker's verdicts. Source: "
         + ", ".join(code_path(d, summary_path(d, m, d["kind"])) for m in measured) + "."]
    for m in measured:
        s = m["summary"]
        why = "; ".join(s.get("overall", {}).get("why_not", []))
        L.append(f"- {m['label']}: bfcl-eval {s.get('bfcl_eval_version')}, category set `{s['category_set']}`"
                 + (f", {s['ids_per_category']} ids per category (seed {s.get('seed')})" if s.get("ids_per_category") else "")
                 + f", {s['n_items']} items, {s['n_missing']} missing, {s['n_failed_requests']} failed requests"
                 + (f". Overall is not comparable to the public board: {why}" if why else "") + ".")
    if len({m["summary"].get("plan_fingerprint") for m in measured}) > 1:
        L.append("- The measured rows did not score the same items (plan fingerprints differ); compare them with care.")
    L.append("")
    return L


def anchor_notes(d: dict, anchors: dict, measured: Sequence[dict]) -> list[str]:
    L = [f"Published rows are **not measured here**: figures from `{rel_path(d['anchors_path'], REPO_ROOT)}`, "
         f"each with its source:"]
    for key, src in anchors.get("sources", {}).items():
        used = [a["name"] for a in anchors.get("anchors", []) if any(c["source"] == key for c in a["columns"].values())]
        L.append(f"- `{key}`: {src['title']}, {src['url']}, dated {src['date']} ({', '.join(used)}).")
    L.append("They are the full BFCL v3 sets; this repository's bfcl-eval scores BFCL v4 data"
             + (" and, here, a seeded subset" if any(m["summary"].get("ids_per_category") for m in measured) else "")
             + ": same task types, not the same items. '-' = not published by the cited source.\n")
    return L


def plot_bfcl_categories(measured: Sequence[dict], path: Path) -> Path | None:
    if not measured:
        return None
    plt = pyplot()
    cats: list[str] = []
    for m in measured:
        cats += [c for c in m["summary"]["per_category"] if c not in cats]
    width = 0.8 / len(measured)
    fig, ax = plt.subplots(figsize=(max(9, 0.55 * len(cats) + 2), 5))
    for i, m in enumerate(measured):
        vals = [m["summary"]["per_category"].get(c, {}).get("accuracy", float("nan")) for c in cats]
        ax.bar([k + (i - (len(measured) - 1) / 2) * width for k in range(len(cats))], vals, width,
               label=m["label"].replace("`", ""))
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="accuracy (%)", ylim=(0, 105), title="BFCL accuracy per category (measured here)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
