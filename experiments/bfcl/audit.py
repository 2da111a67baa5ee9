"""The audit trail of a BFCL evaluation: what scored it, against what server, with which sampling.

Readers of the server (its /version, endpoint.json, log) and of model folders at the top; pure
derivations below. The effective sampling parameters are the per-request values we send (they
win over any server default) plus what the server applies to the rest: its generation-config
defaults, read back from its own log line ("Default vLLM sampling parameters have been
overridden by ..."), and its max_tokens cap (`--override-generation-config` max_new_tokens).
"""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from experiments.models.folder import sha256 as sha256_file

# Files whose bytes define what the tokenizer and the chat template do; weights are large, so
# they are named by their index/size, not hashed.
DIGEST_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
                "chat_template.jinja", "special_tokens_map.json", "model.safetensors.index.json")
_DEFAULTS_LINE = re.compile(r"Default vLLM sampling parameters have been overridden by (.*?): `(\{.*?\})`")


# ---------------------------------------------------------------- readers (I/O)

def server_version(base_url: str, api_key: str | None = None) -> str | None:
    """vLLM answers GET /version; other servers may not (None)."""
    root = base_url[: -len("/v1")] if base_url.rstrip("/").endswith("/v1") else base_url
    request = urllib.request.Request(f"{root.rstrip('/')}/version",
                                     headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def folder_digests(folder: str | Path | None) -> dict | None:
    """sha256 of a model folder's config/tokenizer/template files; weights by name and size."""
    if not folder or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    out = {name: sha256_file(folder / name) for name in DIGEST_FILES if (folder / name).is_file()}
    out["weights"] = {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}
    return out


def read_log(path: str | Path | None) -> str:
    try:
        return Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""


# ---------------------------------------------------------------- pure

def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def server_sampling(argv: list[str] | None, log_text: str) -> dict:
    """What a vLLM server applies to parameters a request leaves out, from its argv and its log."""
    if not argv:
        return {"known": False, "why": "no server command recorded (ENDPOINT= or a server we did not start)"}
    override = json.loads(_flag(argv, "--override-generation-config") or "{}")
    found = _DEFAULTS_LINE.findall(log_text)
    defaults = {}
    if found:
        try:
            defaults = json.loads(found[-1][1].replace("'", '"'))
        except json.JSONDecodeError:
            defaults = {"unparsed": found[-1][1]}
    return {"known": True, "generation_config": _flag(argv, "--generation-config") or "auto",
            "override_generation_config": override, "defaults_from_log": defaults,
            "defaults_source": found[-1][0] if found else None,
            "max_tokens_cap": override.get("max_new_tokens"),
            "max_model_len": int(_flag(argv, "--max-model-len")) if _flag(argv, "--max-model-len") else None}


def effective_sampling(sent: dict, temperature: float, path: str, server: dict, context: int | None) -> dict:
    """Per parameter: the value the engine used and where it came from (request or server)."""
    out = {"temperature": {"value": temperature, "from": "request"}}
    out.update({k: {"value": v, "from": "request"} for k, v in sent.items()})
    for k, v in (server.get("defaults_from_log") or {}).items():
        if k not in out and k != "max_tokens":
            out[k] = {"value": v, "from": "server default"}
    cap = server.get("max_tokens_cap")
    if path == "native":
        asked = f"min(4096, {context} - prompt_tokens - 2)" if context else "min(4096, context - prompt_tokens - 2)"
        out["max_tokens"] = {"value": asked + (f", capped at {cap} by the server" if cap else ""), "from": "request (bfcl)"}
    else:
        out["max_tokens"] = {"value": cap if cap else "server default (max_model_len - prompt_tokens)",
                             "from": "server" if cap else "server (none sent by bfcl's chat handler)"}
    return out


def trail(job: dict, *, server: dict | None, server_version: str | None) -> dict:
    """The audit block of summary.json (minus the handler and data, which the worker records)."""
    server = server or {}
    argv = server.get("command")
    sampling = server_sampling(argv, read_log(server.get("log")))
    tokenizer = job.get("tokenizer_path")
    context = None
    if tokenizer and (Path(tokenizer) / "config.json").is_file():
        context = json.loads((Path(tokenizer) / "config.json").read_text()).get("max_position_embeddings")
    model_folder = server.get("model_path") or tokenizer
    return {
        "path": job["path"],
        "served_model": {"name": job["served_model_name"], "folder": model_folder,
                         "digests": folder_digests(model_folder)},
        "tokenizer_folder": tokenizer, "context_length_for_max_tokens": context if job["path"] == "native" else None,
        "server": {"base_url": job["base_url"], "vllm_version": server_version, "argv": argv,
                   "log": server.get("log")},
        "sampling": {"sent_per_request": {"temperature": job["temperature"], **job["sampling"]},
                     "server": sampling,
                     "effective": effective_sampling(job["sampling"], job["temperature"], job["path"], sampling, context)},
        "num_threads": job["num_threads"],
        "include_input_log": job.get("include_input_log", False),
    }
