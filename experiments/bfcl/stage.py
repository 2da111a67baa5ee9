"""`make eval [RUN=...] [MODEL=merged|adapter|base] [BFCL=quick|full] [BFCL_PATH=api|native|both] [ENDPOINT=... TOKENIZER=...]`.

Scores a run's served model on BFCL through bfcl-eval's own runner and checker
(experiments.bfcl), into results/<run>/bfcl/<model>/<path>/, one path per scoring flow against
the same server: `api` (the OpenAI chat API, server-side tool-call parsing: what a client of the
deployed model sees) and `native` (bfcl's local-model flow with the leaderboard's Qwen2.5 FC
handler on /v1/completions: how the leaderboard scored the Qwen2.5 rows). One MLflow run per
(training run, model, category set, path). Starts the run's vLLM server if none is up (and
stops it afterwards); ENDPOINT= scores any OpenAI-compatible server instead (the native path
then needs TOKENIZER=<the served model's folder>).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.core import runs
from experiments.serve import server as serving
from experiments.bfcl.heldout import run_heldout
from experiments.bfcl.run import BfclError, attach_baseline, run_bfcl
from experiments.core.cli import run_model_stage
from experiments.core.config import ConfigError
from experiments.tracking.client import Tracker, TrackingError
from experiments.data.heldout import HELDOUT_FILE


PATHS = ("api", "native")


def bfcl_paths(cfg: DictConfig) -> list[str]:
    value = str(cfg.bfcl.get("path", "both"))
    if value == "both":
        return list(PATHS)
    if value not in PATHS:
        raise ConfigError(f"bfcl.path={value!r} (BFCL_PATH=): expected api, native or both")
    return [value]


def out_dir(run_dir: Path, kind: str, path: str = "api") -> Path:
    return Path(run_dir) / "bfcl" / kind / path


def heldout_dir(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / "heldout" / kind


def is_complete(cfg: DictConfig, run_dir: Path, kind: str) -> bool:
    """summary.json of this category set exists and says complete for every configured path:
    every item and memory prerequisite answered, no failed request (and the held-out prompts'
    summary, when the run has a held-out split)."""
    if (Path(run_dir) / "data" / HELDOUT_FILE).exists() and not (heldout_dir(run_dir, kind) / "summary.json").exists():
        return False
    for path in bfcl_paths(cfg):
        file = out_dir(run_dir, kind, path) / "summary.json"
        if not file.exists():
            return False
        s = runs.read_json(file)
        if not (s.get("category_set") == cfg.bfcl.name and s.get("complete") is True):
            return False
    return True


def incomplete(summary: dict, resume: str) -> runs.StageIncomplete | None:
    """What keeps an evaluation from being done, as the error to raise (None when complete)."""
    if summary.get("complete"):
        return None
    counts = {k: summary.get(k, 0) for k in ("n_items", "n_missing", "n_failed_requests", "n_failed_prereqs")}
    planned = counts["n_items"] + counts["n_missing"]
    gone = summary.get("server_unreachable")
    status = "failed" if counts["n_failed_requests"] + counts["n_missing"] >= planned else "partial"
    msg = (f"BFCL {summary.get('category_set')} incomplete: {counts['n_failed_requests']} of {planned} items failed "
           f"their request, {counts['n_missing']} missing, {counts['n_failed_prereqs']} memory prerequisites failed"
           + (f" ({gone})" if gone else "") + f"; those items count as wrong in the partial scores. "
           f"Resume (retries only what failed): {resume}")
    return runs.StageIncomplete(msg, status, counts)


def resume_command(cfg: DictConfig, run_id: str, kind: str, endpoint_url: str | None, path: str = "api") -> str:
    return (f"make eval RUN={run_id} MODEL={kind} BFCL={cfg.bfcl.name} BFCL_PATH={path}"
            + (f" ENDPOINT={endpoint_url}" if endpoint_url else "")
            + (f" TOKENIZER={cfg.bfcl.tokenizer}" if cfg.bfcl.get("tokenizer") else ""))


def ask_heldout(cfg: DictConfig, run_dir: Path, kind: str, ep: serving.Endpoint) -> dict | None:
    """The run's held-out prompts (never trained on) asked of the served model, if it has them."""
    path = Path(run_dir) / "data" / HELDOUT_FILE
    if not path.exists():
        return None
    out = heldout_dir(run_dir, kind)
    print(f"[eval] held-out prompts {path} -> {out}", flush=True)
    s = run_heldout(ep.base_url, ep.model, path, out, max_tokens=int(cfg.bfcl.heldout_max_tokens),
                    concurrency=int(cfg.bfcl.heldout_concurrency), api_key=ep.api_key)
    print(f"[eval] held-out: {s['parsed']}/{s['call_rows']} parsed calls, {s['right_function']} right function, "
          f"{s['exact_arguments']} exact arguments; {s['text_rows_no_call']}/{s['text_rows']} text answers without a call")
    return s


