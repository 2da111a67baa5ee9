"""Load generator: records -> metrics against a stub server with known delays and faults.

The stub (experiments.bench.stub_server) runs as a subprocess; its delays are what the
reported numbers must recover. Nothing here times our own speed (see scripts/bench_*.py).
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fake_run, free_port, mlflow_statuses, stage_cli, stub_server

from experiments.bench import metrics
from experiments.bench.client import LoadSpec, chat_url, run_level
from experiments.bench.records import RequestRecord
from experiments.bench.run import load_records, run_bench, write_records
from experiments.bench.workloads import build_requests

REPO = Path(__file__).resolve().parent.parent
TTFT_MS, ITL_MS, N_TOKENS = 40.0, 10.0, 11
E2E_MS = TTFT_MS + (N_TOKENS - 1) * ITL_MS           # 140 ms
SLACK_MS = 15.0                                       # scheduling jitter on a busy 2-core box


STUB = ("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--n-tokens", str(N_TOKENS))  # the known timings


@pytest.fixture(scope="module")
def stub():
    with stub_server(*STUB) as (url, _):
        yield url


def _body(**stub) -> dict:
    body = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": N_TOKENS}
    return {**body, "stub": stub} if stub else body


# --- against the stub -----------------------------------------------------------------------

def _timing_misses(s: dict, concurrency: int) -> list[str]:
    """Upper bounds on how far the measured numbers may sit above the stub's known delays."""
    expected_rps = concurrency / (E2E_MS / 1000)
    checks = {
        "ttft median": (s["ttft_ms"]["median"], TTFT_MS, SLACK_MS),
        "ttft mean": (s["ttft_ms"]["mean"], TTFT_MS, SLACK_MS),
        "tpot mean": (s["tpot_ms"]["mean"], ITL_MS, 1.5),
        "itl median": (s["itl_ms"]["median"], ITL_MS, 2.0),
        "itl mean": (s["itl_ms"]["mean"], ITL_MS, 1.5),
        "e2e median": (s["e2e_ms"]["median"], E2E_MS, SLACK_MS),
        "req/s": (s["throughput"]["requests_per_s"], expected_rps, 0.15 * expected_rps),
        "out tok/s": (s["throughput"]["output_tokens_per_s"], expected_rps * N_TOKENS,
                      0.15 * expected_rps * N_TOKENS),
    }
    return [f"{k}: {v:.2f} vs {want:.2f} +- {tol:.2f}" for k, (v, want, tol) in checks.items()
            if abs(v - want) > tol] + ([] if s["littles_law"]["ok"] else ["Little's law"])


@pytest.mark.parametrize("concurrency", [1, 16])
def test_known_delays_are_recovered(stub, concurrency):
    n = 16 if concurrency == 1 else 48
    misses = []
    # A shared 2-core machine can starve the stub or the client for tens of ms; that is load,
    # not measurement error, so a level that misses the upper bounds is measured again (3 tries).
    for _attempt in range(3):
        result = run_level(stub, "stub", [_body()] * (n + 2),
                           LoadSpec(concurrency=concurrency, num_requests=n, warmup=2), progress=False)
        s = metrics.summarize(result.records, target_concurrency=concurrency)
        assert s["requests"] == {"total": n, "succeeded": n, "failed": 0, "error_rate": 0.0,
                                 "errors_by_kind": {}, "without_tokens": 0, "usage_missing": 0}
        # The stub cannot answer early: lower bounds hold exactly, on every try.
        assert all(r.first_token - r.start >= TTFT_MS / 1000 for r in result.records)
        assert all(r.end - r.start >= E2E_MS / 1000 for r in result.records)
        assert s["itl_ms"]["n"] == n * (N_TOKENS - 1)
        assert s["tokens"]["output_mean"] == N_TOKENS and s["tokens"]["prompt_mean"] == 3
        assert s["littles_law"]["mean_concurrency"] == pytest.approx(s["littles_law"]["throughput_x_mean_latency"])
        misses.append(_timing_misses(s, concurrency))
        if not misses[-1]:
            return
    pytest.fail(f"measured timing off the stub's known delays in every try: {misses}")


