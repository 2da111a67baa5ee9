"""Section 6, Agreement: did training, merging, serving and scoring use the same template and
tokenizer (fingerprints), does the serving parser read every training target back (round trip),
and does the served model score the held-out rows like the trainer did (`make agree`)."""
from __future__ import annotations

import pandas as pd

from experiments.report.common import MISSING, fmt, markdown_table

RED = '<span style="color:red">**{}**</span>'


def red(text: str) -> str:
    return RED.format(text)


def _short(digest: str | None) -> str:
    return f"`{digest[:12]}`" if digest else MISSING


def fingerprint_rows(a: dict) -> list[dict]:
    """One row per stage that recorded digests, flagged when template or tokenizer differ from training's."""
    train = a.get("train") or {}
    rows = [{"stage": "train (run.json)", "source": train.get("chat_template_file", MISSING), **train}]
    if a.get("merge"):
        rows.append({"stage": "merge", "source": a["merge"].get("chat_template_file", MISSING), **a["merge"]})
    for stage, fp in a.get("stages", {}).items():
        rows.append({"stage": stage, "source": fp.get("chat_template_file", fp.get("unchecked", MISSING)), **fp})
    out = []
    for r in rows:
        differs = [k for k in ("chat_template", "tokenizer") if r.get(k) and train.get(k) and r[k] != train[k]]
        out.append({"stage": r["stage"], "chat template": _short(r.get("chat_template")),
                    "tokenizer": _short(r.get("tokenizer")), "special tokens": _short(r.get("special_tokens")),
                    "weights": _short(r.get("weights")),
                    "agrees with training": red("MISMATCH: " + ", ".join(differs)) if differs
                    else ("yes" if r.get("chat_template") else MISSING),
                    "template from": f"`{r['source']}`"})
    return out


def roundtrip_lines(rt: dict | None) -> list[str]:
    if not rt:
        return ["Parser round trip: not recorded (data_report.json has no `parser_roundtrip`; `make train` writes it).\n"]
    if "skipped" in rt:
        return [f"Parser round trip: skipped ({rt['skipped']}).\n"]
    head = (f"Parser round trip (data_report.json): {rt['turns']} assistant turns with tool calls in "
            f"{rt['rows_with_calls']} rows rendered with the training template and read by vLLM's `{rt['parser']}` "
            f"parser: ")
    if not rt["failed_rows"]:
        return [head + "all read back with the same names and arguments.\n"]
    lines = [head + red(f"{rt['failed_rows']} rows do not read back") + "; first examples:\n"]
    lines += [f"- row {e['row']}: " + "; ".join(e["problems"])[:400] for e in rt["examples"]]
    return lines + [""]


def agree_lines(agree: dict | None, skipped: str | None) -> list[str]:
    if skipped:
        return [f"Served loss and adapter = merged: **skipped** ({skipped}).\n"]
    if not agree:
        return ["Served loss = trained loss: not measured yet (`make agree` writes agree.json).\n"]
    lines = []
    loss = agree.get("loss")
    if loss:
        verdict = "agree" if loss["ok"] else red("DISAGREE")
        lines.append(f"Served loss vs trained loss (agree.json, MODEL={loss['kind']}): served mean NLL "
                     f"{fmt(loss['served_eval_loss'], 5)} over {loss['tokens']} trained tokens of {loss['rows']} held-out rows, "
                     f"trainer eval_loss {fmt(loss['trained_eval_loss'], 5)}: difference {fmt(loss['difference'], 6)}, "
                     f"tolerance {fmt(loss['tolerance'], 6)} ({loss['tolerance_basis']}): {verdict}.\n")
        if loss.get("first_difference"):
            fd = loss["first_difference"]
            lines.append(f"First differing token: row {fd['row']} position {fd['position']}; trained "
                         f"`{fd['trained']!r}`, served `{fd['served']!r}`.\n")
    am = agree.get("adapter_vs_merged")
    if am:
        if am.get("pending"):
            lines.append("Adapter = merged: not run yet (`make agree` runs it after the merged model's checks).\n")
        elif am.get("skipped"):
            lines.append(f"Adapter = merged: skipped ({am['skipped']}).\n")
        else:
            verdict = "agree" if am["ok"] else red("DISAGREE")
            lines.append(f"Adapter = merged ({am['prompts']} prompts, greedy, {am['how']}): identical token ids (so identical "
                         f"tool calls) in {am['identical']} of {am['prompts']}; max logprob "
                         f"difference {fmt(am['max_logprob_diff'], 6)} (tolerance {fmt(am['tolerance'], 6)}): {verdict}.\n")
    return lines


def section(d: dict, plots) -> list[str]:
    """Markdown lines of the Agreement section (pure)."""
    a = d.get("agreement") or {}
    L = ["## 6. Agreement between training, serving and scoring\n"]
    if not a.get("train"):
        L.append("Fingerprints: the run recorded none (trained before they existed, or training did not finish).\n")
    else:
        L.append("SHA-256 digests (first 12 hex digits) of the chat template, tokenizer and special tokens each stage "
                 "used; serving refuses a template or tokenizer that differs from training's unless "
                 "`serve.allow_template_mismatch=true`.\n")
        L.append(markdown_table(pd.DataFrame(fingerprint_rows(a))))
        if a["train"].get("first_row"):
            L.append(f"Rendered first training row: {_short(a['train']['first_row'])}.\n")
    L += roundtrip_lines(a.get("roundtrip"))
    L += agree_lines(a.get("agree"), a.get("agree_skipped"))
    return L