def mlflow_metrics(summary: dict) -> dict[str, float]:
    """Leaderboard columns, per-category accuracy and error counts as flat MLflow metric names."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9_./ -]", "", s).strip().replace(" ", "_")  # noqa: E731
    out = {f"bfcl/{clean(k)}": v for k, v in summary["leaderboard"].items() if isinstance(v, (int, float))}
    out.update({f"bfcl_cat/{c}": v["accuracy"] for c, v in summary["per_category"].items()})
    errors = summary["errors"]
    out.update({f"bfcl_err/{k}": v for k, v in errors["by_bucket"].items()})
    out["bfcl_err/hallucinated_function_items"] = errors["hallucinated_functions"]["items"]
    out.update({"bfcl/n_items": summary["n_items"], "bfcl/wall_s": summary["timings_s"]["wall"]})
    return out


def served_record(run_dir: Path, kind: str, endpoint_url: str | None) -> dict | None:
    """The run's endpoint.json (argv, model folder, log) when we serve it; None for ENDPOINT=."""
    path = serving.serve_dir(run_dir, kind) / "endpoint.json"
    return None if endpoint_url or not path.exists() else runs.read_json(path)


def tokenizer_for(cfg: DictConfig, run_dir: Path, kind: str, server: dict | None, external: bool) -> str | None:
    """TOKENIZER= if given, else the folder the run's server loaded (base model for an adapter).
    ENDPOINT= serves a model we know nothing about: only TOKENIZER= can name its folder."""
    if cfg.bfcl.get("tokenizer"):
        return str(cfg.bfcl.tokenizer)
    if external:
        return None
    if server and server.get("model_path"):
        return server["model_path"]
    return serving.what_to_serve(run_dir, kind)[0]


