"""`make agree [RUN=...] [MODEL=merged]`: the served model scores the run's held-out rows like the
trainer did, and (LoRA/QLoRA) the adapter served unmerged answers like the merged model.

1. Served loss = trained loss. The rows Axolotl evaluated on (adapter/eval_split.json, written by the
   run recorder plugin: token ids, labels, the train.jsonl line of each, the eval batches) are rendered
   by the server's own chat template with their tools (`/tokenize`); every token sequence must equal
   Axolotl's (else: the first differing row, position and both decoded contexts). Then the prompt
   log-probabilities (`/v1/completions`, echo) over exactly Axolotl's trained tokens give the trainer's
   eval loss again (experiments.agree.loss), which must match train_metrics' within the stated tolerance.
2. Adapter = merged: experiments.agree.adapter.

Writes results/<run>/agree.json, logs an MLflow run, raises AgreeError when a check fails.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig

from experiments.agree import adapter
from experiments.agree import loss as L
from experiments.agree import served
from experiments.core import runs
from experiments.core.cli import run_model_stage
from experiments.core.config import ConfigError
from experiments.serve import server as serving
from experiments.tracking.client import Tracker, TrackingError

EVAL_SPLIT = "eval_split.json"  # written by experiments.train.axolotl_plugins into adapter/
AGREE = "agree.json"


class AgreeError(RuntimeError):
    """Training and serving disagree; the message says where."""


def is_complete(run_dir: Path, kind: str) -> bool:
    """agree.json of this model kind exists and its checks passed."""
    path = Path(run_dir) / AGREE
    if not path.is_file():
        return False
    result = runs.read_json(path)
    return result.get("loss", {}).get("kind") == kind and agreed(result)


def train_dtype(ax: dict) -> str:
    if ax.get("bf16") in (True, "auto", "true"):
        return "bfloat16"
    return "float16" if ax.get("fp16") in (True, "true") else "float32"


def load_split(run_dir: Path) -> dict:
    path = Path(run_dir) / "adapter" / EVAL_SPLIT
    if not path.is_file():
        raise AgreeError(f"{path}: missing; the run's training recorded no eval split "
                         "(trained before `make agree` existed, or axolotl.val_set_size=0)")
    return runs.read_json(path)


def compare_tokens(ep, split: dict, lines: list[str], chat_template: str | None = None) -> tuple[dict, dict | None]:
    """({eval index: server token ids}, the first difference or None)."""
    tokens, first = {}, None
    for row in split["rows"]:
        if row["line"] is None:
            raise AgreeError(f"eval row {row['index']}: its text matches no line of data/train.jsonl or data/heldout.jsonl")
        ids = served.tokenize_chat(ep, json.loads(lines[row["line"]]), chat_template)
        tokens[row["index"]] = ids
        pos = L.first_difference(row["input_ids"], ids)
        if pos is not None and first is None:
            lo, a, b = max(0, pos - L.CONTEXT), row["input_ids"], ids
            first = {"row": row["index"], "line": row["line"], "position": pos,
                     "trained_len": len(a), "served_len": len(b),
                     "trained": served.detokenize(ep, a[lo: pos + L.CONTEXT]),
                     "served": served.detokenize(ep, b[lo: pos + L.CONTEXT]),
                     "trained_token": a[pos] if pos < len(a) else None, "served_token": b[pos] if pos < len(b) else None}
    return tokens, first


def data_lines(run_dir: Path) -> list[str]:
    """data/train.jsonl then data/heldout.jsonl (Axolotl evaluates on the held-out split when the
    run has one): the lines an eval row's text is looked up in."""
    files = [run_dir / "data" / "train.jsonl", run_dir / "data" / "heldout.jsonl"]
    return [line for f in files if f.is_file() for line in f.read_text().splitlines()]


