"""Evaluate one served model on BFCL: bfcl-eval generates and scores, we tabulate.

    python -m experiments.bfcl --base-url http://127.0.0.1:8000/v1 --model merged \
        --out results/<run_id>/bfcl/merged/api --categories quick [--path native --tokenizer DIR]

Paths (both scored by bfcl-eval's own checker): `api` is bfcl's chat-completions handler against
the server's OpenAI API (the server parses tool calls); `native` is bfcl's local-model flow with
the leaderboard's Qwen2.5 FC handler on /v1/completions (experiments.bfcl.qwen25_fc), which needs
the served model's tokenizer folder (token counts, context length for max_tokens).

`out_dir` becomes bfcl-eval's project root: its own result/ and score/ (with data_*.csv) live
there, next to ours: items.csv, categories.csv, summary.json. Rerunning on the same folder
resumes: bfcl-eval's generate skips ids already in result/.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from experiments.bfcl import audit, spec, tables
from experiments.bfcl.tables import META_FILE
from experiments.core.envs import subprocess_env
from experiments.core.paths import REPO_ROOT
from experiments.core.runs import write_json_atomic, write_text_atomic

JOB_FILE = "bfcl_job.json"
UNCHANGED_IDS = REPO_ROOT / "data" / "bfcl_v3_v4_unchanged_ids.json"  # scripts/bfcl_unchanged_ids.py
LOG_FILE = "bfcl.log"
DEFAULT_NUM_THREADS = 16  # vLLM batches concurrent requests; bfcl's own default is 1 (serial)


class BfclError(RuntimeError):
    pass


def openai_base_url(base_url: str) -> str:
    """The OpenAI client wants the /v1 root."""
    base_url = base_url.rstrip("/")
    return base_url if base_url.endswith("/v1") else f"{base_url}/v1"


def check_server(base_url: str, served_model_name: str, api_key: str | None = None) -> None:
    """Fail fast: otherwise every item would burn its retries and be recorded as an error."""
    request = urllib.request.Request(f"{base_url}/models",
                                     headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            served = [m["id"] for m in json.load(response).get("data", [])]
    except (OSError, ValueError) as exc:
        raise BfclError(f"{base_url}/models: server not reachable ({exc})") from None
    if served_model_name not in served:
        raise BfclError(f"{base_url} does not serve {served_model_name!r}; it serves {served}")


def tokenizer_folder(path: str | Path | None) -> Path:
    """The native path loads the served model's tokenizer and config (bfcl's OSSHandler): fail
    before anything is generated when the folder cannot provide them."""
    if not path:
        raise BfclError("the native path needs the served model's folder for its tokenizer: "
                        "TOKENIZER=<model folder> (bfcl.tokenizer)")
    folder = Path(path).expanduser().resolve()
    missing = [f for f in ("config.json", "tokenizer_config.json") if not (folder / f).is_file()]
    if missing:
        raise BfclError(f"bfcl.tokenizer={path}: {folder} lacks {', '.join(missing)}")
    return folder


def run_bfcl(base_url: str, served_model_name: str, out_dir: str | Path,
             categories: str | Sequence[str] = "quick", *,
             num_threads: int = DEFAULT_NUM_THREADS, quick_per_category: int | None = None,
             seed: int = 0, api_key: str | None = None, temperature: float = 0.0,
             max_retries: int = 5, request_timeout_s: float = 600.0,
             python: str | Path | None = None, path: str = "api", tokenizer_path: str | Path | None = None,
             sampling: dict | None = None, include_input_log: bool = False, server: dict | None = None) -> dict:
    """Generate with bfcl-eval against `base_url` (OpenAI-compatible, tools via chat completions),
    score with bfcl-eval, write our tables and return summary.json's content.

    `categories`: "full", "quick" (quick_per_category seeded ids of each, default
    spec.QUICK_PER_CATEGORY) or a list of bfcl category names (all ids unless
    quick_per_category is given). `python`: interpreter with bfcl-eval (default: this one).
    `path`: "api" or "native" (needs `tokenizer_path`). `sampling`: sent with every request (the
    neutral values of conf/bfcl). `server`: the run's endpoint.json, recorded in the audit trail.
    """
    set_name, category_list, per_category = spec.resolve(categories, quick_per_category)
    if path not in ("api", "native"):
        raise BfclError(f"bfcl.path={path!r}: expected api, native or both")
    if path == "native":
        tokenizer_path = tokenizer_folder(tokenizer_path)
    check_server(openai_base_url(base_url), served_model_name, api_key)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    key = spec.model_key(served_model_name)
    repaired = tables.repair_results(out / "result" / key)
    job = {"model_key": key, "served_model_name": served_model_name, "categories": category_list,
           "per_category": per_category, "seed": seed, "num_threads": num_threads,
           "temperature": temperature, "max_retries": max_retries,
           "base_url": openai_base_url(base_url), "path": path,
           "tokenizer_path": str(tokenizer_path) if tokenizer_path else None,
           "sampling": dict(sampling or {}), "include_input_log": include_input_log}
    write_json_atomic(out / JOB_FILE, job)
    (out / META_FILE).unlink(missing_ok=True)  # never tabulate a previous attempt's meta

    env = subprocess_env({
        "BFCL_PROJECT_ROOT": out,        # bfcl writes result/, score/ and locks here, never site-packages
        "OPENAI_BASE_URL": job["base_url"],
        "OPENAI_API_KEY": api_key or "EMPTY",  # required by the client even for a keyless server
        "BFCL_MAX_RETRIES": max_retries,
        "BFCL_REQUEST_TIMEOUT_S": request_timeout_s,
        "BFCL_SAMPLING": json.dumps(job["sampling"]),
        # bfcl's OSSHandler (native path): the running server, and the folder for its tokenizer
        "REMOTE_OPENAI_BASE_URL": job["base_url"],
        "REMOTE_OPENAI_API_KEY": api_key or "EMPTY",
        "REMOTE_OPENAI_TOKENIZER_PATH": job["tokenizer_path"] or "",
    })
    started = time.monotonic()
    with open(out / LOG_FILE, "ab") as log:
        rc = subprocess.run([str(python or sys.executable), "-m", "experiments.bfcl.worker", str(out / JOB_FILE)],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    if rc != 0 or not (out / META_FILE).exists():
        tail = (out / LOG_FILE).read_text(errors="replace")[-3000:]
        raise BfclError(f"bfcl-eval failed (exit {rc}); log {out / LOG_FILE}:\n{tail}")
    trail = audit.trail(job, server=server, server_version=audit.server_version(job["base_url"], api_key))
    return tabulate(out, set_name=set_name, wall_time_s=wall, repaired=repaired, trail=trail)


def tabulate(out: Path, *, set_name: str, wall_time_s: float, repaired: dict, trail: dict | None = None) -> dict:
    """bfcl-eval's files in `out` -> items.csv, categories.csv, summary.json."""
    job = json.loads((out / JOB_FILE).read_text())
    meta = json.loads((out / META_FILE).read_text())
    key = meta["model_key"]
    results = tables.load_results(out, key)
    headers, failures = tables.load_scores(out, key)
    scored = {i for ids in meta["plan"].values() for i in ids if not spec.is_prereq(i)}
    items = tables.item_rows(results, failures, meta["offered_tools"], scored, text_calls=job.get("path") == "native")
    categories = tables.category_rows(headers, list(meta["plan"]))
    write_text_atomic(out / "items.csv", _csv(items))
    write_text_atomic(out / "categories.csv", _csv(categories))
    summary = tables.build_summary(meta=meta, job=job, set_name=set_name, categories=categories,
                                   items=items, wall_time_s=wall_time_s, repaired=repaired,
                                   prereqs_failed=tables.failed_prereqs(out, key))
    summary["audit"] = {**(trail or {}), "out": str(out), "handler": meta.get("handler"), "data": data_version(meta.get("data"))}
    summary["v3_v4_unchanged"] = {"ids_file": str(UNCHANGED_IDS.relative_to(REPO_ROOT)),
                                  "per_category": tables.matched_accuracy(items, unchanged_ids())}
    write_json_atomic(out / "summary.json", summary)
    return summary


