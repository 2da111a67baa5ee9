"""Seeded request builders: workload config -> list of `/v1/chat/completions` bodies.

A body holds everything but `model` and the streaming options, which the client adds. The same
config (seed included) always gives the same list.

- bfcl:      first turn (messages + tools) of BFCL's single-turn entries, tools converted to the
             OpenAI shape the way BFCL's own OpenAI handler does it (Gorilla types -> JSON Schema
             types, dots in names -> underscores).
- toolace:   the ToolACE-schema sample through experiments.data.toolace's converter: system + first
             user turn, with the row's tools.
- synthetic: a user message of `input_tokens` tokens (exact with `tokenizer`, else ~1 token per
             word) and exactly `max_tokens` output tokens (`ignore_eos`), for roofline comparisons.
             With `system_prompt_tokens: N`, every request also starts with the same system prompt
             of N words (one long shared prefix, as a fixed agent prompt or tool list gives):
             the workload that prefix caching is for (conf/workload/shared_prefix.yaml).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import random
from pathlib import Path
from typing import Any, Mapping

BFCL_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple",
                   "live_simple", "live_multiple")
# Common English words: about one token each (with the leading space) in byte-level BPE vocabularies.
_WORDS = ("the of and to in is was for on are with as be at by this had not but from or have an "
          "they which one you were her all she there would their we him been has when who will "
          "more no if out so said what up its about into than them can only other new some could "
          "time these two may then do first any my now such like our over man me even most made "
          "after also did many before must through back years where much your way well down").split()


def build_requests(cfg: Mapping[str, Any], n: int, seed: int | None = None) -> list[dict]:
    """n request bodies for the workload `cfg["name"]`; seed defaults to cfg["seed"]."""
    seed = int(cfg.get("seed", 0) if seed is None else seed)
    name = cfg["name"]
    if name == "synthetic":
        return _synthetic(cfg, n, seed)
    if name == "bfcl":
        pool = _bfcl_pool(cfg)
    elif name == "toolace":
        pool = _toolace_pool(Path(cfg["path"]))
    else:
        raise ValueError(f"workload.name={name!r}: expected bfcl, toolace or synthetic")
    if not pool:
        raise ValueError(f"workload {name}: no usable request in the data")
    # Shuffle once, then walk the pool in order (wrapping when n exceeds it): no repeats while
    # the pool lasts, so prefix caching does not flatter the numbers.
    random.Random(seed).shuffle(pool)
    sampling = _sampling(cfg, ignore_eos_default=False)
    return [{**copy.deepcopy(pool[i % len(pool)]), **sampling} for i in range(n)]


def _sampling(cfg: Mapping[str, Any], ignore_eos_default: bool) -> dict:
    body = {"max_tokens": int(cfg.get("max_tokens", 128)),
            "temperature": float(cfg.get("temperature", 0.0))}
    if cfg.get("ignore_eos", ignore_eos_default):
        body["ignore_eos"] = True          # vLLM extension: generate exactly max_tokens
    body.update(dict(cfg.get("extra_body") or {}))
    return body


# --- bfcl ---------------------------------------------------------------------------------

def bfcl_data_dir() -> Path:
    """bfcl-eval's shipped data folder, found without importing bfcl_eval (its import has side
    effects: it creates result/ and score/ folders and loads a .env)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("workload bfcl: package bfcl_eval is not installed in this environment")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _bfcl_pool(cfg: Mapping[str, Any]) -> list[dict]:
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI  # a side-effect-free module

    data_dir = Path(cfg.get("data_dir") or bfcl_data_dir())
    pool = []
    for cat in cfg.get("categories") or BFCL_CATEGORIES:
        path = data_dir / f"BFCL_v4_{cat}.json"
        if not path.is_file():
            raise ValueError(f"workload bfcl: category {cat!r} has no file {path}")
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)          # JSON Lines despite the .json suffix
            if "function" not in entry:
                continue                      # multi-turn/agentic entries carry no tool list here
            pool.append({"messages": entry["question"][0],
                         "tools": [bfcl_tool(f, GORILLA_TO_OPENAPI) for f in entry["function"]]})
    return pool


