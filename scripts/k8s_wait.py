#!/usr/bin/env python
"""Init-container helper of the `make k8s` manifests: block until the previous stage is done.

    k8s_wait.py --stage /data/results/<run_id> train   # run.json says stages.train == done
    k8s_wait.py --url http://<run>-vllm:8000/health     # the server answers 200

Exit 0 when ready, 1 when the stage failed (no point waiting), 2 on timeout. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def stage_state(run_dir: Path, stage: str) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("stages", {}).get(stage)
    except (OSError, ValueError):
        return None  # not written yet (or mid-write on a network filesystem): keep waiting


def url_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", nargs=2, metavar=("RUN_DIR", "STAGE"))
    ap.add_argument("--url")
    ap.add_argument("--timeout", type=float, default=86400)
    ap.add_argument("--interval", type=float, default=15)
    a = ap.parse_args(argv)
    if not (a.stage or a.url):
        ap.error("give --stage RUN_DIR STAGE or --url URL")
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        if a.stage:
            state = stage_state(Path(a.stage[0]), a.stage[1])
            if state == "done":
                print(f"[wait] {a.stage[0]}: {a.stage[1]} done", flush=True)
                return 0
            if state == "failed":
                print(f"[wait] {a.stage[0]}: {a.stage[1]} failed", file=sys.stderr)
                return 1
        elif url_ok(a.url):
            print(f"[wait] {a.url} answers", flush=True)
            return 0
        time.sleep(a.interval)
    print(f"[wait] timed out after {a.timeout:.0f} s", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
