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


PATH_LABEL = {"api": "api: chat API, server-side parsing", "native": "native: leaderboard's Qwen2.5 FC handler"}


def measured_rows(d: dict) -> list[dict]:
    """The BFCL summaries the section shows, one per scoring path: each compared run's
    (d["kind"]), then the base model's."""
    kind, info = d["kind"], d["subject"]["info"]
    measured = []
    for r in d["rows"]:
        by_path = r.get("bfcl_paths") or ({"api": r["bfcl"]} if r.get("bfcl") else {})
        measured += [{"label": f"{r['info'].get('method')} `{r['id']}` ({kind}, {path})", "summary": s, "run": r,
                      "path": path} for path, s in by_path.items()]
    if d["base"]:
        by_path = d["base"].get("by_path") or {"api": d["base"]["summary"]}
        measured += [{"label": f"base model `{info.get('model')}` ({path})", "summary": s, "run": None,
                      "base_run": d["base"]["run"], "path": path} for path, s in by_path.items()]
    return measured


def bfcl_rows(measured: Sequence[dict], anchors: dict | None) -> pd.DataFrame:
    """measured: [{"label", "summary", "path"}]; anchors: data/bfcl_anchors.yaml. Percent, 2 decimals.
    An anchor fills only the columns it publishes with this column's definition (`columns`)."""
    out = []
    for m in measured:
        s = m["summary"]
        row = {"model": m["label"], "kind": f"measured here ({s['category_set']}, {s['n_items']} items, "
                                            f"{PATH_LABEL.get(m.get('path', 'api'), m.get('path'))})"}
        row.update({c: fmt(s["leaderboard"].get(c), 2) for c in BFCL_COLUMNS})
        out.append(row)
    for a in (anchors or {}).get("anchors", []):
        src = anchors["sources"][a["source"]]
        row = {"model": a["name"], "kind": f"published, not measured here (BFCL {a['data_version']}, "
                                           f"{src['date']}, {a['mode']})"}
        row.update({c: fmt(a["columns"][c]["value"], 2) if c in a["columns"] else MISSING for c in BFCL_COLUMNS})
        out.append(row)
    return pd.DataFrame(out)


def matched_table(measured: Sequence[dict]) -> pd.DataFrame | None:
    """Accuracy per single-turn category: all quick/full items, and the v3/v4-unchanged ones only."""
    rows = []
    for m in measured:
        matched = (m["summary"].get("v3_v4_unchanged") or {}).get("per_category") or {}
        for category, v in matched.items():
            allc = m["summary"]["per_category"].get(category, {})
            rows.append({"model": m["label"], "category": category, "items": fmt(allc.get("total")),
                         "accuracy": fmt(allc.get("accuracy"), 2), "unchanged items": fmt(v["total"]),
                         "accuracy on unchanged": fmt(v["accuracy"], 2)})
    return pd.DataFrame(rows) if rows else None


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
    path = m.get("path", "api")
    if m.get("run") is not None:
        return m["run"]["dir"] / "bfcl" / kind / path / "summary.json"
    return d["results"] / m["base_run"] / "bfcl" / "base" / path / "summary.json"


def section(d: dict, plots: dict[str, Path]) -> list[str]:
    """Markdown lines of the BFCL section (pure)."""
    sid, kind = d["subject"]["id"], d["kind"]
    L = ["## 2. BFCL (Berkeley Function-Calling Leaderboard)\n"]
    add = L.append
    measured = measured_rows(d)
    if d["subject"].get("bfcl") is None:
        add(f"No BFCL results for `{sid}` ({kind}): {need_merge(d)}`make eval RUN={sid} MODEL={kind}` writes "
            f"`{sid}/bfcl/{kind}/<path>/summary.json` (path api and/or native, `BFCL_PATH=`).\n")
    if d["base"] is None:
        add(f"No BFCL results for the base model: `make eval RUN={sid} MODEL=base` writes `{sid}/bfcl/base/<path>/summary.json`.\n")
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
        matched = matched_table(measured)
        if matched is not None:
            add("### Items unchanged between BFCL v3 and v4 (%)\n")
            add(markdown_table(matched))
            add("The same items, restricted to the ids whose question, functions and ground truth are identical in v3 "
                "(gorilla f810631) and v4 (bfcl-eval's data, = gorilla f7cf735): `data/bfcl_v3_v4_unchanged_ids.json` "
                "(`scripts/bfcl_unchanged_ids.py`); from `v3_v4_unchanged` of the same summary.json files. Where a v3 "
                "anchor is the only one, compare it with these.\n")
        if "bfcl_categories" in plots:
            add("### Per category\n")
            add(image(d, plots, "bfcl_categories", "BFCL accuracy per category") + "\n")
            add("Accuracy per BFCL category (`per_category` of the same summary.json files, = `categories.csv`).\n")
    return L


