"""Capacity search (experiments/bench/capacity.py): the pure search, then against the stub server
run as a loss system (at most K requests in service, fixed latency, 503 beyond K).

Why a loss system: with Poisson arrivals, K servers and no queue, the refused fraction is Erlang's
B formula B(K, a) at offered load a = rate x mean service time, exactly and for any service-time
distribution. With fixed latency and a generous SLO, goodput = 1 - B, so the capacity at a goodput
fraction f is a*(K, 1 - f) / S: analytical. (With a queue instead, the capacity at an SLO hangs on
a waiting-time tail; measuring that tail to 10% takes thousands of requests per level.)"""
from __future__ import annotations

import json
import random
import re
import time
import urllib.request

import pytest

from conftest import stub_server
from experiments.bench import metrics
from experiments.bench.capacity import CapacityConfig, in_flight_at_sends, next_rate, run_capacity, search, steady
from experiments.bench.records import RequestRecord



def erlang_b(k: int, a: float) -> float:
    b = 1.0
    for i in range(1, k + 1):
        b = a * b / (i + a * b)
    return b


def offered_load_at(k: int, blocked: float) -> float:
    """a with B(k, a) = blocked (B rises with a: bisection)."""
    lo, hi = 1e-9, 10.0 * k
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if erlang_b(k, mid) <= blocked else (lo, mid)
    return lo


def test_erlang_b_table_values():
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert offered_load_at(8, 0.01) == pytest.approx(3.128, abs=2e-3)    # the classic Erlang B table
    assert offered_load_at(16, 0.05) == pytest.approx(11.54, abs=1e-2)


def _fake_level(capacity: float):
    """A level that meets the SLO exactly up to `capacity` req/s, with steady records."""
    def run(rate, n):
        recs = [RequestRecord(str(i), start=i / rate, first_token=i / rate + 0.01, end=i / rate + 0.1,
                              completion_tokens=2, status=200, success=True) for i in range(n)]
        s = metrics.summarize(recs, slo_e2e_ms=50 if rate > capacity else 1000)
        return {"label": f"r{rate:g}", "rate": rate, **s}, recs
    return run


def test_search_brackets_a_known_capacity():
    cfg = CapacityConfig(start_rate=1, growth=2, rel_tolerance=0.05, min_requests=10, level_s=1)
    res = search(_fake_level(7.3), cfg)
    rates = [lv["rate"] for lv in res["levels"]]
    assert rates[:4] == [1, 2, 4, 8]                       # the coarse sweep, then bisection inside 4..8
    assert [lv["step"] for lv in res["levels"]][4:] == ["bisection"] * (len(rates) - 4)
    assert 7.3 / 1.05 <= res["capacity_rate"] <= 7.3 < res["failed_above"]["rate"]
    assert res["failed_above"]["rate"] / res["capacity_rate"] - 1 <= 0.05 and "rel_tolerance" in res["stopped"]
    assert res["failed_above"]["reasons"] == ["goodput 0.000 < 0.99"]


def test_search_stops_by_itself():
    always = search(_fake_level(1e9), CapacityConfig(start_rate=1, max_rate=16, min_requests=5, level_s=1))
    assert [lv["rate"] for lv in always["levels"]] == [1, 2, 4, 8, 16] and "max_rate" in always["stopped"]
    never = search(_fake_level(0), CapacityConfig(start_rate=1, min_rate=0.2, min_requests=5, level_s=1))
    assert never["capacity_rate"] is None and "min_rate" in never["stopped"]
    budget = search(_fake_level(1e9), CapacityConfig(start_rate=1, min_requests=5, level_s=1, max_total_requests=20))
    assert "max_total_requests" in budget["stopped"] and budget["requests_sent"] <= 20
    assert next_rate([(4, True), (8, False), (5.66, True), (6.73, False), (6.17, True), (6.44, True)],
                     CapacityConfig())[0] is None           # 6.44..6.73 is within 5%


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown key.*'rate_start'"):
        CapacityConfig.from_mapping({"rate_start": 1})
    with pytest.raises(ValueError, match="growth=1.0"):
        CapacityConfig(growth=1.0)


