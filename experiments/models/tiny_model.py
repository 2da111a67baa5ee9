"""A tiny Qwen2-architecture model with a locally trained tokenizer, built deterministically.

It lets every stage (axolotl train/merge, vLLM serve, BFCL, bench) run for real on a CPU with
nothing downloaded. Its outputs are meaningless by design. What it shares with
Qwen2.5-7B-Instruct: architecture (Qwen2ForCausalLM, GQA, q/k/v biases, RoPE theta 1e6,
untied lm_head), the tokenizer pipeline (NFC + Qwen2's split regex + byte-level BPE), the 22
added tokens with Qwen2.5's special flags, eos/pad tokens, the generation config and the exact
chat template (``<tools>`` block, Hermes ``<tool_call>`` JSON that vLLM's hermes parser reads).

    python -m experiments.models.tiny_model --out DIR [--seed N]     # train env; skips a complete DIR

Same inputs (sample, Python docs version, seed, sizes, library versions) -> byte-identical files: the BPE trainer is
deterministic, weights come from one seeded torch.Generator in sorted parameter order, and the
JSON files are written by this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from experiments.models.folder import sha256, staged, write_json

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = ROOT / "data" / "toolace_sample.jsonl"
MANIFEST = "tiny_model.json"
FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]

# Qwen2.5-7B-Instruct's chat template, byte for byte (the copy trl keeps to recognise Qwen2.5).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2.5's added tokens in id order, with its `special` flags: <tool_call> and the FIM/repo
# tokens are not special, so decoding with skip_special_tokens keeps them (the hermes parser
# needs to see <tool_call> in the text).
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]
EOS, PAD = "<|im_end|>", "<|endoftext|>"

# Qwen2's pre-tokenizer split (digits one by one, contractions, punctuation runs, newlines).
SPLIT_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

DEFAULTS = {
    "vocab_size": 8192,          # total, added tokens included (BPE gets vocab_size - 22)
    "hidden_size": 128,
    "num_attention_heads": 4,    # head_dim 32: vLLM's CPU attention refuses < 32
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 32768,  # BFCL prompts reach ~8k Qwen tokens, more with this vocab
    "rope_theta": 1_000_000.0,
    # Random weights at the usual 0.02 give near-uniform logits whose argmax flips between
    # engines; a larger std makes them peaky (see docs/findings: compare logprobs, not tokens).
    "init_std": 0.25,
}


# --------------------------------------------------------------------------- tokenizer


def render_chat(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt=False) -> str:
    """The chat template rendered the way transformers does (its tojson keeps key order and
    non-ASCII), without needing a tokenizer: used to build the training corpus."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return env.from_string(QWEN25_CHAT_TEMPLATE).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)


def sample_texts(corpus_path: Path) -> list[str]:
    """Every sample row rendered through the chat template: exactly what the model reads in
    training (instructions, tool schemas as JSON, <tool_call> blocks, tool responses)."""
    sys.path.insert(0, str(ROOT))
    from experiments.data import toolace

    raw = toolace.load_raw(path=str(corpus_path))
    converted, rejects = toolace.convert_rows(raw)
    if rejects:
        raise ValueError(f"{corpus_path}: {len(rejects)} rows do not convert, first: {rejects[0]}")
    texts = []
    for row in converted:
        native = toolace.to_native(row)
        texts.append(render_chat(native["messages"], native["tools"]))
    return texts


def docs_texts() -> list[str]:
    """Python's own reference text (stdlib ``pydoc_data``, ~0.5 MB, fixed per Python version).
    The ToolACE sample alone is too repetitive for an ~8k vocabulary (it stops near 2.3k), and
    BFCL prompts are full of code-like English that this covers."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with Qwen2's pipeline; the 22 added tokens take the last ids, as in Qwen."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ADDED_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Special-token strings must not be learned as merges: train on the text between them.
    pieces = [piece for text in texts for piece in _split_added(text)]
    tok.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    return tok


def _split_added(text: str) -> list[str]:
    pieces = [text]
    for token, _ in ADDED_TOKENS:
        pieces = [p for piece in pieces for p in piece.split(token)]
    return [p for p in pieces if p]


def tokenizer_config(model_max_length: int) -> dict:
    """Qwen2.5's tokenizer_config.json fields (added_tokens_decoder is added by the caller)."""
    return {
        "add_prefix_space": False,
        "additional_special_tokens": [t for t, s in ADDED_TOKENS[1:14] if s],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": PAD,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# --------------------------------------------------------------------------- model


def build_model_files(out: Path, vocab_size: int, seed: int, p: dict, eos_id: int, pad_id: int, im_end_id: int):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"],
        max_position_embeddings=p["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": p["rope_theta"]},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        max_window_layers=p["num_hidden_layers"],
        initializer_range=p["init_std"],
        bos_token_id=pad_id,   # Qwen2.5 sets bos to <|endoftext|> in config (never added to inputs)
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # Explicit init from one generator in sorted name order, so the weights do not depend on
    # how a transformers version happens to initialise modules.
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("norm.weight"):
            state[name] = torch.ones_like(tensor)
        elif name.endswith(".bias"):
            state[name] = torch.zeros_like(tensor)
        else:
            state[name] = torch.randn(tensor.shape, generator=gen, dtype=torch.float32) * p["init_std"]
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out, safe_serialization=True)
    # Qwen2.5-7B-Instruct's generation_config, with this vocabulary's ids.
    GenerationConfig(
        bos_token_id=pad_id, pad_token_id=pad_id, eos_token_id=[im_end_id, pad_id],
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
    ).save_pretrained(out)
    return sum(t.numel() for t in state.values())


