"""Each method trains the tiny model for real through `make train` and leaves an adapter,
metrics, and a complete MLflow run; a crash is recorded as FAILED."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from conftest import SHORT_TRAIN, hydra_args, make, read_json


@pytest.mark.parametrize("method", ["qlora", "dora", "qlora_opt"])
def test_method_trains_and_is_tracked(method, trained_run):
    run = trained_run(method)
    info = read_json(run / "run.json")
    assert info["stages"]["train"] == "done" and info["method"] == method
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    ax = (run / "axolotl.yaml").read_text()
    assert "adapter:" in ax and (run / "config.yaml").exists()
    assert ("peft_use_dora: true" in ax) == (method == "dora")
    assert ("load_in_4bit: true" in ax) == (method != "dora")

    data = read_json(run / "data" / "data_report.json")  # the train split's statistics, not the eval split's
    assert data["packing"]["rows_written"] == data["train_rows"] and data["heldout"]["rows"] > 0
    assert data["heldout"]["rows"] < data["packing"]["rows_prepared"] <= data["train_rows"], data["packing"]

    metrics = read_json(run / "train_metrics.json")
    assert metrics["steps"] == 6
    assert metrics["final_train_loss"] > 0 and metrics["final_eval_loss"] > 0
    assert len(metrics["loss_curve"]) == 6 and metrics["wall_time_s"] > 0
    assert metrics["peak_pss_gib"] > 0.1 and metrics["peak_rss_largest_process_gib"] > 0.1 and metrics["trainable_params"] > 0 and metrics["tokens_per_s"] > 0

    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    mlrun = client.get_run(info["mlflow"]["train_run_id"])
    assert mlrun.info.status == "FINISHED"
    p = mlrun.data.params
    assert p["method"] == method and p["model"] == "tiny" and p["data"] == "toolace_sample"
    assert int(p["cfg.lora_r"]) > 0 and float(p["cfg.lora_alpha"]) > 0 and "q_proj" in p["cfg.lora_target_modules"]
    assert mlrun.data.tags["stage"] == "train" and mlrun.data.tags["training_run"] == run.name
    losses = client.get_metric_history(mlrun.info.run_id, "loss")
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx([v for _, v in metrics["loss_curve"]])
    assert client.get_metric_history(mlrun.info.run_id, "eval_loss")
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"axolotl.yaml", "train_metrics.json", "config.yaml"} <= artifacts


def test_runs_never_overwrite_and_latest_points_at_newest(trained_run, results_dir):
    a, b = trained_run("qlora"), trained_run("dora")
    assert a != b and a.exists() and b.exists()
    proc = make("train", "METHOD=qlora", hydra_args("run.id=test-qlora", *SHORT_TRAIN), check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (results_dir / "latest").resolve().parent == results_dir


def test_crashed_training_is_marked_failed(results_dir):
    proc = make("train", "METHOD=dora", hydra_args("run.id=test-crash", "axolotl.base_model=/nonexistent/model", *SHORT_TRAIN),
                check=False)
    assert proc.returncode != 0 and "train.log" in proc.stderr
    run = results_dir / "test-crash"
    info = read_json(run / "run.json")
    assert info["stages"]["train"] == "failed"
    mlrun = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"]).get_run(info["mlflow"]["train_run_id"])
    assert mlrun.info.status == "FAILED"