def bfcl_tool(func: dict, mapping: Mapping[str, str]) -> dict:
    """A BFCL function doc -> an OpenAI tool (what bfcl's convert_to_tool does for OpenAI)."""
    func = copy.deepcopy(func)
    params = func.get("parameters") or {"properties": {}}
    params["type"] = "object"
    params["properties"] = {k: _schema(v, mapping) for k, v in (params.get("properties") or {}).items()}
    return {"type": "function", "function": {
        "name": func["name"].replace(".", "_"), "description": func.get("description", ""),
        "parameters": params}}


def _schema(node: dict, mapping: Mapping[str, str]) -> dict:
    node = dict(node)
    gorilla = node.get("type", "string")
    node["type"] = mapping.get(gorilla, "string")
    if gorilla == "float":
        node["format"] = "float"
    if "properties" in node:
        node["properties"] = {k: _schema(v, mapping) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _schema(node["items"], mapping)
    return node


# --- toolace ------------------------------------------------------------------------------

def _toolace_pool(path: Path) -> list[dict]:
    """Raw ToolACE rows (or rows already converted by experiments.data.toolace, in its storage form)
    -> the repository's converter -> plain OpenAI dicts; rows it rejects are left out."""
    from experiments.data.toolace import convert_rows, load_raw, to_native

    if not path.is_file():
        raise ValueError(f"workload toolace: {path} not found")
    rows = load_raw(path=str(path))
    if rows and "messages" not in rows[0]:
        rows, _rejects = convert_rows(rows)
    pool = []
    for row in map(to_native, rows):
        prompt = _until_first_user(row["messages"])
        if prompt:
            pool.append({"messages": prompt, **({"tools": row["tools"]} if row["tools"] else {})})
    return pool


def _until_first_user(messages: list[dict]) -> list[dict]:
    """System turn(s) plus the first user turn: the request a model sees before its first reply."""
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            return [dict(x) for x in messages[: i + 1]]
    return []


# --- synthetic ----------------------------------------------------------------------------

def _synthetic(cfg: Mapping[str, Any], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    n_in = int(cfg.get("input_tokens", 256))
    tok = _load_tokenizer(cfg["tokenizer"]) if cfg.get("tokenizer") else None
    sampling = _sampling(cfg, ignore_eos_default=True)
    n_sys = int(cfg.get("system_prompt_tokens") or 0)
    if n_sys < 0:
        raise ValueError(f"workload synthetic: system_prompt_tokens={n_sys} must be >= 0")
    # Its own generator, so the user messages are the same with and without the shared prefix.
    shared = " ".join(random.Random(f"system-{seed}").choice(_WORDS) for _ in range(n_sys))
    system = [{"role": "system", "content": shared}] if n_sys else []
    out = []
    for _ in range(n):
        # Random words: every prompt differs, so no request reuses another's cached prefix.
        text = " ".join(rng.choice(_WORDS) for _ in range(n_in))
        if tok is not None:
            text = _fit_to_tokens(tok, text, n_in)
        out.append({"messages": [*system, {"role": "user", "content": text}], **sampling})
    return out


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _fit_to_tokens(tok, text: str, n: int) -> str:
    """Cut text to exactly n tokens of tok (decode/encode may merge across the cut: retry)."""
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) < n:
        raise ValueError(f"synthetic: {len(ids)} tokens in the draft, fewer than input_tokens={n}")
    for cut in range(n, max(n - 8, 0), -1):
        candidate = tok.decode(ids[:cut])
        if len(tok.encode(candidate, add_special_tokens=False)) == n:
            return candidate
    return tok.decode(ids[:n])
