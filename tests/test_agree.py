"""`make agree` on the tiny model, for real: served loss = trained loss on a QLoRA run's merged
model, a server-side template that drops the tools block is caught at the first differing token,
and the adapter served unmerged agrees with the merged model.

Two vLLM servers in all, one at a time: the merged model (module fixture, with
--trust-request-chat-template so a test can ask it to render with another template) and, in the
last test, the adapter server `finish_adapter` starts and stops."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import REPO, free_port, merge_once, read_json
from experiments.agree import adapter
from experiments.agree import loss as L
from experiments.agree import stage as agree_stage
from experiments.core.config import compose
from experiments.core import fingerprint
from experiments.serve import server as serving


@pytest.fixture(scope="module")
def qlora_run(trained_run):
    return merge_once(trained_run("qlora"))


@pytest.fixture(scope="module")
def cfg(qlora_run):
    c = compose(["profile=cpu", f"serve.port={free_port()}", "agree.prompts=8", f"paths.venv={REPO / '.venv'}"])
    OmegaConf.update(c, "serve.extra_args", list(c.serve.extra_args) + ["--trust-request-chat-template"])
    return c


@pytest.fixture(scope="module")
def merged_ep(cfg, qlora_run):
    ep = serving.start_server(cfg, qlora_run, "merged")
    try:
        yield ep
    finally:
        serving.stop_server(qlora_run, "merged")


def test_served_loss_equals_trained_loss(cfg, qlora_run, merged_ep):
    result = agree_stage.check_loss(cfg, qlora_run, "merged", merged_ep)
    split = read_json(qlora_run / "adapter" / agree_stage.EVAL_SPLIT)
    assert result["first_difference"] is None and result["rows"] == len(split["rows"]) > 0
    assert result["eval_lines"] == [r["line"] for r in split["rows"]] and None not in result["eval_lines"]
    assert result["tokens"] == sum(len(L.trained_positions(r["labels"])) for r in split["rows"])
    assert result["trained_eval_loss"] == read_json(qlora_run / "train_metrics.json")["eval_loss_curve"][-1][1] \
        or result["reference"].startswith("best checkpoint")
    assert abs(result["difference"]) <= result["tolerance"] and result["ok"], result
    print(f"\n[measured] qlora served - trained eval loss: {result['difference']:+.3e} "
          f"(tolerance {result['tolerance']:.3e}, {result['tolerance_basis']}; {result['wall_s']} s)")


def without_tools_block(template: str) -> str:
    """The run's template with the `<tools>` system block dropped (a template that lost tools)."""
    assert "{%- if tools %}" in template
    return template.replace("{%- if tools %}", "{%- if false %}", 1)


def test_a_template_without_tools_fails_at_the_first_differing_token(cfg, qlora_run, merged_ep):
    template, _ = fingerprint.chat_template(qlora_run / "merged")
    result = agree_stage.check_loss(cfg, qlora_run, "merged", merged_ep, chat_template=without_tools_block(template))
    assert not result["ok"] and result["served_eval_loss"] is None
    fd = result["first_difference"]
    split = read_json(qlora_run / "adapter" / agree_stage.EVAL_SPLIT)
    first = split["rows"][0]
    assert fd["row"] == first["index"] and fd["line"] == first["line"]
    # they part where Axolotl's system turn goes on with the tools block and the wrong one ends
    assert "# Tools" in fd["trained"] and "# Tools" not in fd["served"] and "<|im_end|>" in fd["served"]
    assert fd["served_len"] < fd["trained_len"] and fd["trained_token"] == first["input_ids"][fd["position"]]
    msg = agree_stage.explain(result)
    assert f"first difference at token {fd['position']}" in msg and "trained:" in msg and "served:" in msg


