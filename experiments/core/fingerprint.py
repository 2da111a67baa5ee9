"""Fingerprints of what a model folder renders and tokenizes: SHA-256 digests of the chat template,
the tokenizer files, the special/added tokens, and the text one training row renders to.

Training records them in run.json; merge, serve, eval and bench compare against them, so a model
served or scored with another template or tokenizer than it was trained with is caught by name.

Pure functions over the files of a folder (read here, nothing written). Rendering uses
transformers' own chat-template renderer (imported on first use: the train and eval envs have it).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

# What makes up "the tokenizer" on disk (any of them that exist). tokenizer_config.json is left out
# on purpose: it also holds the chat template and loader options that save_pretrained rewrites.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")
# Keys of tokenizer.json that decide token ids. A transformers re-save (Axolotl's output_dir, a
# merge) rewrites offset-only flags (trim_offsets), empty-string vs null affixes and an empty
# post-processor; those change no id and are normalised away.
ID_MODEL_KEYS = ("type", "vocab", "merges", "unk_token", "byte_fallback", "fuse_unk", "dropout", "ignore_merges",
                 "continuing_subword_prefix", "end_of_word_suffix")
TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")
COMPARED = ("chat_template", "tokenizer")  # what must be equal between stages


class FingerprintError(ValueError):
    """A model folder without a tokenizer or chat template; the message names the folder."""


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def chat_template(folder: Path) -> tuple[str, str]:
    """(template text, file it came from) of a model folder, as transformers reads it: a
    chat_template.jinja beside the tokenizer wins over tokenizer_config.json's `chat_template`
    (for a list of named templates: the one named "default")."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(), str(folder / "chat_template.jinja")
    path = folder / "tokenizer_config.json"
    if path.is_file():
        tpl = json.loads(path.read_text()).get("chat_template")
        if isinstance(tpl, list):
            tpl = {t.get("name"): t.get("template") for t in tpl}.get("default")
        if isinstance(tpl, str) and tpl:
            return tpl, str(path)
    raise FingerprintError(f"{folder}: no chat template (neither chat_template.jinja nor "
                           f"tokenizer_config.json's chat_template)")


def _without_offsets(node):
    if isinstance(node, dict):
        return {k: _without_offsets(v) for k, v in node.items() if k != "trim_offsets"}
    return [_without_offsets(v) for v in node] if isinstance(node, list) else node


def tokenization(tok_json: dict) -> dict:
    """The part of a tokenizer.json that decides which ids a text gets (see ID_MODEL_KEYS)."""
    model = {k: (tok_json.get("model", {}).get(k) or None) for k in ID_MODEL_KEYS}
    post = tok_json.get("post_processor")
    adds = post and (post.get("special_tokens") or post.get("processors") or post.get("sep") or post.get("cls"))
    return {"normalizer": tok_json.get("normalizer"), "pre_tokenizer": _without_offsets(tok_json.get("pre_tokenizer")),
            "model": model, "added_tokens": tok_json.get("added_tokens"), "post_processor": post if adds else None}


def tokenizer_digest(folder: Path) -> tuple[str, list[str]]:
    """(digest, files) of the tokenizer: what of tokenizer.json decides token ids, as canonical
    JSON (key order, whitespace and a re-save's offset flags do not count), other files byte for byte."""
    folder, parts, files = Path(folder), [], []
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text()) if name.endswith(".json") else None
            body = (_canonical(tokenization(data) if name == "tokenizer.json" else data) if data is not None
                    else path.read_bytes().hex())
            parts.append(f"{name}\n{body}")
            files.append(str(path))
    if not files:
        raise FingerprintError(f"{folder}: no tokenizer file (one of {', '.join(TOKENIZER_FILES)})")
    return sha256("\n".join(parts)), files


def special_tokens(folder: Path) -> dict:
    """The added tokens (id, text, special flag) and the named special tokens of a folder."""
    folder = Path(folder)
    added = []
    if (folder / "tokenizer.json").is_file():
        added = [{"id": t["id"], "content": t["content"], "special": bool(t.get("special"))}
                 for t in json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])]
    config = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
    named = {k: config.get(k) for k in SPECIAL_KEYS}
    # transformers 5 writes additional_special_tokens as extra_special_tokens
    named["additional_special_tokens"] = named["additional_special_tokens"] or config.get("extra_special_tokens")
    return {"added": sorted(added, key=lambda t: t["id"]), "named": named}


def render(template: str, messages: list[dict], tools: list[dict] | None = None,
           add_generation_prompt: bool = False, **kwargs) -> str:
    """One conversation through a chat template with transformers' renderer (the one Axolotl's
    chat_template strategy and vLLM's chat endpoints use), eos/bos and other named tokens as kwargs."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], tools=tools or None, chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


def template_kwargs(folder: Path) -> dict:
    """The named special tokens a template may refer to (eos_token, bos_token, ...)."""
    named = special_tokens(folder)["named"]
    return {k: v for k, v in named.items() if isinstance(v, str)}


def fingerprints(folder: Path, row: dict | None = None, template: tuple[str, str] | None = None) -> dict:
    """Every digest of a model folder; with a row in native form ({messages, tools}, decoded
    arguments), also the digest of its rendering. `template` overrides the folder's own
    (text, source) when training used another one (Axolotl's `chat_template: jinja` or a named one)."""
    text, source = template or chat_template(folder)
    tok, files = tokenizer_digest(folder)
    fp = {
        "chat_template": sha256(text), "chat_template_file": source,
        "tokenizer": tok, "tokenizer_files": files,
        "special_tokens": sha256(_canonical(special_tokens(folder))),
    }
    if row is not None:
        fp["first_row"] = sha256(render(text, row["messages"], row.get("tools"), **template_kwargs(folder)))
    return fp


def mismatches(expected: dict, actual: dict, keys=COMPARED) -> list[str]:
    """Human-readable differences of the compared digests (empty when they agree), naming the files."""
    problems = []
    for key in keys:
        if expected.get(key) and actual.get(key) and expected[key] != actual[key]:
            where = {"chat_template": "chat_template_file", "tokenizer": "tokenizer_files"}.get(key, key)
            problems.append(f"{key} digest {actual[key][:12]} ({actual.get(where)}) != the run's "
                            f"{expected[key][:12]} ({expected.get(where)})")
    return problems


def summary(fp: dict | None) -> dict:
    """The part of a fingerprint a summary.json records."""
    return {k: v for k, v in (fp or {}).items() if k in ("chat_template", "tokenizer", "special_tokens",
                                                          "chat_template_file", "weights")}


def weights_digest(folder: Path) -> str:
    """SHA-256 over the folder's *.safetensors files (sorted by name, streamed)."""
    h, files = hashlib.sha256(), sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FingerprintError(f"{folder}: no *.safetensors weights")
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def check_folder(expected: dict | None, folder: Path, what: str) -> dict:
    """The folder's fingerprints, after checking them against a run's (None: nothing recorded).
    Raises FingerprintError naming both digests and files when template or tokenizer differ."""
    actual = fingerprints(folder)
    problems = mismatches(expected or {}, actual)
    if problems:
        raise FingerprintError(f"{what} {folder} does not match what the run trained with: " + "; ".join(problems))
    return actual