def test_steady_state_detects_a_growing_queue():
    stable = [RequestRecord(str(i), start=i * 0.1, end=i * 0.1 + 0.35, success=True) for i in range(300)]
    assert list(in_flight_at_sends(stable[:5])) == [1, 2, 3, 4, 4]
    assert steady(stable)["steady"] is True
    # Service slower than arrivals: each request ends 0.12 s after the previous one (a backlog).
    growing = [RequestRecord(str(i), start=i * 0.1, end=0.35 + i * 0.12, success=True) for i in range(300)]
    st = steady(growing)
    assert st["steady"] is False and st["last_mean"] > st["middle_mean"] + st["allowed_growth"]


def _simulated_loss_system(k: int, service_s: float, slo_ms: float, seed: int):
    """Levels of a K-server loss system simulated exactly (no clock): what the stub implements."""
    def run(rate, n):
        rng, t, busy, recs = random.Random(f"{seed}-{rate}"), 0.0, [], []
        for i in range(n):
            t += rng.expovariate(rate)
            busy = [e for e in busy if e > t]
            if len(busy) < k:
                busy.append(t + service_s)
                recs.append(RequestRecord(str(i), start=t, first_token=t + service_s, token_times=[t + service_s],
                                          end=t + service_s, completion_tokens=1, status=200, success=True))
            else:
                recs.append(RequestRecord(str(i), start=t, end=t, status=503, success=False, error_kind="http_5xx"))
        s = metrics.summarize(recs, slo_ttft_ms=slo_ms, slo_e2e_ms=slo_ms)
        return {"label": f"r{rate:g}", "rate": rate, **s}, recs
    return run


K, SERVICE_S, FRACTION, LEVEL_S = 16, 0.4, 0.95, 15.0
CAP_CFG = {"start_rate": 8, "growth": 2, "goodput_fraction": FRACTION, "max_error_rate": 1 - FRACTION,
           "level_s": LEVEL_S, "min_requests": 100, "max_total_s": 400}


def test_level_size_resolves_the_capacity_to_10_percent():
    """The statistical precision behind the stub test's tolerance: the same search on the exact
    simulation, 20 arrival seeds; each level at ~capacity holds ~400 requests."""
    want = offered_load_at(K, 1 - FRACTION) / SERVICE_S
    found = [search(_simulated_loss_system(K, SERVICE_S, 2000, seed), CapacityConfig(**CAP_CFG))["capacity_rate"]
             for seed in range(20)]
    misses = [f for f in found if abs(f / want - 1) > 0.10]
    assert len(misses) <= 1, (want, found)


@pytest.fixture(scope="module")
def loss_stub():
    with stub_server("--ttft-ms", str(SERVICE_S * 1000), "--itl-ms", "0", "--n-tokens", "1",
                     "--max-concurrent", str(K)) as (url, _):
        yield url


def test_capacity_of_the_loss_stub(loss_stub, tmp_path):
    start = time.time()
    res = run_capacity(loss_stub, "stub", tmp_path, capacity=CAP_CFG, progress=False,
                       workload={"name": "synthetic", "seed": 0, "input_tokens": 4, "max_tokens": 1},
                       slo={"ttft_ms": 2000, "e2e_ms": 2000})
    wall = time.time() - start
    # A slot is held from the request's arrival until its response is written: S plus this
    # machine's scheduling delay. Erlang B needs only the mean hold time, so the analytical
    # capacity uses the stub's own measurement of it (GET /stats), not the nominal S; the client's
    # E2E would overstate it by the client's own lag under load.
    assert res["at_capacity"], res
    with urllib.request.urlopen(loss_stub + "/stats", timeout=10) as r:
        stats = json.load(r)
    mean_s = stats["mean_hold_s"]
    refused = sum(json.loads((tmp_path / f"summary_{lv['label']}.json").read_text())["requests"]["errors_by_kind"]
                  .get("http_5xx", 0) for lv in res["levels"])
    assert refused == stats["refused"] and stats["served"] + stats["refused"] == res["requests_sent"]
    a_star = offered_load_at(K, 1 - FRACTION)
    want, nominal = a_star / mean_s, a_star / SERVICE_S
    print(f"capacity found {res['capacity_rate']} req/s; analytical {want:.2f} (mean hold {mean_s * 1000:.1f} ms), "
          f"nominal {nominal:.2f}; {len(res['levels'])} levels, {res['requests_sent']} requests, {wall:.0f} s; "
          f"stopped: {res['stopped']}")
    assert abs(res["capacity_rate"] / want - 1) <= 0.10, res["levels"]
    assert res["failed_above"] and res["failed_above"]["rate"] > res["capacity_rate"]
    assert res["at_capacity"]["e2e_ms"]["p99"] is not None
    on_disk = json.loads((tmp_path / "capacity.json").read_text())
    assert on_disk["capacity_rate"] == res["capacity_rate"]
    sweep = (tmp_path / "sweep.md").read_text()
    assert all(f"| {lv['label']} |" in sweep for lv in res["levels"])


