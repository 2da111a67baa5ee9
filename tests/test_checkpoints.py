"""BFCL at every saved checkpoint: `make train ARGS="train.eval_checkpoints=true ..."` trains the tiny
model (plain LoRA, 3 steps, a checkpoint each step) and scores each checkpoint on a tiny BFCL subset
through one vLLM server with adapters loaded at run time; the scores land in files and as MLflow step
metrics; a planted better checkpoint is chosen by report.best_by and merged by CHECKPOINT=best."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.report.checkpoints import points, rank_correlation
from experiments.train.checkpoints import CheckpointError, best_checkpoint, column_value, norm_column

from conftest import free_port, hydra_args, make, read_json

SUBSET = ["train.checkpoint_bfcl.categories=[simple_python,irrelevance]", "train.checkpoint_bfcl.quick_per_category=1"]
LORA_3_CKPTS = ["axolotl.adapter=lora", "axolotl.load_in_4bit=false", "axolotl.max_steps=3", "axolotl.save_steps=1",
                "axolotl.eval_steps=1", "axolotl.warmup_steps=1", "axolotl.save_total_limit=null"]
BEST = ["report.best_by=bfcl/Non_Live_AST_Acc", "report.best_goal=max"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    results = tmp_path_factory.mktemp("ckpt-results")
    env = {"RESULTS_DIR": str(results)}
    out = make("train", "METHOD=qlora", hydra_args("run.id=ckpt", *LORA_3_CKPTS, "train.eval_checkpoints=true", *SUBSET,
                                                    f"serve.port={free_port()}"), env=env, timeout=2400)
    return results / "ckpt", env, out


def test_every_checkpoint_has_scores_in_files_and_mlflow(scored):
    from mlflow.tracking import MlflowClient

    run, _, out = scored
    index = read_json(run / "bfcl_checkpoints" / "checkpoints.json")
    assert index["mode"] == "runtime_lora" and index["server_startup_s"] > 0
    assert [c["step"] for c in index["checkpoints"]] == [1, 2, 3]
    assert [c["name"] for c in index["checkpoints"]] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    table = pd.read_csv(run / "bfcl_checkpoints" / "scores.csv")
    assert list(table["step"]) == [1, 2, 3]
    for c in index["checkpoints"]:
        summary = read_json(run / "bfcl_checkpoints" / c["name"] / "summary.json")
        assert summary["n_missing"] == 0 and summary["n_items"] == 2 == c["n_items"]
        assert summary["categories"] == ["simple_python", "irrelevance"]
        assert summary["model"] == f"ckpt-{c['name']}"  # each adapter was served under its own name
        assert c["leaderboard"] == summary["leaderboard"] and c["wall_s"] > 0
    # the server loaded each adapter at run time, and is gone
    log = (run / "serve" / "checkpoints" / "server.log").read_text()
    assert log.count("POST /v1/load_lora_adapter HTTP/1.1\" 200") == 3 and "--lora-modules" not in log
    assert not (run / "serve" / "checkpoints" / "server.pid").exists()

    info = read_json(run / "run.json")
    assert info["stages"]["eval_checkpoints"] == "done"
    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    mlrun = info["mlflow"]["train_run_id"]
    history = sorted(client.get_metric_history(mlrun, "bfcl/Overall_Acc"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([c["leaderboard"]["Overall Acc"] for c in index["checkpoints"]])
    irrelevance = sorted(client.get_metric_history(mlrun, "bfcl_cat/irrelevance"), key=lambda m: m.step)
    assert [m.value for m in irrelevance] == pytest.approx([c["per_category"]["irrelevance"] for c in index["checkpoints"]])
    assert client.get_metric_history(mlrun, "eval_loss")  # beside the loss curves of the same run


def test_rerun_skips_scored_checkpoints(scored):
    run, env, _ = scored
    before = (run / "bfcl_checkpoints" / "checkpoint-1" / "summary.json").stat().st_mtime_ns
    out = make("eval-checkpoints", f"RUN={run.name}", hydra_args(*SUBSET), env=env)
    assert "0 to score" in out.stdout
    assert (run / "bfcl_checkpoints" / "checkpoint-1" / "summary.json").stat().st_mtime_ns == before


def test_planted_best_checkpoint_is_chosen_reported_and_merged(scored):
    run, env, _ = scored
    path = run / "bfcl_checkpoints" / "checkpoints.json"
    index = read_json(path)
    for c in index["checkpoints"]:  # a planted score: checkpoint-2 is the best by far
        c["leaderboard"]["Non-Live AST Acc"] = 90.0 if c["name"] == "checkpoint-2" else 10.0
    path.write_text(json.dumps(index))

    bad = make("merge", f"RUN={run.name}", "CHECKPOINT=99", env=env, check=False)
    assert bad.returncode == 2 and "checkpoint-1, checkpoint-2, checkpoint-3" in bad.stderr
    by_loss = make("merge", f"RUN={run.name}", "CHECKPOINT=best", env=env, check=False)
    assert by_loss.returncode == 2 and "report.best_by=bfcl/<column>" in by_loss.stderr
    assert not (run / "merged").exists()

    make("merge", f"RUN={run.name}", "CHECKPOINT=best", hydra_args(*BEST), env=env)
    info = read_json(run / "run.json")
    assert info["merge"]["checkpoint"] == "checkpoint-2" and info["merge"]["step"] == 2
    assert info["merge"]["adapter"] == str(run / "adapter" / "checkpoint-2") and (run / "merged" / "config.json").exists()

    make("report", f"RUN={run.name}", hydra_args(*BEST), env=env)
    report = (run / "report.md").read_text()
    assert "at checkpoint **`checkpoint-2`** (step 2" in report
    assert "checkpoint-2 (chosen)" in report and "checkpoint-1 (chosen)" not in report
    assert "Rank correlation of eval loss" in report
    assert (run / "report_plots" / "checkpoint_scores.png").read_bytes()[:4] == b"\x89PNG"


def test_best_checkpoint_rules():
    recs = [{"step": 1, "name": "checkpoint-1", "leaderboard": {"Non-Live AST Acc": 20.0, "Overall Acc": 5.0}},
            {"step": 2, "name": "checkpoint-2", "leaderboard": {"Non-Live AST Acc": 40.0, "Overall Acc": None}},
            {"step": 3, "name": "checkpoint-3", "leaderboard": {"Non-Live AST Acc": 40.0, "Overall Acc": 1.0}}]
    for spelling in ("bfcl/Non_Live_AST_Acc", "bfcl/Non-Live_AST_Acc", "Non-Live AST Acc"):
        assert norm_column(spelling) == "non_live_ast_acc"
        assert best_checkpoint(recs, spelling, "max")["name"] == "checkpoint-2"  # tie: the earlier step
    assert best_checkpoint(recs, "bfcl/Non_Live_AST_Acc", "min")["name"] == "checkpoint-1"
    assert best_checkpoint(recs, "bfcl/Overall_Acc", "max")["name"] == "checkpoint-1"  # N/A does not compete
    assert best_checkpoint(recs, "bfcl/No_Such_Column", "max") is None
    assert column_value(recs[1]["leaderboard"], "bfcl/Overall_Acc") is None
    with pytest.raises(CheckpointError, match="best_goal"):
        best_checkpoint(recs, "bfcl/Overall_Acc", "highest")


def test_rank_correlation_of_eval_loss_and_score():
    def row(rid, pairs):
        return {"id": rid, "metrics": {"eval_loss_curve": [[s, loss] for s, loss, _ in pairs]},
                "checkpoints": {"checkpoints": [{"step": s, "name": f"checkpoint-{s}", "leaderboard": {"Overall Acc": v}}
                                                for s, _, v in pairs]}}

    agree = [row("a", [(1, 3.0, 10.0), (2, 2.0, 20.0), (3, 1.0, 30.0)])]
    assert rank_correlation(points(agree, "bfcl/Overall_Acc")) == (pytest.approx(-1.0), 3)
    disagree = [row("a", [(1, 3.0, 30.0), (2, 2.0, 20.0)]), row("b", [(1, 1.0, 10.0)])]
    assert rank_correlation(points(disagree, "bfcl/Overall_Acc")) == (pytest.approx(1.0), 3)
    too_few = [row("a", [(1, 3.0, 30.0), (2, 2.0, 20.0)])]
    assert rank_correlation(points(too_few, "bfcl/Overall_Acc")) == (None, 2)
