"""Benchmark (not a test): a BFCL eval at our default concurrency vs bfcl-eval's serial default.

    python scripts/bfcl_concurrency_bench.py --base-url http://127.0.0.1:8000/v1 --model merged \
        [--categories quick] [--threads 16] [--out DIR]

Same server, same items, fresh result folders (bfcl-eval skips ids already generated, so a
reused folder would time nothing). An untimed warm-up run first fills the server's prefix
cache, so neither timed run gets it for free. Prints wall and generation times, the speed-up,
and whether the verdicts (valid, error type per item) are identical; exits 1 if they are not.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bfcl import run_bfcl  # noqa: E402
from experiments.bfcl.run import DEFAULT_NUM_THREADS  # noqa: E402
from experiments.core.runs import write_json_atomic  # noqa: E402


def verdicts(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "items.csv") as f:
        return {r["id"]: (r["valid"], r["error_type"]) for r in csv.DictReader(f)}


def raw_outputs(out: Path) -> dict[str, str]:
    with open(out / "items.csv") as f:
        return {r["id"]: r["raw_output"] for r in csv.DictReader(f)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--categories", default="quick")
    p.add_argument("--per-category", type=int, default=None)
    p.add_argument("--threads", type=int, default=DEFAULT_NUM_THREADS)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--out", default=None, help="working folder (default: a new temp folder)")
    a = p.parse_args(argv)

    work = Path(a.out or tempfile.mkdtemp(prefix="bfcl-bench-"))
    common = dict(categories=a.categories, quick_per_category=a.per_category)

    def fresh_run(label: str, threads: int) -> dict:
        out = work / label
        shutil.rmtree(out, ignore_errors=True)
        return run_bfcl(a.base_url, a.model, out, num_threads=threads, **common)

    if not a.no_warmup:
        fresh_run("warmup", a.threads)
    timed = {"concurrent": (a.threads, fresh_run("concurrent", a.threads)),
             "serial": (1, fresh_run("serial", 1))}

    same = verdicts(work / "concurrent") == verdicts(work / "serial")
    raw_c, raw_s = raw_outputs(work / "concurrent"), raw_outputs(work / "serial")
    raw_same = sum(raw_c[i] == raw_s.get(i) for i in raw_c) / max(len(raw_c), 1)
    report = {
        "model": a.model, "categories": a.categories, "items": timed["serial"][1]["n_items"],
        "runs": {label: {"threads": n, **{k: round(v, 2) for k, v in s["timings_s"].items()}}
                 for label, (n, s) in timed.items()},
        "speedup_generate": timed["serial"][1]["timings_s"]["generate"] / timed["concurrent"][1]["timings_s"]["generate"],
        "speedup_wall": timed["serial"][1]["timings_s"]["wall"] / timed["concurrent"][1]["timings_s"]["wall"],
        "verdicts_identical": same,
        "raw_outputs_identical_fraction": raw_same,
    }
    write_json_atomic(work / "bench.json", report)

    print(f"BFCL {a.categories}: {report['items']} items, model {a.model}, folder {work}")
    print(f"{'run':<12}{'threads':>8}{'generate s':>12}{'evaluate s':>12}{'wall s':>10}")
    for label, r in report["runs"].items():
        print(f"{label:<12}{r['threads']:>8}{r['generate']:>12.1f}{r['evaluate']:>12.1f}{r['wall']:>10.1f}")
    print(f"speed-up: generation {report['speedup_generate']:.1f}x, wall {report['speedup_wall']:.1f}x")
    print(f"verdicts identical: {same}; raw outputs identical: {raw_same:.0%}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
