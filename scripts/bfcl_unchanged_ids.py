"""Derive data/bfcl_v3_v4_unchanged_ids.json: the single-turn BFCL items identical in v3 and v4.

    .venv/eval/bin/python scripts/bfcl_unchanged_ids.py --gorilla-git <gorilla .git dir> [--out FILE]

v3: the data at gorilla checkpoint f810631 (the checkpoint whose board, gh-pages 540986f2 of
2025-03-18, carries the Qwen2.5-7B-Instruct and ToolACE-8B rows), read with `git show` from a
clone of ShishirPatil/gorilla. v4: bfcl-eval's packaged data (2026.3.23 ships data commit
f7cf735: every file's sha256 is recorded, so a different release is noticed). An item counts
as unchanged when its question, its function docs and its ground truth are equal after
mapping v3 ids to v4 ids (simple_N -> simple_python_N, java_N -> simple_java_N,
javascript_N -> simple_javascript_N). Irrelevance categories have no ground truth: question
and functions only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

V3_COMMIT = "f8106312357d2e687a905610fe972b64482ab8e2"
V4_COMMIT = "f7cf7359b7ac615a0b294831c5ba2bc95ee4a000"
V3_ROOT = "berkeley-function-call-leaderboard/data"
V3_NAME = {"simple_python": "simple", "simple_java": "java", "simple_javascript": "javascript"}
NO_ANSWER = ("irrelevance", "live_irrelevance", "live_relevance")


def _git_show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def v4_id(v3_id: str) -> str:
    head, _, rest = v3_id.partition("_")
    mapped = {"simple": "simple_python", "java": "simple_java", "javascript": "simple_javascript"}
    return f"{mapped[head]}_{rest}" if head in mapped else v3_id


def unchanged(v3_items: list[dict], v3_truth: dict, v4_items: list[dict], v4_truth: dict) -> list[str]:
    """Pure: v4 ids whose question, functions and ground truth equal v3's."""
    old = {v4_id(e["id"]): e for e in v3_items}
    same = []
    for e in v4_items:
        o = old.get(e["id"])
        if o and o["question"] == e["question"] and o["function"] == e["function"] \
                and v3_truth.get(o["id"]) == v4_truth.get(e["id"]):
            same.append(e["id"])
    return same


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gorilla-git", required=True, help="git dir of a ShishirPatil/gorilla clone holding both commits")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "bfcl_v3_v4_unchanged_ids.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ids-"))
    from importlib.metadata import version

    from bfcl_eval.constants.eval_config import POSSIBLE_ANSWER_PATH, PROMPT_PATH

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from experiments.bfcl import spec

    categories, files = {}, {}
    for category in spec.NON_LIVE + spec.LIVE:
        name = V3_NAME.get(category, category)
        v3 = _jsonl(_git_show(a.gorilla_git, V3_COMMIT, f"{V3_ROOT}/BFCL_v3_{name}.json"))
        q4 = PROMPT_PATH / f"BFCL_v4_{category}.json"
        v4 = _jsonl(q4.read_text())
        files[f"question/{q4.name}"] = hashlib.sha256(q4.read_bytes()).hexdigest()
        t3 = t4 = {}
        if category not in NO_ANSWER:
            t3 = {g["id"]: g["ground_truth"] for g in _jsonl(_git_show(
                a.gorilla_git, V3_COMMIT, f"{V3_ROOT}/possible_answer/BFCL_v3_{name}.json"))}
            a4 = POSSIBLE_ANSWER_PATH / f"BFCL_v4_{category}.json"
            t4 = {g["id"]: g["ground_truth"] for g in _jsonl(a4.read_text())}
            files[f"answer/{a4.name}"] = hashlib.sha256(a4.read_bytes()).hexdigest()
        ids = unchanged(v3, t3, v4, t4)
        categories[category] = {"v3_items": len(v3), "v4_items": len(v4), "unchanged": len(ids), "ids": ids}
    # The packaged v4 files must be the leaderboard's data commit, byte for byte.
    for key in files:
        folder = "possible_answer/" if key.startswith("answer/") else ""
        text = _git_show(a.gorilla_git, V4_COMMIT, f"berkeley-function-call-leaderboard/bfcl_eval/data/{folder}{key.split('/', 1)[1]}")
        if hashlib.sha256(text.encode()).hexdigest() != files[key]:
            raise SystemExit(f"{key}: bfcl-eval's packaged file differs from gorilla {V4_COMMIT[:7]}")
    out = {
        "what": "single-turn BFCL item ids (v4 spelling) whose question, function docs and ground truth "
                "are identical in v3 and v4",
        "v3": {"source": f"ShishirPatil/gorilla {V3_COMMIT} {V3_ROOT}/BFCL_v3_*.json (+ possible_answer/)",
               "board": "gh-pages 540986f2 (2025-03-18, 'Checkpoint f810631')"},
        "v4": {"source": f"bfcl-eval {version('bfcl-eval')} packaged data, byte-identical to gorilla {V4_COMMIT} "
                         "berkeley-function-call-leaderboard/bfcl_eval/data/ (board: gh-pages ea03bc8 of 2025-12-16)",
               "commit": V4_COMMIT[:7], "sha256": files},
        "derived_by": "scripts/bfcl_unchanged_ids.py",
        "categories": categories,
    }
    tmp = Path(a.out).with_name(f".{Path(a.out).name}.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(a.out)
    print({c: f"{v['unchanged']}/{v['v4_items']}" for c, v in categories.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
