"""The whole chain through the same entry point a newcomer uses: `make all` (one method, CPU
profile), then a second `make all` that resumes: every stage already complete is skipped."""
from __future__ import annotations

import pytest

from conftest import SHORT_TRAIN, hydra_args, make, read_json


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    results = tmp_path_factory.mktemp("all-results")
    env = {"RESULTS_DIR": str(results)}
    first = make("all", "METHOD=dora", hydra_args(*SHORT_TRAIN, "bench.concurrency=[1,4]", "bench.num_requests=12"),
                 env=env, timeout=3600)
    run = (results / "latest").resolve()
    return results, run, first, env


def test_every_stage_wrote_its_outputs(chain):
    results, run, first, _ = chain
    info = read_json(run / "run.json")
    assert info["stages"]["train"] == "done" and info["method"] == "dora"
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "merged" / "config.json").exists()
    assert read_json(run / "bfcl" / "merged" / "api" / "summary.json")["n_missing"] == 0
    for level in ("c1", "c4"):
        assert read_json(run / "bench" / "merged" / "latest" / f"summary_{level}.json")["requests"]["total"] == 12
    assert (run / "report.md").stat().st_size > 0
    timings = info["pipeline"]["last_timings_s"]
    assert set(timings) >= {"train", "merge", "serve", "eval", "bench", "agree", "agree_adapter", "report"}
    agree = read_json(run / "agree.json")  # served loss = trained loss; DoRA: peft model = merged folder
    assert agree["loss"]["ok"] and "DoRA" in agree["adapter_vs_merged"]["how"]
    # the server the chain started is gone, and the output says where everything is
    assert not (run / "serve" / "merged" / "server.pid").exists()
    assert str(run) in first.stdout and "make ui" in first.stdout


def test_report_numbers_equal_the_files(chain):
    _, run, _, _ = chain
    report = (run / "report.md").read_text()
    metrics = read_json(run / "train_metrics.json")
    assert f"{metrics['final_eval_loss']:.4f}" in report and f"{metrics['final_train_loss']:.4f}" in report
    bfcl = read_json(run / "bfcl" / "merged" / "api" / "summary.json")
    for column in ("Non-Live AST Acc", "Live Acc", "Irrelevance Detection", "Multi Turn Acc"):
        assert f"{bfcl['leaderboard'][column]:.2f}" in report, column
    for level in ("c1", "c4"):
        tput = read_json(run / "bench" / "merged" / "latest" / f"summary_{level}.json")["throughput"]
        assert f"{tput['requests_per_s']:.2f}" in report and f"{tput['output_tokens_per_s']:.1f}" in report
    assert f"{read_json(run / 'agree.json')['loss']['served_eval_loss']:.5f}" in report
    for section in ("## 1. Training", "## 2. BFCL", "## 3. Serving", "## 4. Cost", "## 5. Environment", "## 6. Agreement"):
        assert section in report


def test_mlflow_experiment_holds_train_eval_and_bench_runs(chain):
    from mlflow.tracking import MlflowClient

    _, run, _, _ = chain
    info = read_json(run / "run.json")
    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(info["mlflow"]["experiment"])
    found = client.search_runs([exp.experiment_id], f"tags.training_run = '{run.name}'")
    assert {r.data.tags["stage"] for r in found} >= {"train", "eval", "bench"}
    assert all(r.info.status == "FINISHED" for r in found)


def test_rerun_resumes_and_skips_complete_stages(chain):
    results, run, _, env = chain
    second = make("all", "METHOD=dora", hydra_args(*SHORT_TRAIN, "bench.concurrency=[1,4]", "bench.num_requests=12",
                                                   "agree.enabled=false"), env=env, timeout=1200)
    assert f"resuming {run}" in second.stdout
    for stage in ("train", "merge", "serve", "eval", "bench", "agree"):
        assert f"===== [{stage}]" not in second.stdout, stage
    assert "**skipped** (agree.enabled=false)" in (run / "report.md").read_text()
    assert "===== [report]" in second.stdout
    assert sorted(p.name for p in results.iterdir() if p.is_dir() and not p.is_symlink() and (p / "run.json").exists()) == [run.name]
