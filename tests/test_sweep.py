"""`make sweep`: a 2x2 grid of real tiny-model trainings on CPU, interrupted in its second point and
resumed without retraining the first; the sweep report; the dry run; the indexed Job of `make k8s`."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import kubernetes_validate
import pytest
import yaml

from experiments.sweep import grid
from experiments.sweep.grid import SweepError
from experiments.sweep.k8s import render as render_k8s

from conftest import REPO, make, read_json

FIXED = ["method=qlora", "axolotl.adapter=lora", "axolotl.load_in_4bit=false", "++axolotl.max_steps=2",
         "axolotl.eval_steps=2", "axolotl.save_steps=2", "axolotl.warmup_steps=1"]
SWEEP = {"grid": ["axolotl.lora_r=8,16"], "fixed": FIXED, "max_points": 4}


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-conf")
    path = d / "tiny2x2.yaml"
    # one dimension in the file, the other from ARGS in Hydra's multirun syntax
    path.write_text(yaml.safe_dump(SWEEP))
    return path


ARGS = "ARGS=axolotl.learning_rate=1e-3,2e-3"


@pytest.fixture(scope="module")
def swept(sweep_file, tmp_path_factory):
    results = tmp_path_factory.mktemp("sweep-results")
    env = {**os.environ, "RESULTS_DIR": str(results)}
    dry = make("sweep", f"SWEEP={sweep_file}", ARGS, "DRY_RUN=1", env=env)
    created_by_dry_run = sorted(p.name for p in results.iterdir())
    # First attempt, interrupted while the second point trains (its run.json says train: running).
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "sweep", f"SWEEP={sweep_file}", ARGS],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    second = results / "tiny2x2-p01" / "run.json"
    deadline = time.monotonic() + 1500
    while not (second.exists() and read_json(second)["stages"].get("train") == "running"):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the second point never started"
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_log = (results / "tiny2x2-p00" / "train.log").stat().st_mtime_ns
    start = time.monotonic()
    resumed = make("sweep", f"SWEEP={sweep_file}", ARGS, env=env, timeout=3000)
    resume_s = time.monotonic() - start
    return {"results": results, "env": env, "dry": dry, "dry_created": created_by_dry_run, "resumed": resumed,
            "first_log": first_log, "resume_s": resume_s}


def test_dry_run_prints_the_grid_and_trains_nothing(swept):
    out = swept["dry"].stdout
    assert "tiny2x2: 4 points over axolotl.lora_r, axolotl.learning_rate" in out
    for r in ("8", "16"):
        for lr in ("0.001", "0.002"):
            assert f"axolotl.lora_r={r} axolotl.learning_rate={lr}" in out
    assert "estimated time" in out and out.count("to do: train") == 4
    assert swept["dry_created"] == []  # not even a folder


def test_resume_skips_the_finished_point_and_retrains_the_interrupted_one(swept):
    results, out = swept["results"], swept["resumed"].stdout
    assert "point 00 axolotl.lora_r=8 axolotl.learning_rate=0.001: trained (tiny2x2-p00); complete, skipped" in out
    assert "training tiny2x2-p01-a1" in out  # the interrupted folder is kept, never reused
    killed = read_json(results / "tiny2x2-p01" / "run.json")   # reconciled: its owner process is gone
    assert killed["stages"]["train"] == "failed" and "killed" in killed["stage_counts"]["train"]["reason"], killed
    assert (results / "tiny2x2-p00" / "train.log").stat().st_mtime_ns == swept["first_log"]
    record = read_json(results / "sweeps" / "tiny2x2" / "sweep.json")
    assert [p["run_id"] for p in record["points"]] == ["tiny2x2-p00", "tiny2x2-p01-a1", "tiny2x2-p02", "tiny2x2-p03"]
    assert all(p["todo"] == [] and p["wall_s"] > 0 for p in record["points"])
    for p in record["points"]:
        info = read_json(results / p["run_id"] / "run.json")
        assert info["sweep"] == "tiny2x2" and set(p["overrides"]) <= set(info["overrides"])
    # a third run has nothing left to do
    again = make("sweep", f"SWEEP={record['file']}", ARGS, env=swept["env"])
    assert again.stdout.count("complete, skipped") == 4 and "training" not in again.stdout
    print(f"\n[measured] resumed 2x2 sweep (3 trainings): {swept['resume_s']:.0f} s")


def test_points_are_tagged_in_mlflow(swept):
    from mlflow.tracking import MlflowClient

    info = read_json(swept["results"] / "tiny2x2-p03" / "run.json")
    tags = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"]).get_run(info["mlflow"]["train_run_id"]).data.tags
    assert tags["sweep"] == "tiny2x2" and tags["sweep_point"] == "03"
    assert tags["sweep.axolotl.lora_r"] == "16" and tags["sweep.axolotl.learning_rate"] == "0.002"


def test_sweep_report_rows_equal_the_runs(swept):
    results = swept["results"]
    make("report", "SWEEP=tiny2x2", env=swept["env"])
    report = (results / "sweeps" / "tiny2x2" / "report.md").read_text()
    record = read_json(results / "sweeps" / "tiny2x2" / "sweep.json")
    losses = {}
    for p in record["points"]:
        m = read_json(results / p["run_id"] / "train_metrics.json")
        losses[p["run_id"]] = m["final_eval_loss"]
        assert f"`{p['run_id']}`" in report and f"{m['final_eval_loss']:.4f}" in report
    best = min(losses, key=losses.get)
    assert f"run `{best}`, final_eval_loss = {losses[best]:.4f}" in report
    assert (results / "sweeps" / "tiny2x2" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    dry = make("sweep", f"SWEEP={record['file']}", ARGS, "DRY_RUN=1", env=swept["env"]).stdout
    assert dry.count(" done ") == 4 and "median of" in dry  # measured from the finished points


def test_grid_expansion_and_refusals(tmp_path):
    fixed, points = grid.expand(["method=qlora,dora", "axolotl.lora_r=8,16,32"], ["axolotl.max_steps=5"])
    assert fixed == ["axolotl.max_steps=5"] and len(points) == 6
    assert points[0] == ["method=qlora", "axolotl.lora_r=8"] and points[-1] == ["method=dora", "axolotl.lora_r=32"]
    assert grid.expand([], ["axolotl.lora_r=range(8,11)"])[1] == [["axolotl.lora_r=8"], ["axolotl.lora_r=9"], ["axolotl.lora_r=10"]]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"grid": {"axolotl.lora_r": [8, 16], "axolotl.peft_use_dora": [True, False]}}))
    spec = grid.load(str(path))
    assert spec["grid"] == ["axolotl.lora_r=8,16", "axolotl.peft_use_dora=true,false"] and spec["name"] == "m"
    with pytest.raises(SweepError, match="run.id"):
        grid.expand(["axolotl.lora_r=8,16"], ["run.id=x"])
    with pytest.raises(SweepError, match="swept twice"):
        grid.expand(["axolotl.lora_r=8,16"], ["axolotl.lora_r=4,2"])
    with pytest.raises(SweepError, match="one value"):
        grid.expand(["axolotl.lora_r=8"], [])
    with pytest.raises(SweepError, match="exceed the cap max_points=4"):
        grid.check_size(grid.expand(["a=1,2,3", "b=1,2"], [])[1], 4)
    (tmp_path / "typo.yaml").write_text("grdi: [a=1,2]\n")
    with pytest.raises(SweepError, match="unknown key"):
        grid.load(str(tmp_path / "typo.yaml"))
    with pytest.raises(SweepError, match="not found"):
        grid.load("no_such_sweep")


def test_point_state_and_estimate():
    runs = [{"run_id": "s-p00", "sweep": "s", "overrides": ["a=1", "run.id=s-p00"], "stages": {"train": "done"}},
            {"run_id": "s-p01", "sweep": "s", "overrides": ["a=2"], "stages": {"train": "running"}},
            {"run_id": "t-p00", "sweep": "t", "overrides": ["a=3"], "stages": {"train": "done"}}]
    assert grid.point_state(runs, "s", ["a=1"], eval_checkpoints=False, bench=False)[1] == []
    assert grid.point_state(runs, "s", ["a=1"], eval_checkpoints=True, bench=False)[1] == ["eval_checkpoints"]
    assert grid.point_state(runs, "s", ["a=2"], eval_checkpoints=False, bench=True) == (None, ["train", "bench"])
    assert grid.point_state(runs, "s", ["a=3"], eval_checkpoints=False, bench=False)[0] is None  # other sweep
    history = [{"metrics": {"wall_time_s": 70.0, "train_runtime_s": 10.0, "steps": 10}}]
    assert grid.estimate(history, 20, 2, False)["point_s"] == 80.0
    assert grid.estimate([], 20, 2, False)["point_s"] is None


def test_sweep_renders_as_one_strictly_valid_indexed_job(sweep_file):
    cfg, plan, files = render_k8s(str(sweep_file), ["profile=h100", "axolotl.learning_rate=1e-4,2e-4"])
    docs = [d for ds in files.values() for d in ds]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    job = files["10-sweep.yaml"][0]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 4
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["make", "--no-print-directory", "sweep"]
    assert {"POINT=$(SWEEP_POINT)", f"SWEEP={sweep_file}", "SWEEP_ID=tiny2x2", "PROFILE=h100"} <= set(c["command"])
    env = {e["name"]: e for e in c["env"]}
    assert "job-completion-index" in env["SWEEP_POINT"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    broken = {**job, "spec": {**job["spec"], "completionz": 4}}
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)
    from experiments.cluster.k8s import K8sError

    with pytest.raises(K8sError, match="one pod shape"):
        render_k8s(str(sweep_file), ["profile=h100", "launcher=ddp", "launcher.gpus=1,2"])