# --------------------------------------------------------------------------- build


def _params(seed: int, corpus: Path, overrides: dict) -> dict:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown tiny-model parameter(s): {sorted(unknown)}")
    p = {**DEFAULTS, **overrides}
    if p["hidden_size"] % p["num_attention_heads"]:
        raise ValueError("hidden_size must be a multiple of num_attention_heads")
    if p["hidden_size"] // p["num_attention_heads"] < 32:
        raise ValueError("head_dim must be >= 32 (vLLM's CPU attention refuses smaller heads)")
    docs = "\n".join(docs_texts()).encode("utf-8")
    # the inputs that decide the files, so a complete folder from other inputs is never reused
    return {**p, "seed": seed, "corpus_sha256": sha256(corpus), "docs_sha256": hashlib.sha256(docs).hexdigest()}


def is_complete(out_dir: str | os.PathLike) -> bool:
    out = Path(out_dir)
    return all((out / f).is_file() for f in FILES + [MANIFEST])


def build(out_dir: str | os.PathLike, seed: int = 0, corpus: str | os.PathLike | None = None, **overrides) -> dict:
    """Build the tiny model into ``out_dir`` (atomically) and return its manifest.

    A complete ``out_dir`` built with the same parameters is left alone; one built with other
    parameters is an error (delete it to rebuild), never silently reused.
    """
    out = Path(out_dir)
    corpus = Path(corpus) if corpus else DEFAULT_CORPUS
    params = _params(seed, corpus, overrides)
    if is_complete(out):
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if manifest["params"] != params:
            raise FileExistsError(f"{out} holds a tiny model built with other parameters; remove it to rebuild")
        return manifest
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but is not a complete tiny model; remove it to rebuild")

    t0 = time.time()
    with staged(out) as tmp:
        tok = build_tokenizer(sample_texts(corpus) + docs_texts(), params["vocab_size"])
        tok.save(str(tmp / "tokenizer.json"))
        ids = {t: tok.token_to_id(t) for t, _ in ADDED_TOKENS}
        cfg = tokenizer_config(params["max_position_embeddings"])
        cfg["added_tokens_decoder"] = {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": s}
            for t, s in ADDED_TOKENS
        }
        write_json(tmp / "tokenizer_config.json", cfg)
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        n_params = build_model_files(tmp, vocab_size, seed, params, ids[EOS], ids[PAD], ids["<|im_end|>"])
        manifest = {
            "params": params,
            "vocab_size": vocab_size,
            "parameters": n_params,
            "files": {f: sha256(tmp / f) for f in FILES},
        }
        write_json(tmp / MANIFEST, manifest)
    print(f"built tiny model in {out} ({n_params:,} parameters, vocab {vocab_size}, {time.time() - t0:.1f}s)",
          file=sys.stderr)
    return manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the tiny Qwen2 model + tokenizer (deterministic).")
    ap.add_argument("--out", required=True, help="output folder (skipped if it already holds this model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default=None, help=f"ToolACE-schema JSONL for the tokenizer (default {DEFAULT_CORPUS})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help=f"override a shape parameter, e.g. --set hidden_size=1536 (one of {sorted(DEFAULTS)})")
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    existed = is_complete(args.out)
    manifest = build(args.out, seed=args.seed, corpus=args.corpus, **overrides)
    if existed:
        print(f"{args.out} is complete; nothing to do", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "vocab_size": manifest["vocab_size"], "parameters": manifest["parameters"]}))


if __name__ == "__main__":
    main()
