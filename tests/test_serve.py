"""Merge and serve for real: merged weights equal base + adapter delta; the vLLM server answers
chat, streaming and tool calls; the unmerged adapter is served under its own name."""
from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import jsonschema
import torch
from safetensors import safe_open

from conftest import hydra_args, make, read_json, start_server, stop_server, whitespace_bias
from experiments.core.procs import process_alive as pid_alive

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city.", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit", "daily"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                  "daily": {"type": "boolean"}}}}}


def post(endpoint: dict, path: str, body: dict, stream: bool = False):
    req = urllib.request.Request(endpoint["base_url"] + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=120)
    if stream:
        return [json.loads(line[6:]) for line in resp.read().decode().splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"]
    return json.load(resp)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}


def test_merged_weights_equal_base_plus_dora_delta(merged_run):
    info = read_json(merged_run / "run.json")
    cfg = read_json(merged_run / "adapter" / "adapter_config.json")
    assert cfg["use_dora"] is True
    scaling = cfg["lora_alpha"] / cfg["r"]
    base = tensors(Path(info["model_path"]) / "model.safetensors")
    adapter = tensors(merged_run / "adapter" / "adapter_model.safetensors")
    merged = tensors(merged_run / "merged" / "model.safetensors")
    checked = 0
    for key in adapter:
        if not key.endswith("lora_A.weight"):
            continue
        prefix = key[len("base_model.model."):-len(".lora_A.weight")]
        a, b = adapter[key], adapter[key.replace("lora_A", "lora_B")]
        magnitude = adapter[f"base_model.model.{prefix}.lora_magnitude_vector"]
        # DoRA: W' = m * (W + s*BA) / ||W + s*BA|| (row norms), as in peft's merge.
        direction = base[f"{prefix}.weight"] + scaling * (b @ a)
        expected = (magnitude / direction.norm(p=2, dim=1)).unsqueeze(1) * direction
        assert torch.allclose(merged[f"{prefix}.weight"], expected, atol=1e-4), prefix
        assert not torch.allclose(merged[f"{prefix}.weight"], base[f"{prefix}.weight"], atol=1e-6)
        checked += 1
    assert checked == len(cfg["target_modules"]) * 2  # every targeted projection of both layers
    for key in ("model.embed_tokens.weight", "model.norm.weight"):  # untouched weights stay
        assert torch.equal(merged[key], base[key])
    assert "chat_template" in (merged_run / "merged" / "tokenizer_config.json").read_text() or \
        (merged_run / "merged" / "chat_template.jinja").exists()


def test_merging_twice_is_refused_and_loses_nothing(merged_run):
    before = (merged_run / "merged" / "model.safetensors").stat().st_mtime_ns
    proc = make("merge", f"RUN={merged_run.name}", check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (merged_run / "merged" / "model.safetensors").stat().st_mtime_ns == before


def test_merging_a_run_without_adapter_is_refused(results_dir):
    run = results_dir / "test-no-adapter"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "model_path": "/nowhere"}))
    proc = make("merge", f"RUN={run.name}", check=False)
    assert proc.returncode != 0 and "no adapter" in proc.stderr


def test_chat_completion_has_text_and_usage(merged_server):
    out = post(merged_server, "/chat/completions", {"model": merged_server["model"], "max_tokens": 16, "temperature": 0,
                                                    "messages": [{"role": "user", "content": "Hello"}]})
    assert isinstance(out["choices"][0]["message"]["content"], str)
    assert out["usage"]["completion_tokens"] > 0 and out["usage"]["prompt_tokens"] > 0


def test_streaming_yields_chunks_and_usage(merged_server):
    chunks = post(merged_server, "/chat/completions", {
        "model": merged_server["model"], "max_tokens": 16, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "Hello"}]}, stream=True)
    deltas = [c for c in chunks if c.get("choices")]
    assert len(deltas) >= 2
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] > 0


def test_named_strict_tool_comes_back_parsed(merged_server, merged_run):
    out = post(merged_server, "/chat/completions", {
        "model": merged_server["model"], "max_tokens": 64, "temperature": 0,
        "logit_bias": whitespace_bias(merged_run / "merged"),
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}], "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    calls = out["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), WEATHER_TOOL["function"]["parameters"])


def test_server_records_endpoint_and_pid(merged_server, merged_run):
    assert merged_server["base_url"].startswith("http://127.0.0.1:")
    assert merged_server["model"] == f"{merged_run.name}-merged"
    assert pid_alive(int((merged_run / "serve" / "merged" / "server.pid").read_text()))
    assert "--tool-call-parser" in merged_server["command"] and "hermes" in merged_server["command"]


def test_port_in_use_is_a_clear_error(merged_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = make("serve", f"RUN={merged_run.name}", "MODEL=base", hydra_args(f"serve.port={port}"), check=False)
    assert proc.returncode != 0 and "already in use" in proc.stderr and str(port) in proc.stderr


def test_unmerged_adapter_served_under_its_own_name_differs_from_base(trained_run):
    run = trained_run("qlora")  # vLLM applies LoRA adapters; DoRA is merged instead
    endpoint = start_server(run, "adapter")
    try:
        models = {m["id"] for m in json.load(urllib.request.urlopen(endpoint["base_url"] + "/models"))["data"]}
        assert {f"{run.name}-adapter", f"{run.name}-base"} <= models
        body = {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 5,
                "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
        first = {name: post(endpoint, "/chat/completions", {**body, "model": name})["choices"][0]["logprobs"]["content"][0]
                 for name in (f"{run.name}-adapter", f"{run.name}-base")}
        lp = {n: {t["token"]: t["logprob"] for t in c["top_logprobs"]} for n, c in first.items()}
        a, b = lp.values()
        assert a != b  # the adapter changes the distribution
        pid = endpoint["pid"]
    finally:
        stop_server(run, "adapter")
    assert not pid_alive(pid) and not (run / "serve" / "adapter" / "server.pid").exists()