def test_agree_writes_agree_json_and_mlflow_then_adapter_equals_merged(cfg, qlora_run, merged_ep):
    result = agree_stage.agree(cfg, qlora_run, "merged", merged_ep, adapter_now=False)
    saved = read_json(qlora_run / agree_stage.AGREE)
    assert saved["loss"]["ok"] and saved["adapter_vs_merged"] == {"pending": True} == result["adapter_vs_merged"]
    merged_side = read_json(qlora_run / "agree_merged_side.json")
    assert len(merged_side) == 8 and all(0 < len(m["tokens"]) <= 16 for m in merged_side)
    serving.stop_server(qlora_run, "merged")  # one server at a time: the adapter server comes next
    final = agree_stage.finish_adapter(cfg, qlora_run)
    am = final["adapter_vs_merged"]
    # QLoRA: the merged folder is the peft model on the 4-bit base as trained (the merge replays the
    # trainer's NF4 rounding and restores what training kept in full precision), so it must agree
    assert am["prompts"] == 8 and "4-bit base" in am["how"] and am["ok"] and am["gating"], am
    assert am["identical"] == 8 or am["max_logprob_diff"] <= am["tolerance"], am
    restored = read_json(qlora_run / "run.json")["merge"]["fingerprints"]["qlora_restored"]
    assert "model.embed_tokens.weight" in restored["restored"] and restored["quantized_in_training"] > 0, restored
    assert am["served_adapter"]["prompts"] == 8  # vLLM puts the adapter on the unquantised base
    print(f"\n[measured] qlora adapter vs merged: {am['identical']}/8 identical, max logprob diff "
          f"{am['max_logprob_diff']:.3e} (tolerance {am['tolerance']})")
    info = read_json(qlora_run / "run.json")
    assert info["stages"]["agree"] == "done" and agree_stage.is_complete(qlora_run, "merged")
    client = MlflowClient(tracking_uri=info["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(info["mlflow"]["experiment"])
    found = client.search_runs([exp.experiment_id], f"tags.stage = 'agree' and tags.training_run = '{qlora_run.name}'")
    assert found and abs(found[0].data.metrics["agree/difference"] - saved["loss"]["difference"]) < 1e-12


def test_disagreeing_adapter_logprobs_fail_the_comparison():
    merged = [{"prompt_ids": [1], "tokens": [5, 6], "logprobs": [-1.0, -2.0]}]
    same = adapter.compare(merged, [[5, 6]], [[-1.0, -2.0]])
    assert same == {"prompts": 1, "identical": 1, "max_logprob_diff": 0.0}
    parted = adapter.compare(merged, [[5, 7]], [[-1.0, -2.7]])
    assert parted["identical"] == 0 and abs(parted["max_logprob_diff"] - 0.7) < 1e-12


def test_adapter_mismatch_gates_in_float32_and_is_recorded_in_16_bit():
    loss_ok = {"ok": True}
    bad = {"prompts": 8, "identical": 5, "max_logprob_diff": 0.5, "ok": False, "why": "3 of 8 differ"}
    assert agree_stage.problems_of({"loss": loss_ok, "adapter_vs_merged": {**bad, "gating": True}}) == ["adapter != merged: 3 of 8 differ"]
    assert agree_stage.problems_of({"loss": loss_ok, "adapter_vs_merged": {**bad, "gating": False}}) == []
    assert agree_stage.problems_of({"loss": loss_ok, "adapter_vs_merged": {**bad, "ok": True, "gating": True}}) == []
    assert agree_stage.problems_of({"loss": loss_ok, "adapter_vs_merged": {"skipped": "DoRA"}}) == []


@pytest.mark.parametrize("train, served, gating", [("float32", "float32", True), ("float32", "bfloat16", False),
                                                    ("bfloat16", "float32", False), ("float32", "unknown", False)])
def test_lora_adapter_gates_only_where_training_and_serving_are_float32(train, served, gating):
    tol, how = adapter.lora_tolerance(train, served)
    assert (tol == adapter.LORA_TOL) is gating and (tol == adapter.LORA_TOL_HALF) is not gating
    assert gating or (train in how and served in how)


def test_loss_arithmetic_is_the_trainers():
    # two batches: (rows 0, 1) and (row 2); per batch token mean, then mean weighted by batch size
    per_row = {0: (6.0, 2), 1: (4.0, 2), 2: (1.0, 1)}
    assert L.trainer_eval_loss([[[0], [1]], [[2]]], per_row) == pytest.approx((10 / 4 * 2 + 1.0) / 3)
    assert L.trainer_eval_loss([[[0, 1]], [[2]]], per_row) == pytest.approx((10 / 4 + 1.0) / 2)  # one packed sequence
    assert L.row_nll([None, -1.0, -2.0, -3.0], [-100, -100, 7, 8]) == (5.0, 2)
    with pytest.raises(ValueError, match="no served log-probability"):
        L.row_nll([None, -1.0], [-100, 3, 4])
    assert L.first_difference([1, 2, 3], [1, 2, 3]) is None and L.first_difference([1, 2], [1, 2, 3]) == 2
    assert L.first_difference([1, 9, 3], [1, 2, 3]) == 1
    tol32, _ = L.tolerance(10.0, "float32", "float32")
    tol16, basis = L.tolerance(10.0, "float32", "bfloat16")
    assert tol32 == pytest.approx(1e-4 + 1e-3) and tol16 == pytest.approx(1e-4 + 10 / 256) and "16-bit" in basis
    both, basis = L.tolerance(10.0, "bfloat16", "bfloat16")  # two independently rounded sides
    assert both == pytest.approx(1e-4 + 20 / 256) and "both sides" in basis
    with pytest.raises(ValueError, match="last eval ran at step 3"):
        L.reference_loss({"global_step": 6}, {"eval_loss_curve": [[3, 1.0]]})
    assert L.reference_loss({"saved_weights_eval_loss": 0.5, "best_global_step": 3}, {})[0] == 0.5


def test_agree_without_eval_split_is_a_clear_error(tmp_path):
    with pytest.raises(agree_stage.AgreeError, match="eval_split.json: missing"):
        agree_stage.load_split(tmp_path)
    assert json.loads(json.dumps(adapter.LORA_TOL)) == 1e-3