def test_report_prices_the_capacity_rate():
    from experiments.report.serving import capacity_lines, capacity_level

    def brief(rate, label, reasons):
        return {"rate": rate, "label": label, "reasons": reasons, "goodput_fraction": 1.0 if not reasons else 0.5,
                "error_rate": 0.0, "requests": 10, "throughput_requests_per_s": rate,
                **{m: {"median": 1.0, "p90": 2.0, "p99": 3.0} for m in ("ttft_ms", "e2e_ms", "tpot_ms")}}
    cap = {"at_capacity": brief(4.0, "r4", []), "failed_above": brief(5.0, "r5", ["goodput 0.500 < 0.99"]),
           "stopped": "bracket", "elapsed_s": 10.0, "requests_sent": 20, "levels": [{}, {}],
           "criterion": {"goodput_fraction": 0.99, "max_error_rate": 0.01}, "slo": {"ttft_ms": 500, "e2e_ms": 2000}}
    bench = {"capacity": cap, "levels": [{"label": "r4", "summary": {}}, {"label": "r5", "summary": {}}]}
    level, note = capacity_level(bench)
    assert level["label"] == "r4" and "4 req/s" in note and "r5 above it failed: goodput 0.500 < 0.99" in note
    text = "\n".join(capacity_lines(cap))
    assert re.search(r"\| +capacity +\| +4\.0+ +\|", text) and re.search(r"\| +failed above +\| +5\.0+ +\|", text), text
    assert capacity_level({"capacity": None, "levels": []}) == (None, "no capacity found")
    assert capacity_lines({**cap, "at_capacity": None})[-1].startswith("No rate passed")


def test_pareto_fronts_and_section(tmp_path):
    from experiments.report import pareto

    def run(rid, method, acc, rate):
        bench = {"levels": [{"summary": {"throughput": {"requests_per_s": rate}}}], "capacity": None}
        return {"id": rid, "info": {"method": method}, "bfcl": {"leaderboard": {"Overall Acc": acc}}, "bench": bench}
    rows = [run("a", "qlora", 10.0, 4.0), run("b", "dora", 12.0, 2.0), run("c", "qlora_opt", 9.0, 3.0),
            {"id": "d", "info": {"method": "x"}, "bfcl": None, "bench": None}]      # no numbers: no point
    rows[1]["bench"]["capacity"] = {"capacity_rate": 2.5}                         # the capacity search wins
    df = pareto.points(rows, "Overall_Acc", usd_per_hour=3.6)
    assert list(df["run"]) == ["a", "b", "c"]
    assert df.set_index("run")["req_per_s"].to_dict() == {"a": 4.0, "b": 2.5, "c": 3.0}
    assert df.set_index("run")["usd_per_1m_requests"]["a"] == pytest.approx(1e6 / 4.0 / 3600 * 3.6)
    # c is less accurate and slower (and dearer) than a: dominated on both fronts; a and b trade off.
    assert list(df["front_throughput"]) == [True, True, False] and list(df["front_cost"]) == [True, True, False]
    assert pareto.plot(df, "Overall_Acc", tmp_path / "p.png").stat().st_size > 0
    text = "\n".join(pareto.lines(df, "Overall_Acc", "cost.cpu_usd_per_hour", None))
    assert "capacity search" in text and "max req/s of the levels" in text
    assert "No compared run" in pareto.lines(pareto.points(rows[3:], "Overall_Acc", 1.0), "Overall_Acc", "k", None)[1]