def measured_notes(d: dict, measured: Sequence[dict]) -> list[str]:
    L = ["Measured rows: bfcl-eval's own aggregation of its own checker's verdicts, one row per scoring path against "
         "the same server: **api** = bfcl's chat-completions handler (tools in OpenAPI form, vLLM parses the calls: "
         "what a client of the deployed model sees); **native** = bfcl's local-model flow with the leaderboard's "
         "Qwen2.5 FC handler ported from gorilla f810631 (`experiments/bfcl/qwen25_fc.py`: bfcl builds the prompt, "
         "/v1/completions, temperature 0.001, max_tokens as bfcl computes it): how the published Qwen2.5 rows were "
         "scored. Source: " + ", ".join(code_path(d, summary_path(d, m, d["kind"])) for m in measured) + "."]
    for m in measured:
        s = m["summary"]
        why = "; ".join(s.get("overall", {}).get("why_not", []))
        trail = s.get("audit") or {}
        data = trail.get("data") or {}
        handler = (trail.get("handler") or {}).get("class")
        L.append(f"- {m['label']}: bfcl-eval {s.get('bfcl_eval_version')}"
                 + (f", data {data.get('version')} ({data.get('data_commit')})" if data else "")
                 + (f", handler `{handler}`" if handler else "")
                 + (f", vLLM {trail['server']['vllm_version']}" if (trail.get("server") or {}).get("vllm_version") else "")
                 + f", category set `{s['category_set']}`"
                 + (f", {s['ids_per_category']} ids per category (seed {s.get('seed')})" if s.get("ids_per_category") else "")
                 + f", {s['n_items']} items, {s['n_missing']} missing, {s['n_failed_requests']} failed requests, "
                 f"{fmt(s['timings_s']['wall'], 1)} s wall"
                 + (f". Overall is not comparable to the public board: {why}" if why else "") + ".")
    if len({m["summary"].get("plan_fingerprint") for m in measured}) > 1:
        L.append("- The measured rows did not score the same items (plan fingerprints differ); compare them with care.")
    L.append("")
    return L


def anchor_notes(d: dict, anchors: dict, measured: Sequence[dict]) -> list[str]:
    L = [f"Published rows are **not measured here**: figures from `{rel_path(d['anchors_path'], REPO_ROOT)}`, "
         f"each row with its source, data version, handler and mode:"]
    for key, src in anchors.get("sources", {}).items():
        used = [a["name"] for a in anchors.get("anchors", []) if a.get("source") == key]
        L.append(f"- `{key}`: {src['title']}, {src['url']} ({', '.join(src.get('files', []))}), dated {src['date']}, "
                 f"{src.get('data_version', '?')}: {', '.join(used)}.")
    for a in anchors.get("anchors", []):
        off = "; ".join(f"{c} {fmt(v['value'], 2)} ({v['why']})" for c, v in (a.get("not_comparable") or {}).items())
        L.append(f"- {a['name']}: BFCL {a['data_version']}, {a['mode']}, handler {a['handler']}"
                 + (f". Not comparable, so not in the table: {off}" if off else "") + ".")
    L.append("v4 rows (data f7cf735) are the same data version as ours. v3 rows fill only the columns whose definition "
             "is the same in v3 and v4 (Non-Live AST and its parts, Irrelevance; Live = v3's live AST Summary)"
             + (". Our rows here are a seeded subset" if any(m["summary"].get("ids_per_category") for m in measured) else "")
             + ". '-' = not published for this definition by the cited source.\n")
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