def test_role_chunk_is_not_the_first_token(stub):
    # The stub sends vLLM's role-only chunk at once and the first token 300 ms later.
    rec = run_level(stub, "stub", [_body(ttft_ms=300, n_tokens=3)], LoadSpec(concurrency=1, num_requests=1),
                    progress=False).records[0]
    assert rec.success
    assert rec.first_token - rec.start >= 0.300
    assert len(rec.token_times) == 3 and rec.token_times[0] == rec.first_token


def test_tool_call_delta_counts_as_a_token(stub):
    rec = run_level(stub, "stub", [_body(ttft_ms=100, n_tokens=4, tool_call=True)],
                    LoadSpec(concurrency=1, num_requests=1), progress=False).records[0]
    assert rec.success and rec.completion_tokens == 4
    assert len(rec.token_times) == 4 and rec.first_token - rec.start >= 0.100


def test_errors_are_recorded_and_counted(stub):
    """Each fault is told apart by what happened, never by which timer fired first: the faults
    that end by themselves run under a timeout no loaded machine reaches (60 s); only the hang,
    in a level of its own, relies on the client's timeout."""
    faults = [None, "http_500", "drop", "stream_error", "http_400"]
    bodies = [_body(fault=f) if f else _body() for f in faults]
    n = 2 * len(faults)
    result = run_level(stub, "stub", bodies, LoadSpec(concurrency=4, num_requests=n, timeout_s=60.0), progress=False)
    hang = run_level(stub, "stub", [_body(fault="hang")], LoadSpec(concurrency=2, num_requests=2, timeout_s=0.5),
                     progress=False)
    assert len(result.records) == n and len(hang.records) == 2   # the runs complete, nothing dropped
    by_id = {r.request_id: r for r in result.records}
    expected = {None: None, "http_500": "http_5xx", "drop": "connection_dropped",
                "stream_error": "stream_error", "http_400": "http_4xx"}
    for i in range(n):
        rec, fault = by_id[f"c4-{i}"], faults[i % len(faults)]
        assert rec.error_kind == expected[fault], (i, fault, rec.error)
        assert rec.success is (fault is None)
        assert rec.end is not None and (fault is None or rec.error)
    assert by_id["c4-1"].status == 500 and by_id["c4-4"].status == 400
    assert len(by_id["c4-2"].token_times) == N_TOKENS // 2     # tokens before the drop are kept
    for rec in hang.records:                                   # the role chunk came, then nothing
        assert rec.error_kind == "timeout" and rec.status == 200 and rec.first_token is None
        assert rec.end - rec.start >= 0.5                      # ended by our timeout, not before
    assert result.server_gone is None                          # a dropped stream alone is no outage

    records = result.records + hang.records
    s = metrics.summarize(records, slo_ttft_ms=1000, slo_e2e_ms=5000)
    assert s["requests"]["total"] == n + 2 and s["requests"]["failed"] == n
    assert s["requests"]["error_rate"] == pytest.approx(n / (n + 2))
    assert s["requests"]["errors_by_kind"] == {"http_5xx": 2, "connection_dropped": 2, "timeout": 2,
                                               "stream_error": 2, "http_4xx": 2}
    assert s["goodput"]["requests"] == 2 and s["goodput"]["fraction"] == pytest.approx(2 / (n + 2))
    assert s["ttft_ms"]["n"] == 2                          # latency stats: successful requests only


def test_connection_refused_is_recorded():
    port = free_port()                                    # nothing listens there
    rec = run_level(f"http://127.0.0.1:{port}", "m", [_body()], LoadSpec(concurrency=1, num_requests=1),
                    progress=False).records[0]
    assert not rec.success and rec.error_kind == "connection_error" and rec.status is None


def test_duration_cap_stops_issuing(stub):
    result = run_level(stub, "stub", [_body()], LoadSpec(concurrency=2, num_requests=1000, duration_s=0.5),
                       progress=False)
    # ~0.5 s / 0.14 s per request per slot: a handful, never the 1000 asked for.
    assert 2 <= len(result.records) <= 2 * math.ceil(0.5 / (E2E_MS / 1000)) + 2
    assert all(r.success for r in result.records)


