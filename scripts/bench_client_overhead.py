"""How fast can each client drive a server that costs nothing? Ours vs vLLM's benchmark client.

A local stub server in instant mode (experiments.bench.stub_server --instant: the whole stream
in one write, no delays) answers every request; each client runs pinned to one core (taskset)
at the same concurrency and request count, the stub on another core. Printed: requests/s and
output tokens/s each client sustained, and the stub's CPU use during the run (near 100 % means
the stub, not the client, set the pace). A benchmark, not a test: nothing is asserted.

  python scripts/bench_client_overhead.py --tokenizer .cache/models/tiny-qwen2 [--concurrency 64]

--tokenizer: any local HF tokenizer folder (vLLM's benchmark counts prompt tokens with it).
Run with the eval env's python; vLLM's client runs in the serve env (--serve-python).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.core.procs import healthy  # noqa: E402
from scripts.bench_crosscheck import VLLM_BENCH, default_serve_python  # noqa: E402

OURS = """
import json, sys
from experiments.bench import metrics
from experiments.bench.client import LoadSpec, run_level
conc, n, tokens, url = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = {"messages": [{"role": "user", "content": "hello " * 32}], "max_tokens": tokens}
res = run_level(url, "stub", [body], LoadSpec(concurrency=conc, num_requests=n, warmup=0), progress=False)
s = metrics.summarize(res.records)
print("RESULT " + json.dumps({"requests_per_s": s["throughput"]["requests_per_s"],
                              "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
                              "failed": s["requests"]["failed"], "duration_s": s["window_s"]}))
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], stub_pid: int) -> tuple[str, float]:
    """Run cmd; return its output and the CPU seconds the stub spent meanwhile (the stub idles
    while a client imports, so this over the client's own benchmark duration is its load)."""
    c0 = cpu_seconds(stub_pid)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed (rc={out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout, cpu_seconds(stub_pid) - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--num-requests", type=int, default=3000)
    p.add_argument("--tokens", type=int, default=32, help="output tokens per response")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=8152)
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--stub-cpu", default="1")
    p.add_argument("--serve-python", default=default_serve_python())
    a = p.parse_args(argv)
    url = f"http://127.0.0.1:{a.port}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    dataset = tmp / "prompts.json"
    dataset.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hello " * 32},
                                                      {"from": "gpt", "value": "-"}]}] * a.num_requests))

    stub = subprocess.Popen(["taskset", "-c", a.stub_cpu, sys.executable, "-m", "experiments.bench.stub_server",
                             "--port", str(a.port), "--instant", "--n-tokens", str(a.tokens)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = {"ours": [], "vllm": []}
    try:
        for _ in range(100):
            if healthy(url, timeout_s=1):
                break
            time.sleep(0.1)
        pin = ["taskset", "-c", a.client_cpu]
        for rep in range(a.repeats):
            out, stub_s = timed([*pin, sys.executable, "-c", OURS, str(a.concurrency), str(a.num_requests),
                               str(a.tokens), url], stub.pid)
            ours = json.loads(out.split("RESULT ", 1)[1])
            results["ours"].append({**ours, "stub_cpu": stub_s / ours["duration_s"]})

            name = f"vllm_{rep}.json"
            _, stub_s = timed([*pin, a.serve_python, "-c", VLLM_BENCH, "--backend", "openai-chat",
                             "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", "stub",
                             "--tokenizer", a.tokenizer, "--dataset-name", "sharegpt", "--dataset-path", str(dataset),
                             "--disable-shuffle", "--output-len", str(a.tokens), "--num-prompts", str(a.num_requests),
                             "--max-concurrency", str(a.concurrency), "--request-rate", "inf", "--disable-tqdm",
                             "--save-result", "--result-dir", str(tmp), "--result-filename", name], stub.pid)
            v = json.loads((tmp / name).read_text())
            results["vllm"].append({"requests_per_s": v["request_throughput"], "failed": v.get("failed"),
                                    "output_tokens_per_s": v["output_throughput"],
                                    "stub_cpu": stub_s / v["duration"]})
    finally:
        os.killpg(stub.pid, signal.SIGTERM)
        stub.wait(timeout=10)

    print(f"\nclient pinned to CPU {a.client_cpu}, stub on CPU {a.stub_cpu}; concurrency {a.concurrency}, "
          f"{a.num_requests} requests x {a.tokens} tokens, {a.repeats} run(s) each")
    print(f"{'client':<8}{'run':>4}{'req/s':>10}{'tok/s':>12}{'failed':>8}{'stub CPU':>10}")
    for who, runs in results.items():
        for i, r in enumerate(runs):
            print(f"{who:<8}{i:>4}{r['requests_per_s']:>10.0f}{r['output_tokens_per_s']:>12.0f}"
                  f"{r['failed'] or 0:>8}{r['stub_cpu']:>9.0%}")
    med = {who: statistics.median(r["requests_per_s"] for r in runs) for who, runs in results.items()}
    print(f"\nmedian req/s: ours {med['ours']:.0f}, vLLM {med['vllm']:.0f}, ours/vLLM {med['ours'] / med['vllm']:.2f}")
    (tmp / "overhead.json").write_text(json.dumps(results, indent=2))
    print(f"results in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
