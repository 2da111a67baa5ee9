"""A training whose orchestrator is killed: the run is marked failed on the next read, and
`make train RESUME=<run>` continues it from its last checkpoint in the same folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import REPO, SHORT_TRAIN, hydra_args, make, read_json
from experiments.core import runs


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    results = tmp_path / "results"
    run = results / "resume1"
    env = {**os.environ, "RESULTS_DIR": str(results)}
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "train", "METHOD=dora",
                             hydra_args("run.id=resume1", *SHORT_TRAIN)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not (run / "adapter" / "checkpoint-3" / "trainer_state.json").exists():
            assert proc.poll() is None, "training ended before the kill"
            assert time.monotonic() < deadline, "no checkpoint within 15 min"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # make, the orchestrator and Axolotl: no clean-up at all
        proc.wait()
    log_before = (run / "train.log").read_text()
    assert "checkpoint" in log_before or len(log_before.splitlines()) > 10   # written line by line
    assert read_json(run / "run.json")["stages"]["train"] == "running"    # nobody has looked yet

    merge = make("merge", "RUN=resume1", env={"RESULTS_DIR": str(results)}, check=False)
    assert merge.returncode == 2 and "make train RESUME=resume1" in merge.stderr   # read -> marked failed
    info = read_json(run / "run.json")
    assert info["stages"]["train"] == "failed" and "ended without finishing" in info["stage_counts"]["train"]["reason"]

    make("train", "RESUME=resume1", env={"RESULTS_DIR": str(results)}, timeout=1800)
    info = read_json(run / "run.json")
    assert info["stages"]["train"] == "done" and [r["run_id"] for r in runs.list_runs(results)] == ["resume1"]
    metrics = read_json(run / "train_metrics.json")
    assert metrics["resumed_from_step"] >= 3 and metrics["steps"] == 6
    lines = [json.loads(line) for line in (run / "adapter" / "train_log.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in lines if "loss" in r]
    assert loss_steps == list(range(1, 7))                # each step once: before the kill, then resumed
    log = (run / "train.log").read_text()
    assert log.startswith(log_before) and f"resuming from checkpoint-{metrics['resumed_from_step']}" in log
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    run_info = client.get_run(info["mlflow"]["train_run_id"])
    assert run_info.info.status == "FINISHED" and run_info.data.tags.get("resumed_from_step")