def data_version(data: dict | None) -> dict | None:
    """The worker's data record plus the gorilla data commit its files match (the sha256 list
    recorded with the unchanged-ids file), else "unknown"."""
    if not data or not UNCHANGED_IDS.is_file():
        return data
    v4 = json.loads(UNCHANGED_IDS.read_text())["v4"]
    known = v4["sha256"]
    checked = {k: v for k, v in data["files"].items() if k in known}
    same = bool(checked) and all(known[k] == v for k, v in checked.items())
    return {**data, "data_commit": v4["commit"] if same else "unknown",
            "files_checked_against_commit": len(checked)}


def unchanged_ids() -> dict[str, list[str]] | None:
    if not UNCHANGED_IDS.is_file():
        return None
    return {c: v["ids"] for c, v in json.loads(UNCHANGED_IDS.read_text())["categories"].items()}


def attach_baseline(summary_path: Path, base_summary_path: Path) -> dict:
    """Add the per-column delta to the base model to a fine-tuned run's summary.json."""
    summary = json.loads(Path(summary_path).read_text())
    summary["delta_vs_base"] = tables.baseline_delta(summary, json.loads(Path(base_summary_path).read_text()))
    write_json_atomic(Path(summary_path), summary)
    return summary


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True, help="served model name (the request's `model`)")
    p.add_argument("--out", required=True)
    p.add_argument("--categories", default="quick", help="quick, full, or comma-separated bfcl categories")
    p.add_argument("--num-threads", type=int, default=DEFAULT_NUM_THREADS)
    p.add_argument("--per-category", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--path", choices=("api", "native"), default="api")
    p.add_argument("--tokenizer", default=None, help="native path: the served model's folder")
    p.add_argument("--base-summary", default=None, help="base model's summary.json: add the delta")
    a = p.parse_args(argv)
    summary = run_bfcl(a.base_url, a.model, a.out, a.categories, num_threads=a.num_threads,
                       quick_per_category=a.per_category, seed=a.seed, api_key=a.api_key,
                       temperature=a.temperature, path=a.path, tokenizer_path=a.tokenizer)
    if a.base_summary:
        summary = attach_baseline(Path(a.out) / "summary.json", Path(a.base_summary))
    print(json.dumps({"headline": summary["headline"], "n_items": summary["n_items"],
                      "timings_s": summary["timings_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
