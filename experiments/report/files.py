"""Readers (I/O): everything a report shows is read here, once, into one dict (`gather`)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from experiments.core import runs
from experiments.core.paths import REPO_ROOT
from experiments.train.checkpoints import INDEX, SCORES_DIR
from experiments.report.common import ReportError, norm_name, read_json_or_none, same_value


def load_run(run_dir: Path) -> dict:
    """What a report needs of one run folder: run.json, train_metrics.json, data_report.json, the
    resolved config."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    config = None
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        except yaml.YAMLError:
            config = None
    return {"dir": run_dir, "id": run_dir.name, "info": info,
            "metrics": read_json_or_none(run_dir / "train_metrics.json"),
            "data": read_json_or_none(run_dir / "data" / "data_report.json"), "config": config or {},
            "checkpoints": read_json_or_none(run_dir / SCORES_DIR / INDEX)}


def all_runs(results: Path) -> list[dict]:
    """run.json of every run folder in results/ (oldest first), with its path."""
    return runs.list_runs(results)


BFCL_PATHS = ("api", "native")  # results/<run>/bfcl/<kind>/<path>/summary.json (experiments.bfcl.stage)


def bfcl_summaries(run_dir: Path, kind: str) -> dict[str, dict]:
    """{path: summary} of every scoring path `make eval` wrote for (run, kind)."""
    found = {p: read_json_or_none(Path(run_dir) / "bfcl" / kind / p / "summary.json") for p in BFCL_PATHS}
    return {p: s for p, s in found.items() if s is not None}


def bfcl_summary(run_dir: Path, kind: str) -> dict | None:
    """The summary that stands for (run, kind) where one number is needed (best-run choice,
    environment): the api path's (what a client of the served model sees), else the native one."""
    summaries = bfcl_summaries(run_dir, kind)
    return next((summaries[p] for p in BFCL_PATHS if p in summaries), None)


def bench_outputs(run_dir: Path, kind: str) -> dict | None:
    """The levels of the latest bench of (run, kind): bench/<kind>/latest (one folder per `make
    bench`; a flat bench/<kind>/ of older runs is read as it is), the labels of its sweep.csv, each
    level's summary_<label>.json and the path of its records. A partial bench and any level during
    which the server went away are listed as problems, and such levels are left out."""
    out = Path(run_dir) / "bench" / kind
    if (out / "latest").is_dir():  # one folder per `make bench`: read only the newest
        out = (out / "latest").resolve()
    sweep = out / "sweep.csv"
    if not sweep.is_file():
        return None
    table = pd.read_csv(sweep)
    levels, problems = [], []
    status = read_json_or_none(out / "bench.json")
    if status is not None and status.get("status") != "done":
        problems.append(f"partial bench ({status.get('status')}): {status.get('server_gone') or 'it did not finish'}; "
                        f"levels {[lv for lv in status.get('levels', []) if lv not in status.get('finished', [])]} "
                        "are not reported")
    for row in table.to_dict("records"):
        label = str(row["label"])
        summary = read_json_or_none(out / f"summary_{label}.json")
        if summary is None:
            problems.append(f"sweep.csv lists level {label} but summary_{label}.json is missing")
            continue
        if summary.get("server_gone"):
            problems.append(f"level {label} is left out: the server went away during it ({summary['server_gone']})")
            continue
        started = (row.get("started_unix"), summary.get("started_unix"))
        if None in started or abs(float(started[0]) - float(started[1])) > 1e-3:
            problems.append(f"summary_{label}.json is not the run sweep.csv lists (started_unix differs)")
            continue
        levels.append({"label": label, "summary": summary, "records": out / f"records_{label}.csv"})
    return {"dir": out, "levels": levels, "problems": problems, "capacity": read_json_or_none(out / "capacity.json"),
            "plots": [p for p in (out / "latency.png", out / "throughput.png", out / "server_metrics.png") if p.is_file()]}


def recheck_from_records(level: dict) -> list[str]:
    """Recompute a level's statistics from its records_<label>.csv with the bench's own code and
    list the numbers that differ from summary_<label>.json (empty: the summary is the records')."""
    from experiments.bench import metrics
    from experiments.bench.run import load_records

    path, s = level["records"], level["summary"]
    if not Path(path).is_file():
        return [f"{Path(path).name} missing"]
    again = metrics.summarize(load_records(path), slo_ttft_ms=s["goodput"]["slo"]["ttft_ms"],
                              slo_e2e_ms=s["goodput"]["slo"]["e2e_ms"],
                              target_concurrency=s["concurrency"] if s["mode"] == "closed" else None,
                              offered_rate=s["rate"] if s["mode"] == "open" else None)
    flat_a, flat_b = metrics.flatten(again), metrics.flatten(s)
    return [k for k, v in flat_a.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not same_value(v, flat_b.get(k), rel=1e-6)]


def venv_versions(venv_root: Path, env: str) -> dict[str, str] | None:
    """{package: version} of an environment, from its *.dist-info folders (no interpreter started);
    None when the environment does not exist."""
    root = Path(venv_root) / env
    site = sorted(root.glob("lib/python*/site-packages"))
    if not site:
        return None
    found = {}
    for d in site[0].glob("*.dist-info"):
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        found[norm_name(name)] = version
    cfg = root / "pyvenv.cfg"
    if cfg.is_file():
        m = re.search(r"^version(?:_info)?\s*=\s*(\S+)", cfg.read_text(), re.M)
        if m:
            found["python"] = m.group(1)
    return found


