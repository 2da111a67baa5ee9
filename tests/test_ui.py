"""The MLflow UI as a user looks at it: `experiments.tracking.ui.start_ui` (what `make ui` runs) over the
session's tracking store; MLflow's REST API must hold every run of the comparison in one experiment,
tagged so the compare view lines them up, with the key metrics equal to the run folders; and headless
Chromium must render the runs table and the compare view with those runs in them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import SESSION_COMPARISON, free_port, read_json
from experiments.tracking.ui import start_ui

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless Chromium as root on a closed network (see docs: without the background-networking
# flags it keeps trying to phone home).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000", "--window-size=1600,3000"]
TAGS = ("stage", "method", "model", "comparison", "training_run")
FINAL_METRICS = ("final_train_loss", "final_eval_loss", "steps", "wall_time_s", "tokens_per_s", "trainable_params")


@pytest.fixture(scope="module")
def compared(trained_run):
    """Two runs of the session's comparison (trained_run gives every training its id)."""
    return [trained_run("qlora"), trained_run("dora")]


@pytest.fixture(scope="module")
def ui(compared, tmp_path_factory):
    info = read_json(compared[0] / "run.json")["mlflow"]
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui") / "mlflow-ui.log"
    with open(log_path, "w") as log:
        proc = start_ui(info["tracking_uri"], port=port, log=log)
    try:
        yield {"base": f"http://127.0.0.1:{port}", "experiment": info["experiment"], "log": log_path}
    finally:  # the server runs in its own session: stop the whole group, wait for every child
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def api(ui, path: str, body: dict | None = None) -> dict:
    url = ui["base"] + "/api/2.0/mlflow/" + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def tags_of(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics_of(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


@pytest.fixture(scope="module")
def comparison_runs(ui):
    exp = api(ui, f"experiments/get-by-name?experiment_name={urllib.parse.quote(ui['experiment'])}")["experiment"]
    found = api(ui, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000,
                                    "filter": f"tags.comparison = '{SESSION_COMPARISON}'"})["runs"]
    return exp, found


def render(ui, fragment: str, tmp_path: Path) -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `apt-get update && apt-get install -y chromium` (.ci/run does it)")
    profile = tmp_path / f"chromium-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           f"{ui['base']}/{fragment}"], capture_output=True, text=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_comparison_run_is_in_one_experiment_with_its_tags(ui, compared, comparison_runs):
    exp, found = comparison_runs
    # the same filter over every experiment finds nothing elsewhere
    all_ids = [e["experiment_id"] for e in api(ui, "experiments/search", {"max_results": 1000})["experiments"]]
    everywhere = api(ui, "runs/search", {"experiment_ids": all_ids, "max_results": 1000,
                                         "filter": f"tags.comparison = '{SESSION_COMPARISON}'"})["runs"]
    assert {r["info"]["run_id"] for r in everywhere} == {r["info"]["run_id"] for r in found}
    assert {r["info"]["experiment_id"] for r in found} == {exp["experiment_id"]}
    for run in found:  # train, and eval/bench when this session made them: all tagged alike
        tags = tags_of(run)
        assert all(tags.get(t) for t in TAGS), tags
        assert tags["stage"] in ("train", "eval", "bench", "agree")
    for run_dir in compared:
        info = read_json(run_dir / "run.json")
        train = [r for r in found if tags_of(r)["stage"] == "train" and tags_of(r)["training_run"] == run_dir.name]
        assert len(train) == 1, run_dir.name
        tags = tags_of(train[0])
        assert (tags["method"], tags["model"], tags["comparison"]) == (info["method"], info["model"], SESSION_COMPARISON)
        assert train[0]["info"]["run_id"] == info["mlflow"]["train_run_id"]
        assert train[0]["info"]["status"] == "FINISHED"


def test_key_metrics_equal_the_run_folders(ui, compared, comparison_runs):
    _, found = comparison_runs
    for run_dir in compared:
        m = read_json(run_dir / "train_metrics.json")
        mlrun = next(r for r in found if tags_of(r)["stage"] == "train" and tags_of(r)["training_run"] == run_dir.name)
        logged = metrics_of(mlrun)
        for key in FINAL_METRICS:
            assert logged[f"final/{key}"] == pytest.approx(m[key]), key
        history = api(ui, f"metrics/get-history?run_id={mlrun['info']['run_id']}&metric_key=loss&max_results=1000")["metrics"]
        assert [h["value"] for h in sorted(history, key=lambda h: h["step"])] == pytest.approx([v for _, v in m["loss_curve"]])


def test_the_browser_shows_the_runs_table_and_the_compare_view(ui, comparison_runs, tmp_path):
    exp, found = comparison_runs
    eid = exp["experiment_id"]
    names = {r["info"]["run_id"]: r["info"]["run_name"] for r in found}
    flt = urllib.parse.quote(f"tags.comparison = '{SESSION_COMPARISON}'")
    dom = render(ui, f"#/experiments/{eid}/runs?searchFilter={flt}", tmp_path)
    for run_id, name in names.items():  # each run is a row: its link and its name
        assert f'href="#/experiments/{eid}/runs/{run_id}"' in dom, name
        assert f">{name}<" in dom, name
    train_ids = [r["info"]["run_id"] for r in found if tags_of(r)["stage"] == "train"]
    q = urllib.parse.quote
    dom = render(ui, f"#/compare-runs?runs={q(json.dumps(train_ids))}&experiments={q(json.dumps([eid]))}", tmp_path)
    for run_id in train_ids:
        assert names[run_id] in dom
    assert "final/final_eval_loss" in dom  # the compare view lines up the runs' metrics