def check_loss(cfg: DictConfig, run_dir: Path, kind: str, ep, chat_template: str | None = None) -> dict:
    """Check 1 (see the module doc) -> agree.json's `loss` part; never raises on a disagreement."""
    split = load_split(run_dir)
    metrics = runs.read_json(run_dir / "train_metrics.json")
    lines = data_lines(run_dir)
    ax = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    start = time.time()
    tokens, first = compare_tokens(ep, split, lines, chat_template)
    trained, basis_ref = L.reference_loss(split, metrics)
    tdt = train_dtype(ax)
    sdt = served.served_dtype(_endpoint_json(run_dir, kind), str(cfg.serve.dtype))
    tol, basis = L.tolerance(trained, tdt, sdt)
    out = {"kind": kind, "rows": len(split["rows"]), "eval_lines": [r["line"] for r in split["rows"]],
           "trained_eval_loss": trained, "reference": basis_ref, "tolerance": tol, "tolerance_basis": basis,
           "train_dtype": tdt, "served_dtype": sdt, "sample_packing": split.get("sample_packing"),
           "roles_to_train": (ax.get("datasets") or [{}])[0].get("roles_to_train"),
           "train_on_eos": (ax.get("datasets") or [{}])[0].get("train_on_eos"),
           "first_difference": first, "served_eval_loss": None, "difference": None, "tokens": None}
    if first is None:
        per_row = {r["index"]: L.row_nll(served.prompt_logprobs(ep, r["input_ids"]), r["labels"]) for r in split["rows"]}
        out["served_eval_loss"] = L.trainer_eval_loss(split["batches"], per_row)
        out["difference"] = out["served_eval_loss"] - trained
        out["tokens"] = sum(n for _, n in per_row.values())
        out["token_mean_nll"] = sum(s for s, _ in per_row.values()) / max(out["tokens"], 1)
    out["ok"] = first is None and abs(out["difference"]) <= tol
    out["wall_s"] = round(time.time() - start, 2)
    return out


def _endpoint_json(run_dir: Path, kind: str) -> dict | None:
    path = serving.serve_dir(run_dir, kind) / "endpoint.json" if kind in serving.MODEL_KINDS else None
    return runs.read_json(path) if path is not None and path.exists() else None


def explain(result: dict) -> str:
    """One message for a failed loss check: the numbers, or the first differing token."""
    fd = result.get("first_difference")
    if fd:
        return (f"the server's chat template renders eval row {fd['row']} (data/train.jsonl line {fd['line']}) into "
                f"other tokens than Axolotl trained on: first difference at token {fd['position']} (trained id "
                f"{fd['trained_token']}, served id {fd['served_token']}; lengths {fd['trained_len']} vs {fd['served_len']})\n"
                f"  trained: {fd['trained']!r}\n  served:  {fd['served']!r}")
    return (f"served eval loss {result['served_eval_loss']:.6f} vs trainer {result['trained_eval_loss']:.6f} "
            f"({result['reference']}): |difference| {abs(result['difference']):.6f} > tolerance {result['tolerance']:.6f} "
            f"({result['tolerance_basis']})")


