"""Tiny Qwen2 model: parameter checks here; the build itself runs in the train env
(torch, transformers, tokenizers) through a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import train_env_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.models import tiny_model  # noqa: E402  (stdlib-only at import time)

TRAIN_PYTHON = os.environ.get("TRAIN_PYTHON", str(ROOT / ".venv" / "train" / "bin" / "python"))


def test_head_dim_below_32_is_refused():
    with pytest.raises(ValueError, match="head_dim"):
        tiny_model._params(0, tiny_model.DEFAULT_CORPUS, {"num_attention_heads": 8})  # 128 / 8 = 16
    with pytest.raises(TypeError, match="unknown"):
        tiny_model._params(0, tiny_model.DEFAULT_CORPUS, {"hidden_sise": 64})
    p = tiny_model._params(0, tiny_model.DEFAULT_CORPUS, {})
    assert p["hidden_size"] // p["num_attention_heads"] >= 32 and p["max_position_embeddings"] >= 16384


BUILD_AND_LOAD = r"""
import hashlib, json, os, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from experiments.models import tiny_model as tm

a, b, c = sys.argv[1:4]
t0 = time.time(); tm.build(a, seed=0); build_s = time.time() - t0
tm.build(b, seed=0)
tm.build(c, seed=1)
sha = lambda d: {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() for f in sorted(os.listdir(d))}
mtime = os.path.getmtime(os.path.join(a, "model.safetensors"))
tm.build(a, seed=0)                      # complete and identical: skipped
skipped = os.path.getmtime(os.path.join(a, "model.safetensors")) == mtime
try:
    tm.build(a, seed=5)                  # complete but different: refused, never reused
    refused = False
except FileExistsError:
    refused = True

tok = AutoTokenizer.from_pretrained(a)
model = AutoModelForCausalLM.from_pretrained(a).eval()
cfg = model.config
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
msgs = [{"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"t\": 21}"}]
text = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits[0]
top2 = logits.topk(2, dim=-1).values
import trl, pathlib
trl_template = pathlib.Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"
print(json.dumps({
    "sha_a": sha(a), "sha_b": sha(b), "sha_c": sha(c), "build_s": build_s, "skipped": skipped, "refused": refused,
    "arch": cfg.architectures, "model_type": cfg.model_type,
    "head_dim": cfg.hidden_size // cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
    "layers": cfg.num_hidden_layers, "max_pos": cfg.max_position_embeddings,
    "rope_theta": cfg.rope_parameters["rope_theta"], "vocab_size": cfg.vocab_size, "len_tok": len(tok),
    "n_params": sum(p.numel() for p in model.parameters()),
    "tok_class": type(tok).__name__, "eos": tok.eos_token, "pad": tok.pad_token,
    "eos_id": tok.eos_token_id, "cfg_eos_id": cfg.eos_token_id,
    "gen_eos": model.generation_config.eos_token_id,
    "ids": {t: tok.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]},
    "tool_call_tokens": tok("<tool_call>")["input_ids"],
    "kept_on_skip": tok.decode(tok("<tool_call>\n{}\n</tool_call><|im_end|>")["input_ids"], skip_special_tokens=True),
    "text": text,
    "template_is_qwen25": tok.chat_template == trl_template.read_text(encoding="utf-8"),
    "finite": bool(torch.isfinite(logits).all()),
    "median_top_gap": float((top2[:, 0] - top2[:, 1]).median()),
}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return train_env_json(BUILD_AND_LOAD, str(d / "a"), str(d / "b"), str(d / "c")), d


def test_build_is_deterministic_and_seeded(built):
    r, _ = built
    assert r["sha_a"] == r["sha_b"]                                      # same inputs: byte-identical
    assert r["sha_c"]["model.safetensors"] != r["sha_a"]["model.safetensors"]  # the seed moves weights
    assert r["sha_c"]["tokenizer.json"] == r["sha_a"]["tokenizer.json"]        # ...not the tokenizer
    assert set(r["sha_a"]) >= {"config.json", "generation_config.json", "model.safetensors",
                               "tokenizer.json", "tokenizer_config.json"}
    assert r["skipped"] and r["refused"]


def test_model_shape_fits_vllm_cpu_and_bfcl(built):
    r, _ = built
    assert r["arch"] == ["Qwen2ForCausalLM"] and r["model_type"] == "qwen2"
    assert r["head_dim"] >= 32 and r["kv_heads"] == 2 and r["layers"] == 2
    assert r["max_pos"] == 32768 and r["rope_theta"] == 1e6
    assert r["vocab_size"] == r["len_tok"] and 7000 <= r["len_tok"] <= 9000
    assert r["finite"]
    assert r["median_top_gap"] > 0.1  # not near-tied logits


def test_tokenizer_is_qwen25_shaped(built):
    r, _ = built
    assert r["tok_class"] == "Qwen2Tokenizer" and r["template_is_qwen25"]
    assert r["eos"] == "<|im_end|>" and r["pad"] == "<|endoftext|>"
    ids = r["ids"]
    assert r["eos_id"] == ids["<|im_end|>"] == r["cfg_eos_id"]
    assert r["gen_eos"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert ids["<|endoftext|>"] == r["len_tok"] - 22   # added tokens take the last ids, as in Qwen
    assert r["tool_call_tokens"] == [ids["<tool_call>"]]
    assert r["kept_on_skip"] == "<tool_call>\n{}\n</tool_call>"  # hermes parser sees it after decoding
    text = r["text"]
    assert "<tools>\n" + json.dumps({"type": "function", "function": {
        "name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}) in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<tool_response>\n{\"t\": 21}\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n")


def test_cli_skips_a_complete_folder(built):
    _, d = built
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([TRAIN_PYTHON, "-m", "experiments.models.tiny_model", "--out", str(d / "a")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to do" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["vocab_size"] == 8192