def git_state(repo: Path = REPO_ROOT) -> dict:
    def git(*args):
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def hardware() -> dict:
    """The machine that generates the report (run folders do not record the training machine)."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    gpus = []
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        gpus = [g.strip() for g in proc.stdout.splitlines() if g.strip()] if proc.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        pass
    return {"host": platform.node(), "os": f"{platform.system()} {platform.release()}", "cpu": cpu,
            "cpus": os.cpu_count(), "memory_gib": mem, "gpus": gpus}


def load_anchors(path: Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


def train_finished(info: dict) -> bool:
    return info.get("stages", {}).get("train") == "done"


def select_runs(subject: dict, everything: Sequence[dict], named: Sequence[str] | None) -> tuple[list[str], str]:
    """Run ids of the Training section and the sentence saying how they were chosen.

    subject, everything: run.json dicts (everything as runs.list_runs returns them, oldest first).
    """
    sid = subject["run_id"]
    if named:
        ids = list(dict.fromkeys([*named, sid] if sid not in named else named))
        return ids, "the runs named with `--runs` (`RUNS=`)" + (f" plus `{sid}`" if sid not in named else "")
    comparison = subject.get("comparison")
    if comparison:
        pool = [r for r in everything if r.get("comparison") == comparison]
        rule = f"the latest finished run of each method with comparison id `{comparison}` (`run.comparison`)"
    else:
        key = ("model", "data", "profile")
        pool = [r for r in everything if all(r.get(k) == subject.get(k) for k in key)]
        rule = (f"`{sid}` plus the latest finished run of each other method in results/ with the same model "
                f"(`{subject.get('model')}`), data (`{subject.get('data')}`) and profile (`{subject.get('profile')}`)")
    latest: dict[str, str] = {}
    for r in sorted(pool, key=lambda r: r.get("created", "")):
        if train_finished(r) and r.get("method"):
            latest[r["method"]] = r["run_id"]
    if subject.get("method"):
        latest[subject["method"]] = sid  # the report's own run stands for its method
    return sorted(latest.values(), key=lambda i: (i != sid, i)), rule


def agreement_files(run_dir: Path, info: dict, kind: str) -> dict:
    """Fingerprints every stage recorded, the parser round trip, agree.json (section 6)."""
    run_dir = Path(run_dir)
    stages = {}
    bfcl = bfcl_summary(run_dir, kind)
    if bfcl and bfcl.get("fingerprints"):
        stages[f"eval ({kind})"] = bfcl["fingerprints"]
    bench = sorted((run_dir / "bench" / kind).glob("summary_*.json"))
    fps = [read_json_or_none(p) or {} for p in bench]
    if fps and fps[-1].get("fingerprints"):
        stages[f"bench ({kind})"] = fps[-1]["fingerprints"]
    data_report = read_json_or_none(run_dir / "data" / "data_report.json") or {}
    return {"train": info.get("fingerprints"), "merge": (info.get("merge") or {}).get("fingerprints"),
            "stages": stages, "roundtrip": data_report.get("parser_roundtrip"),
            "agree": read_json_or_none(run_dir / "agree.json"),
            "agree_skipped": (info.get("agree") or {}).get("skipped")}


def gather(cfg: DictConfig, run_dir: Path, named: Sequence[str] | None = None) -> dict:
    """Read every file the report shows into one dict (the only I/O before rendering)."""
    results = Path(cfg.paths.results)
    kind = str(cfg.report.model_kind)
    subject = load_run(run_dir)
    subject["bfcl"] = bfcl_summary(subject["dir"], kind)
    subject["bfcl_paths"] = bfcl_summaries(subject["dir"], kind)
    ids, rule = select_runs(subject["info"], all_runs(results), named)
    rows = []
    for rid in ids:
        path = subject["dir"] if rid == subject["id"] else results / rid
        if not (path / runs.RUN_JSON).is_file():
            raise ReportError(f"--runs: {path} is not a run folder (no {runs.RUN_JSON})")
        r = subject if rid == subject["id"] else load_run(path)
        r["bfcl"] = bfcl_summary(r["dir"], kind)
        r["bench"] = bench_outputs(r["dir"], kind)     # the Pareto points of the Cost section
        r["bfcl_paths"] = bfcl_summaries(r["dir"], kind)
        rows.append(r)
    # The base model's BFCL: the report run's own, else the first compared run that has one.
    base = None
    for r in rows:
        s = bfcl_summary(r["dir"], "base")
        if s is not None:
            base = {"run": r["id"], "summary": s, "by_path": bfcl_summaries(r["dir"], "base")}
            break
    # The run's own base model vs its tuned one (section Learning): held-out prompts and BFCL.
    heldout = {k: read_json_or_none(subject["dir"] / "heldout" / k / "summary.json") for k in ("base", kind)}
    bench = bench_outputs(subject["dir"], kind)
    if bench:
        bench["recheck"] = {lv["label"]: recheck_from_records(lv) for lv in bench["levels"]}
    venv = Path(cfg.paths.venv)
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "results": results, "kind": kind, "subject": subject, "rows": rows, "rule": rule,
        "best_by": str(cfg.report.best_by), "best_goal": str(cfg.report.best_goal),
        "base": base, "heldout": heldout, "subject_bfcl_base": bfcl_summary(subject["dir"], "base"),
        "anchors": load_anchors(Path(str(cfg.report.anchors))),
        "anchors_path": Path(str(cfg.report.anchors)), "bench": bench,
        "cost": OmegaConf.to_container(cfg.cost, resolve=True),
        "serve": {k: int(cfg.serve.get(k, 1) or 1) for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")},
        "versions": {env: venv_versions(venv, env) for env in ("train", "serve", "eval")},
        "git": git_state(), "hardware": hardware(), "named": list(named or []),
        "plots_dir": str(cfg.report.plots_dir), "pareto_metric": str(cfg.report.get("pareto_metric", "Overall_Acc")),
        "agreement": agreement_files(subject["dir"], subject["info"], kind),
    }
