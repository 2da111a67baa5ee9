"""Adapter = merged for DoRA (vLLM cannot serve DoRA adapters): in the train env, the base model
with the adapter applied by peft versus the merged folder, the same prompts, greedy.

    python -m experiments.agree.peft_vs_merged --base DIR --adapter DIR --merged DIR --prompts P.json --max-tokens N --out O.json

Runs in the train env (torch, transformers, peft); imports nothing of this repository. Prompts are
rows {messages, tools} in native form; the output is experiments.agree.adapter.compare's input:
per prompt the merged model's greedy tokens and their logprobs (teacher-forced) under both models."""
from __future__ import annotations

import argparse
import json


def greedy(model, ids, max_tokens):
    """Plain greedy tokens: a fresh GenerationConfig, so the model folder's sampling defaults
    (repetition_penalty, top_k, ...) do not apply, as vLLM runs with --generation-config vllm."""
    import torch
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), generation_config=gen)
    return out[0, len(ids):].tolist()


def logprobs_of(model, ids, toks):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids + toks])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[len(ids) + k - 1, t].item() for k, t in enumerate(toks)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    for name in ("--base", "--adapter", "--merged", "--prompts", "--out"):
        ap.add_argument(name, required=True)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--bnb-4bit", default=None, help="JSON BitsAndBytesConfig kwargs: load the base in 4 bits (QLoRA)")
    a = ap.parse_args(argv)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tok = AutoTokenizer.from_pretrained(a.merged)
    merged = AutoModelForCausalLM.from_pretrained(a.merged, torch_dtype=torch.float32).eval()
    base_kw = {"torch_dtype": torch.float32}
    if a.bnb_4bit:  # the base exactly as QLoRA trained on it
        import bitsandbytes.nn.modules as bnb_modules

        bnb_modules.has_avx512bf16 = lambda: False  # no CPU inference repacking (see CpuCompatPlugin)
        base_kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32,
                                                            **json.loads(a.bnb_4bit))
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base, **base_kw), a.adapter).eval()
    out = []
    for row in json.loads(open(a.prompts).read()):
        ids = tok.apply_chat_template(row["messages"], tools=row["tools"] or None, add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        toks = greedy(merged, ids, a.max_tokens)
        out.append({"prompt_ids": ids, "tokens": toks, "logprobs": logprobs_of(merged, ids, toks),
                    "adapter_tokens": greedy(peft, ids, a.max_tokens),
                    "adapter_logprobs": logprobs_of(peft, ids, toks)})
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