def evaluate(cfg: DictConfig, run_dir: Path, kind: str, endpoint: serving.Endpoint | None = None,
             endpoint_url: str | None = None) -> dict:
    """Every configured path against one server; returns {path: summary}."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    paths = bfcl_paths(cfg)
    if endpoint_url and endpoint is None:  # unreachable or refused: one line, before any MLflow run
        serving.first_model(endpoint_url, os.environ.get(str(cfg.serve.api_key_env)) or None)
    stage = f"eval_{kind if not endpoint_url else 'external'}"
    return runs.run_stage(run_dir, stage, lambda: _evaluate(cfg, run_dir, kind, info, paths, endpoint, endpoint_url))


def _evaluate(cfg, run_dir, kind, info, paths, endpoint, endpoint_url) -> dict:
    summaries, errors = {}, []
    with (serving.server_for(cfg, run_dir, kind, endpoint_url) if endpoint is None
          else contextlib.nullcontext(endpoint)) as ep:
        server = served_record(run_dir, kind, endpoint_url)
        tokenizer = tokenizer_for(cfg, run_dir, kind, server, bool(endpoint_url)) if "native" in paths else None
        held = ask_heldout(cfg, run_dir, kind, ep) if not endpoint_url else None
        for i, path in enumerate(paths):
            try:  # the held-out counts go into the first path's MLflow run
                summaries[path] = _evaluate_path(cfg, run_dir, info, kind, path, ep, server, tokenizer, endpoint_url,
                                                 held if i == 0 else None)
            except runs.StageIncomplete as exc:  # score the other path too, then say so
                errors.append(exc)
    if errors:
        raise errors[0]
    return summaries


def _evaluate_path(cfg, run_dir: Path, info: dict, kind: str, path: str, ep: serving.Endpoint,
                   server: dict | None, tokenizer: str | None, endpoint_url: str | None, held: dict | None) -> dict:
    out = out_dir(run_dir, kind if not endpoint_url else "external", path)
    bfcl = cfg.bfcl
    temperature = float(bfcl.native.temperature if path == "native" else bfcl.temperature)
    sampling = OmegaConf.to_container(bfcl.sampling, resolve=True) if bfcl.get("sampling") else {}
    tracker = Tracker(cfg.tracking, run_name=f"eval/{info['run_id']}/{kind}/{bfcl.name}/{path}", tags={
        "stage": "eval", "training_run": info["run_id"], "model_kind": kind, "bfcl_set": bfcl.name,
        "bfcl_path": path, "method": info.get("method"), "model": info.get("model"),
        "profile": cfg.profile.name, "comparison": info.get("comparison")})
    with tracker:
        tracker.log_params({"bfcl_set": bfcl.name, "bfcl_path": path, "num_threads": bfcl.num_threads,
                            "temperature": temperature, "quick_per_category": bfcl.quick_per_category})
        print(f"[eval] BFCL {bfcl.name} ({path}) on {ep.base_url} model={ep.model} -> {out}", flush=True)
        run_bfcl(ep.base_url, ep.model, out, bfcl.categories, num_threads=int(bfcl.num_threads),
                 quick_per_category=bfcl.quick_per_category, seed=int(bfcl.get("seed", 0)),
                 api_key=ep.api_key, temperature=temperature, path=path, tokenizer_path=tokenizer,
                 sampling=sampling, include_input_log=bool(bfcl.get("include_input_log", False)), server=server)
        summary = {**runs.read_json(out / "summary.json"), "fingerprints": serving.served_fingerprints(run_dir, ep.kind)}
        runs.write_json_atomic(out / "summary.json", summary)
        base_summary = out_dir(run_dir, "base", path) / "summary.json"
        if kind != "base" and base_summary.exists() and runs.read_json(base_summary).get("category_set") == bfcl.name:
            summary = attach_baseline(out / "summary.json", base_summary)
        tracker.log_metrics({**mlflow_metrics(summary), "bfcl/n_failed_prereqs": summary["n_failed_prereqs"],
                             "bfcl/n_failed_requests": summary["n_failed_requests"]})
        if held:
            tracker.log_metrics({f"heldout/{k}": v for k, v in held.items() if isinstance(v, (int, float))})
        tracker.log_artifacts([out / "summary.json", out / "categories.csv", out / "items.csv"])
        head = summary["headline"]
        print(f"[eval] {out / 'summary.json'}: " + ", ".join(f"{k}={v}" for k, v in head.items()))
        error = incomplete(summary, resume_command(cfg, info["run_id"], kind, endpoint_url, path))
        if error is not None:
            tracker.set_tags({"incomplete": error.status})
            raise error  # the tracker ends the MLflow run FAILED
    return summary


def main(argv=None) -> int:
    return run_model_stage("eval", "BFCL evaluation of a run's served model", evaluate, (ConfigError, runs.RunError, runs.StageIncomplete, serving.ServeError, BfclError, TrackingError, FileNotFoundError), argv)


if __name__ == "__main__":
    sys.exit(main())