def test_open_loop_poisson_is_seeded(stub):
    spec = LoadSpec(mode="open", rate=40.0, num_requests=20, seed=7)
    a = run_level(stub, "stub", [_body()], spec, progress=False).records
    b = run_level(stub, "stub", [_body()], spec, progress=False).records
    assert len(a) == len(b) == 20 and all(r.success for r in a)
    gaps = lambda recs: [y.scheduled - x.scheduled for x, y in zip(recs, recs[1:])]  # noqa: E731
    assert gaps(a) == pytest.approx(gaps(b), abs=1e-9)          # same seed, same arrival process
    s = metrics.summarize(a, offered_rate=40.0)
    assert s["littles_law"]["offered_rate"] == 40.0 and s["littles_law"]["arrival_rate"] > 0
    assert s["client_lag_ms"]["n"] == 20


def test_run_bench_writes_every_output(stub, tmp_path):
    summaries = run_bench(stub, "stub", tmp_path, concurrencies=[1, 4], num_requests=8, warmup=1,
                          workload={"name": "synthetic", "input_tokens": 16, "max_tokens": 5, "seed": 3},
                          slo={"ttft_ms": 500, "e2e_ms": 2000}, progress=False)
    assert [s["label"] for s in summaries] == ["c1", "c4"]
    for label in ("c1", "c4"):
        summary = json.loads((tmp_path / f"summary_{label}.json").read_text(), parse_constant=pytest.fail)
        assert summary["requests"]["total"] == 8 and summary["goodput"]["slo"]["ttft_ms"] == 500
        records = load_records(tmp_path / f"records_{label}.csv")
        assert len(records) == 8
        assert metrics.summarize(records)["ttft_ms"] == pytest.approx(metrics.summarize(records)["ttft_ms"])
    for name in ("sweep.csv", "sweep.md", "latency.png", "throughput.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))
    assert "| c4 |" in (tmp_path / "sweep.md").read_text()


# --- the server or the client dies ----------------------------------------------------------

WORKLOAD = {"name": "synthetic", "input_tokens": 16, "max_tokens": 5, "seed": 3}


def test_server_killed_mid_level_stops_the_bench(tmp_path):
    """The stub SIGKILLs itself when request 6 arrives: the level stops issuing, the next level
    never runs, bench.json says partial, the records of the level are on disk."""
    with stub_server(*STUB, "--die-after", "5") as (url, proc):
        summaries = run_bench(url, "stub", tmp_path, concurrencies=[2, 3], num_requests=40,
                              workload=WORKLOAD, progress=False)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert [s["label"] for s in summaries] == ["c2"]
    status = json.loads((tmp_path / "bench.json").read_text())
    assert status["status"] == "partial" and status["finished"] == [] and "during level c2" in status["server_gone"]
    assert "failed /health probes" in summaries[0]["server_gone"]
    records = load_records(tmp_path / "records_c2.csv")
    ok = [r for r in records if r.success]
    assert 4 <= len(ok) <= 5 and len(records) < 40            # stopped issuing once the server was gone
    assert {r.error_kind for r in records if not r.success} <= {"connection_dropped", "connection_error"}
    assert not (tmp_path / "summary_c3.json").exists() and not (tmp_path / "records_c3.csv").exists()


def test_killed_client_keeps_the_records_it_measured(stub, tmp_path):
    cmd = [sys.executable, "-m", "experiments.bench.run", "--endpoint", stub, "--model", "stub",
           "--out", str(tmp_path), "--concurrency", "1", "--num-requests", "100000", "--no-progress",
           "--workload", json.dumps(WORKLOAD)]
    client = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "records_c1.csv"
    try:
        for _ in range(600):                                   # wait for 5 rows, whatever the speed
            if path.exists() and len(path.read_text().splitlines()) > 5:
                break
            assert client.poll() is None, "the client ended before the kill"
            time.sleep(0.1)
    finally:
        client.kill()
        client.wait()
    records = load_records(path)
    assert len(records) >= 5 and all(r.success and r.completion_tokens == N_TOKENS for r in records)
    assert json.loads((tmp_path / "bench.json").read_text())["status"] == "running"  # never marked done


def test_make_bench_against_a_dying_server_fails_the_stage_and_a_rerun_gets_its_own_folder(tmp_path):
    from experiments.bench import stage as benchmark
    from experiments.core.config import compose

    results = tmp_path / "results"
    run = fake_run(results)
    overrides = ["profile=cpu", "workload=synthetic", "workload.input_tokens=16", "workload.max_tokens=5",
                 "bench.concurrency=[2,3]", "bench.num_requests=10", "bench.warmup_requests=0"]

    def make_bench(url):
        return stage_cli("experiments.bench.stage", run, f"{url}/v1", overrides)

    def statuses():
        return mlflow_statuses(results)

    with stub_server(*STUB, "--die-after", "12") as (url, _):
        first = make_bench(url)
    assert first.returncode == 3, first.stderr[-3000:]
    message = first.stderr.strip().splitlines()[-1]
    assert "the server went away" in message and "levels ['c3']" in message
    assert "make bench RUN=r1 MODEL=merged CONC=2,3 ENDPOINT=" in message
    info = json.loads((run / "run.json").read_text())
    assert info["stages"]["bench_external"] == "partial" and info["stage_counts"]["bench_external"]["levels_finished"] == 1
    assert statuses() == ["FAILED"]
    cfg = compose(overrides)
    assert not benchmark.is_complete(cfg, run, "external")
    first_dir = (run / "bench" / "external" / "latest").resolve()

    with stub_server(*STUB) as (url, _):
        second = make_bench(url)
    assert second.returncode == 0, second.stderr[-3000:]
    second_dir = (run / "bench" / "external" / "latest").resolve()
    assert second_dir != first_dir and second_dir.parent == first_dir.parent   # the first bench stays as it was
    assert json.loads((first_dir / "summary_c3.json").read_text())["server_gone"]
    assert sorted(p.name for p in second_dir.glob("summary_*.json")) == ["summary_c2.json", "summary_c3.json"]
    assert json.loads((run / "run.json").read_text())["stages"]["bench_external"] == "done"
    assert benchmark.is_complete(cfg, run, "external") and statuses() == ["FAILED", "FINISHED"]


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_make_bench_against_a_keyed_endpoint_sends_the_key_and_never_writes_it(tmp_path):
    key = "sk-h12-bench-" + "7" * 16
    results = tmp_path / "results"
    run = fake_run(results)
    overrides = ["profile=cpu", "workload=synthetic", "workload.input_tokens=16", "workload.max_tokens=5",
                 "bench.concurrency=[2]", "bench.num_requests=6", "bench.warmup_requests=1"]
    with stub_server(*STUB, "--api-key", key, key=key) as (url, _):
        without = stage_cli("experiments.bench.stage", run, f"{url}/v1", overrides)
        keyed = stage_cli("experiments.bench.stage", run, f"{url}/v1", overrides, VLLM_API_KEY=key)
    assert without.returncode == 2 and "Traceback" not in without.stderr
    assert without.stderr.strip().splitlines()[-1].startswith("[bench] error: ENDPOINT=") and "HTTP 401" in without.stderr
    assert keyed.returncode == 0, keyed.stderr[-3000:]
    summary = json.loads((run / "bench" / "external" / "latest" / "summary_c2.json").read_text())
    assert summary["requests"]["failed"] == 0 and summary["settings"]["warmup_failed"] == 0
    assert _files_holding(results, key) == [] and key not in keyed.stdout + keyed.stderr


# --- pure parts -----------------------------------------------------------------------------

def _hand_built() -> list[RequestRecord]:
    return [
        RequestRecord("a", start=10.0, first_token=10.1, token_times=[10.1, 10.15, 10.25], end=10.3,
                      prompt_tokens=7, completion_tokens=3, status=200, success=True),
        RequestRecord("b", start=10.1, first_token=10.3, token_times=[10.3, 10.4], end=10.5,
                      prompt_tokens=5, completion_tokens=2, status=200, success=True),
        RequestRecord("c", start=10.2, end=10.6, status=500, success=False, error_kind="http_5xx", error="boom"),
    ]


def test_metrics_on_hand_built_records():
    s = metrics.summarize(_hand_built(), slo_ttft_ms=150, slo_e2e_ms=1000, target_concurrency=2)
    window = 0.6                                           # 10.0 -> 10.6
    assert s["window_s"] == pytest.approx(window)
    assert s["requests"]["total"] == 3 and s["requests"]["failed"] == 1
    assert s["requests"]["error_rate"] == pytest.approx(1 / 3)
    assert s["requests"]["errors_by_kind"] == {"http_5xx": 1}
    assert s["throughput"]["requests_per_s"] == pytest.approx(2 / window)
    assert s["throughput"]["attempted_requests_per_s"] == pytest.approx(3 / window)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(5 / window)
    assert s["throughput"]["total_tokens_per_s"] == pytest.approx(17 / window)
    # TTFT 100, 200 ms; E2E 300, 400 ms; TPOT (300-100)/2 = 100 and (400-200)/1 = 200 ms.
    assert s["ttft_ms"]["mean"] == pytest.approx(150) and s["ttft_ms"]["median"] == pytest.approx(150)
    assert s["ttft_ms"]["p90"] == pytest.approx(190)     # linear interpolation between 100 and 200
    assert s["ttft_ms"]["p99"] == pytest.approx(199)
    assert s["e2e_ms"]["mean"] == pytest.approx(350) and s["e2e_ms"]["max"] == pytest.approx(400)
    assert s["tpot_ms"]["mean"] == pytest.approx(150)
    # ITL: gaps 50, 100 (a) and 100 (b).
    assert s["itl_ms"]["n"] == 3 and s["itl_ms"]["mean"] == pytest.approx(250 / 3)
    assert s["itl_ms"]["median"] == pytest.approx(100)
    # Little: (0.3 + 0.4 + 0.4) / 0.6 = 1.833 in flight vs 2 asked: 8.3 % off, within 10 %.
    ll = s["littles_law"]
    assert ll["mean_concurrency"] == pytest.approx(1.1 / 0.6)
    assert ll["throughput_x_mean_latency"] == pytest.approx((3 / 0.6) * (1.1 / 3))
    assert ll["rel_error"] == pytest.approx(abs(1.1 / 0.6 - 2) / 2) and ll["ok"] is True
    assert metrics.summarize(_hand_built(), target_concurrency=4)["littles_law"]["ok"] is False
    # Goodput: only "a" has TTFT <= 150 ms; the failed request stays in the denominator.
    assert s["goodput"]["requests"] == 1 and s["goodput"]["fraction"] == pytest.approx(1 / 3)
    assert s["goodput"]["requests_per_s"] == pytest.approx(1 / window)


def test_metrics_fallbacks_and_empty():
    rec = RequestRecord("x", start=0.0, first_token=0.1, token_times=[0.1, 0.2, 0.3], end=0.3, success=True)
    s = metrics.summarize([rec])
    assert s["requests"]["usage_missing"] == 1 and s["tokens"]["output_mean"] == 3   # chunks counted
    assert s["tpot_ms"]["mean"] == pytest.approx(100)
    no_tokens = RequestRecord("y", start=0.0, end=0.2, success=True, completion_tokens=0)
    s = metrics.summarize([no_tokens], slo_ttft_ms=500)
    assert s["requests"]["without_tokens"] == 1 and s["ttft_ms"]["mean"] is None
    assert s["goodput"]["requests"] == 0                 # no first token: cannot meet a TTFT SLO
    empty = metrics.summarize([])
    assert empty["requests"]["total"] == 0 and empty["ttft_ms"]["n"] == 0


def test_records_csv_round_trip(tmp_path):
    path = tmp_path / "records.csv"
    write_records(path, _hand_built())
    back = load_records(path)
    assert [r.request_id for r in back] == ["a", "b", "c"]
    assert back[2].error_kind == "http_5xx" and back[2].success is False and back[2].first_token is None
    a, b = metrics.summarize(_hand_built(), target_concurrency=2), metrics.summarize(back, target_concurrency=2)
    assert metrics.flatten(a) == pytest.approx(metrics.flatten(b), abs=1e-6)


def test_chat_url():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


# --- workloads ------------------------------------------------------------------------------

TOOLACE_SAMPLE = REPO / "data" / "toolace_sample.jsonl"


@pytest.mark.parametrize("name", ["synthetic", "bfcl", "toolace"])
def test_workloads_are_seed_deterministic(name):
    cfg = {"name": name, "seed": 1, "max_tokens": 16, "input_tokens": 32, "path": str(TOOLACE_SAMPLE)}
    if name == "bfcl":
        pytest.importorskip("bfcl_eval")
    if name == "toolace" and not TOOLACE_SAMPLE.is_file():
        pytest.skip(f"{TOOLACE_SAMPLE} missing")
    a, b = build_requests(cfg, 12), build_requests(cfg, 12)
    assert a == b and len(a) == 12
    assert build_requests({**cfg, "seed": 2}, 12) != a
    for body in a:
        assert body["max_tokens"] == 16 and body["messages"]
        json.dumps(body)
    if name == "synthetic":
        assert all(body["ignore_eos"] is True for body in a)
        assert all(len(body["messages"][0]["content"].split()) == 32 for body in a)
        assert len({body["messages"][0]["content"] for body in a}) == 12       # no shared prefixes
    if name == "toolace":
        assert all(body["messages"][-1]["role"] == "user" for body in a)
        assert any(body.get("tools") for body in a)
        for tool in (t for body in a for t in body.get("tools", [])):
            assert isinstance(tool["function"]["parameters"], dict)           # native, not storage form


JSON_SCHEMA_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def _schema_types(node: dict) -> set:
    types = {node.get("type")}
    for child in (node.get("properties") or {}).values():
        types |= _schema_types(child)
    if isinstance(node.get("items"), dict):
        types |= _schema_types(node["items"])
    return types


def test_bfcl_tools_are_openai_shaped():
    pytest.importorskip("bfcl_eval")
    bodies = build_requests({"name": "bfcl", "seed": 0, "categories": ["simple_python", "live_multiple"]}, 200)
    names = set()
    for body in bodies:
        assert body["messages"][-1]["role"] == "user"
        for tool in body["tools"]:
            fn = tool["function"]
            assert tool["type"] == "function" and "." not in fn["name"]
            assert fn["parameters"]["type"] == "object"
            assert _schema_types(fn["parameters"]) <= JSON_SCHEMA_TYPES  # Gorilla types mapped
            names.add(fn["name"])
    assert len(names) > 100


def test_synthetic_prompts_have_exact_token_counts_with_a_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # A small byte-level BPE: most words split into several tokens, so the cut must be exact.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog and then some more"] * 20,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.save_pretrained(tmp_path)
    cfg = {"name": "synthetic", "input_tokens": 50, "max_tokens": 4, "tokenizer": str(tmp_path), "seed": 0}
    bodies = build_requests(cfg, 6)
    assert bodies == build_requests(cfg, 6)
    for body in bodies:
        assert len(fast.encode(body["messages"][0]["content"], add_special_tokens=False)) == 50


def test_stream_delivery_tells_server_merging_from_read_coalescing(stub):
    """tokens per chunk (server side) and chunks per read (our reads) are counted, not timed."""
    one = RequestRecord("a", start=0.0, first_token=0.1, token_times=[0.1, 0.1, 0.1, 0.2], end=0.3,
                        completion_tokens=8, status=200, success=True)   # 4 chunks in 2 reads, 8 tokens
    d = metrics.stream_delivery([one])
    assert d == {"tokens_per_chunk": 2.0, "chunks_per_read": 2.0, "tokens_per_read": 4.0,
                 "zero_gaps_fraction": pytest.approx(2 / 3)}
    live = run_level(stub, "stub", [_body()], LoadSpec(concurrency=2, num_requests=6), progress=False).records
    s = metrics.summarize(live)
    assert s["stream"]["tokens_per_chunk"] == 1.0          # the stub sends one token per chunk
    assert s["stream"]["chunks_per_read"] >= 1.0
