"""Section "Learning": the run's base model vs the tuned one on the same inputs (pure).

Eval loss on the held-out split (Axolotl evaluates once before the first step: the base model),
the held-out prompts answered with parsed tool calls / the right function / exactly the right
arguments (`make eval` writes heldout/<model>/summary.json), and BFCL per category with what
moved and what got worse.
"""
from __future__ import annotations

import pandas as pd

from experiments.report.common import MISSING, code_path, fmt, markdown_table

HELDOUT_COLUMNS = (("call_rows", "rows whose answer is a call"), ("parsed", "parsed tool calls"),
                   ("right_function", "right function(s)"), ("exact_arguments", "exact arguments"),
                   ("text_rows", "rows whose answer is text"), ("text_rows_no_call", "answered without a call"),
                   ("errors", "failed requests"))


def eval_loss_pair(metrics: dict | None) -> tuple[float | None, float | None]:
    """(eval loss before training, final eval loss) from train_metrics.json's eval_loss_curve."""
    curve = (metrics or {}).get("eval_loss_curve") or []
    before = next((v for s, v in curve if s == 0), None)
    return before, (curve[-1][1] if curve and curve[-1][0] != 0 else None)


def heldout_table(heldout: dict) -> pd.DataFrame:
    return pd.DataFrame([{"model": label, **{name: fmt(s.get(key)) for key, name in HELDOUT_COLUMNS}}
                         for label, s in heldout.items() if s])


def category_changes(base: dict, tuned: dict) -> pd.DataFrame:
    """Per BFCL category: base, tuned, change (percentage points), from the two summaries."""
    cats = list(dict.fromkeys([*base["per_category"], *tuned["per_category"]]))
    rows = []
    for c in cats:
        b = base["per_category"].get(c, {}).get("accuracy")
        t = tuned["per_category"].get(c, {}).get("accuracy")
        rows.append({"category": c, "base": b, "tuned": t,
                     "change": (t - b) if b is not None and t is not None else None})
    return pd.DataFrame(rows)


def moved_sentence(changes: pd.DataFrame) -> list[str]:
    up = [f"{r.category} ({r.base:.0f} -> {r.tuned:.0f})" for r in changes.itertuples() if r.change and r.change > 0]
    down = [f"{r.category} ({r.base:.0f} -> {r.tuned:.0f})" for r in changes.itertuples() if r.change and r.change < 0]
    return [f"- **Moved up**: {', '.join(up) if up else 'nothing'}.",
            f"- **Got worse**: {', '.join(down) if down else 'nothing'}."]


def section(d: dict, plots: dict) -> list[str]:
    """Markdown lines of the Learning section."""
    sub, kind = d["subject"], d["kind"]
    sid = sub["id"]
    L = ["## 2b. Learning: base model vs tuned\n"]
    add = L.append
    note = (sub.get("config") or {}).get("model", {}).get("note")
    if note:
        add(f"> {note}\n")
    before, after = eval_loss_pair(sub.get("metrics"))
    if before is not None and after is not None:
        add(f"**Eval loss on the held-out split**: {before:.4f} before training (the base model: Axolotl "
            f"evaluates before the first step) -> {after:.4f} after {fmt((sub.get('metrics') or {}).get('steps'))} "
            f"steps ({after - before:+.4f}). Source: {code_path(d, sub['dir'] / 'train_metrics.json')} "
            "(`eval_loss_curve`).\n")
    held = {f"base `{sub['info'].get('model')}`": d["heldout"].get("base"), f"tuned ({kind})": d["heldout"].get(kind)}
    if any(held.values()):
        add("### Held-out prompts (never trained on)\n")
        add(markdown_table(heldout_table(held)))
        add("The first assistant turn of every row of the run's fixed held-out split (`data/heldout.jsonl`, "
            "rows listed in `data/data_report.json`), asked with the row's tools at temperature 0; a call counts "
            "when the server's tool parser returns it. Right function(s): the same names as the row's answer; "
            "exact arguments: the same names and decoded arguments. Source: "
            + ", ".join(code_path(d, sub["dir"] / "heldout" / k / "summary.json") for k in ("base", kind)
                        if d["heldout"].get(k)) + ".\n")
    else:
        add(f"No held-out answers: `make eval RUN={sid} MODEL=base` and `make eval RUN={sid} MODEL={kind}` write them.\n")
    base, tuned = d["subject_bfcl_base"], sub.get("bfcl")
    if base and tuned:
        changes = category_changes(base, tuned)
        add("### BFCL per category: base vs tuned (%)\n")
        shown = changes.assign(**{c: changes[c].map(lambda v: fmt(v, 1) if v is not None else MISSING)
                                  for c in ("base", "tuned", "change")})
        add(markdown_table(shown))
        L.extend(moved_sentence(changes))
        add("")
        add("Irrelevance categories score a model that does not call; a model that learned to call can lose "
            "there while it gains in the call categories. Source: "
            f"{code_path(d, sub['dir'] / 'bfcl' / 'base' / 'summary.json')}, "
            f"{code_path(d, sub['dir'] / 'bfcl' / kind / 'summary.json')}.\n")
    return L
