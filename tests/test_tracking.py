"""Tracking without a server: tracking=postgres is config only, an unreachable server is named at
once, a tracking outage cannot kill a training, and `make sync` reads the run folder's own logs."""
from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from experiments.tracking import sync
from experiments.tracking import client as tracking
from experiments.core.config import compose


def test_postgres_tracking_is_config_only(monkeypatch):
    monkeypatch.delenv("TRACKING_URI", raising=False)
    sqlite, server = compose(["profile=cpu"]).tracking, compose(["profile=cpu", "tracking=postgres"]).tracking
    assert sqlite.uri.startswith("sqlite:///") and server.uri == "http://127.0.0.1:5400"
    assert server.experiment == sqlite.experiment and server.artifact_location is None
    # The port of the server `make tracking-server` starts and the URI clients use are one setting.
    assert compose(["profile=cpu", "tracking=postgres", "tracking.server.port=5477"]).tracking.uri.endswith(":5477")
    monkeypatch.setenv("TRACKING_URI", "http://mlflow.team.example:5000")
    assert compose(["profile=cpu", "tracking=postgres"]).tracking.uri == "http://mlflow.team.example:5000"


def test_unreachable_server_fails_at_once_naming_the_uri():
    t0 = time.time()
    with pytest.raises(tracking.TrackingError, match=r"http://127\.0\.0\.1:5499 is unreachable"):
        tracking.Tracker({"uri": "http://127.0.0.1:5499", "experiment": "x"}, run_name="r", tags={})
    assert time.time() - t0 < 5


class MLflowCallback:  # the name is what the guard looks for (transformers' and Axolotl's classes)
    calls = 0

    def on_log(self, *args, **kwargs):
        type(self).calls += 1
        raise ConnectionError("server went away")

    def on_train_end(self, *args, **kwargs):
        type(self).calls += 1
        raise ConnectionError("server went away")


def test_a_tracking_outage_cannot_kill_the_training(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5499")
    cb, other = MLflowCallback(), SimpleNamespace(on_log=lambda *a, **k: "untouched")
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[cb, other]),
                              args=SimpleNamespace(output_dir="/results/run-7/adapter"))
    tracking.guard_mlflow_callbacks(trainer)
    assert cb.on_log() is None and cb.on_train_end() is None and cb.on_log() is None
    assert MLflowCallback.calls == 1  # quiet after the first failure: no retries on every step
    err = capsys.readouterr().err
    assert "http://127.0.0.1:5499" in err and "make sync RUN=run-7 TRACKING_URI=http://127.0.0.1:5499" in err and err.count("[tracking]") == 1
    assert other.on_log() == "untouched"


def test_sync_reads_every_step_of_the_train_log(tmp_path):
    log = tmp_path / "train_log.jsonl"
    rows = [{"step": 1, "time": 1700000000.5, "epoch": 0.1, "loss": 2.5, "memory/max_allocated (GiB)": 1.0},
            {"step": 2, "time": 1700000001.0, "loss": 2.25, "grad_norm": 0.5, "note": "text", "flag": True},
            {"step": 2, "time": 1700000001.2, "eval_loss": 2.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    points = sync.history(log)
    assert ("loss", 2.5, 1700000000500, 1) in points and ("loss", 2.25, 1700000001000, 2) in points
    assert ("eval_loss", 2.0, 1700000001200, 2) in points
    # Named as transformers' MLflowCallback names them live; text, booleans and our columns are not metrics.
    assert ("memory/max_allocated _GiB_", 1.0, 1700000000500, 1) in points
    assert {k for k, *_ in points} == {"epoch", "loss", "memory/max_allocated _GiB_", "grad_norm", "eval_loss"}


def test_client_gives_up_within_seconds(monkeypatch):
    for key in tracking.HTTP_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # a user's own setting wins
    import mlflow

    before = mlflow.get_tracking_uri()
    tracking.client_for("http://127.0.0.1:5499")
    mlflow.set_tracking_uri(before)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