def agree(cfg: DictConfig, run_dir: Path, kind: str, endpoint: serving.Endpoint | None = None,
          endpoint_url: str | None = None, adapter_now: bool = True) -> dict:
    """Both checks; with adapter_now=False (make all, whose merged server is still up) the adapter
    server is left to `finish_adapter`, so two servers never run at once."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    tracker = Tracker(cfg.tracking, run_name=f"agree/{info['run_id']}/{kind}", tags={
        "stage": "agree", "training_run": info["run_id"], "model_kind": kind, "method": info.get("method"),
        "model": info.get("model"), "profile": cfg.profile.name, "comparison": info.get("comparison")})
    with tracker:
        skip = adapter.applies(run_dir, kind) if not endpoint_url else "external endpoint"
        ctx = serving.server_for(cfg, run_dir, kind, endpoint_url) if endpoint is None else contextlib.nullcontext(endpoint)
        with ctx as ep:
            print(f"[agree] served loss vs trained loss on {ep.base_url} model={ep.model}", flush=True)
            result = {"loss": check_loss(cfg, run_dir, kind, ep),
                      "adapter_vs_merged": {"skipped": skip} if skip else {"pending": True}}
            if not skip and not adapter.is_dora(run_dir):  # DoRA compares in the train env instead
                adapter.save_merged_side(run_dir, adapter.merged_side(cfg, run_dir, ep))
        runs.write_json_atomic(run_dir / AGREE, result)
        _log(tracker, result, run_dir)
        if not result["loss"]["ok"]:
            runs.update_run_json(run_dir, stages={"agree": "failed"})
            raise AgreeError(explain(result["loss"]) + f" (details: {run_dir / AGREE})")
        print(f"[agree] served eval loss {result['loss']['served_eval_loss']:.6f} = trainer "
              f"{result['loss']['trained_eval_loss']:.6f} (difference {result['loss']['difference']:+.2e}, tolerance "
              f"{result['loss']['tolerance']:.2e}); {run_dir / AGREE}", flush=True)
    return finish_adapter(cfg, run_dir) if adapter_now else result


def finish_adapter(cfg: DictConfig, run_dir: Path) -> dict:
    """Adapter = merged on the merged side saved by `agree` (starts and stops one adapter server)."""
    result = runs.read_json(Path(run_dir) / AGREE)
    if result["adapter_vs_merged"].get("pending"):
        side = Path(run_dir) / "agree_merged_side.json"
        merged = None if adapter.is_dora(run_dir) else runs.read_json(side)
        print(f"[agree] adapter = merged: {cfg.agree.prompts} prompts, greedy", flush=True)
        result["adapter_vs_merged"] = adapter.check(cfg, run_dir, merged, result["loss"]["train_dtype"],
                                                     result["loss"].get("served_dtype", "unknown"))
        runs.write_json_atomic(Path(run_dir) / AGREE, result)
    runs.update_run_json(run_dir, stages={"agree": "done" if agreed(result) else "failed"})
    problems = problems_of(result)
    if problems:
        raise AgreeError("; ".join(problems) + f" (details: {Path(run_dir) / AGREE})")
    am = result["adapter_vs_merged"]
    if not am.get("skipped") and not am.get("ok"):  # 16-bit sides: recorded (adapter.check says why)
        print(f"[agree] warning (16-bit, recorded, not gating): adapter != merged: {am.get('why')}", file=sys.stderr, flush=True)
    print("[agree] adapter = merged: " + (f"skipped ({am['skipped']})" if am.get("skipped") else
          f"{am['identical']}/{am['prompts']} identical, max logprob difference {am['max_logprob_diff']:.2e} "
          f"(tolerance {am['tolerance']:g})"), flush=True)
    return result


def _log(tracker, result: dict, run_dir: Path) -> None:
    loss = result["loss"]
    tracker.log_metrics({k: v for k, v in {"agree/served_eval_loss": loss["served_eval_loss"],
                                           "agree/trained_eval_loss": loss["trained_eval_loss"],
                                           "agree/difference": loss["difference"], "agree/tolerance": loss["tolerance"],
                                           "agree/loss_ok": float(loss["ok"])}.items() if v is not None})
    tracker.log_artifacts([run_dir / AGREE])


def agreed(result: dict) -> bool:
    return not problems_of(result)


def problems_of(result: dict) -> list[str]:
    out = [] if result["loss"]["ok"] else [explain(result["loss"])]
    am = result.get("adapter_vs_merged") or {}
    if am.get("pending"):
        out.append("adapter = merged has not run")
    elif am.get("gating") and not am.get("ok") and not am.get("skipped"):  # float32 sides (adapter.check)
        out.append(f"adapter != merged: {am.get('why')}")
    return out


def main(argv=None) -> int:
    return run_model_stage("agree", "Served loss = trained loss, adapter = merged", agree,
                           (ConfigError, runs.RunError, serving.ServeError, AgreeError, TrackingError,
                            served.ServedError, FileNotFoundError, ValueError), argv)


if __name__ == "__main__":
    sys.exit(main())
