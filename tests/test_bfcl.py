"""BFCL evaluation through bfcl-eval's own runner and checker, against local oracle servers.

Offline and real: bfcl-eval generates over HTTP against experiments.bfcl.oracle_server (which
answers from bfcl's ground truth, or wrongly on purpose) and scores with its own checker.
Needs the eval environment (bfcl-eval). ~2 minutes on 2 CPU cores.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="needs the eval environment (bfcl-eval)")

from conftest import OracleServer, fake_run, mlflow_statuses, stage_cli  # noqa: E402
from experiments.bfcl import run_bfcl, spec, tables  # noqa: E402
from experiments.core.paths import REPO_ROOT  # noqa: E402

SINGLE_TURN = spec.NON_LIVE + spec.LIVE
AST = [c for c in SINGLE_TURN if c not in spec.IRRELEVANCE + spec.RELEVANCE]
K, SEED = spec.QUICK_PER_CATEGORY, 0


# ---------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """plain (modes by model name), slow (0.2 s an answer), flaky (one 503 per step)."""
    tmp = tmp_path_factory.mktemp("oracle-root")
    started = {}
    try:
        for name, flags in {"plain": (), "slow": ("--delay", "0.2"), "flaky": ("--fail-first",)}.items():
            started[name] = OracleServer(tmp, *flags)
        yield {name: s.wait() for name, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


def _eval(server, model, out, categories="quick", **kw):
    kw.setdefault("quick_per_category", K)
    return run_bfcl(server.url, model, out, categories, seed=SEED, **kw)


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def oracle_run(servers, tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    return out, _eval(servers["plain"], "oracle", out)


@pytest.fixture(scope="module")
def mixed_run(servers, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    return out, _eval(servers["plain"], "mixed", out)


@pytest.fixture(scope="module")
def single_turn_runs(servers, tmp_path_factory):
    modes = ("wrong", "malformed", "none")
    with ThreadPoolExecutor(len(modes)) as pool:  # independent evals: overlap bfcl's start-up
        runs = {m: pool.submit(_eval, servers["plain"], m, tmp_path_factory.mktemp(m), SINGLE_TURN)
                for m in modes}
        return {m: f.result() for m, f in runs.items()}


# ---------------------------------------------------------------- scoring behaviour

def test_oracle_scores_100_on_quick(oracle_run, servers):
    out, summary = oracle_run
    accuracy = {c: v["accuracy"] for c, v in summary["per_category"].items()}
    assert set(accuracy) == set(spec.FULL)
    assert all(v == 100.0 for v in accuracy.values()), accuracy  # AST, multi-turn, memory too
    for column in ["Non-Live AST Acc", "Non-Live Simple AST", "Non-Live Multiple AST",
                   "Non-Live Parallel AST", "Non-Live Parallel Multiple AST", "Live Acc",
                   "Irrelevance Detection", "Relevance Detection", "Multi Turn Acc"]:
        assert summary["leaderboard"][column] == 100.0, column
    stats = servers["plain"].stats("oracle")
    assert stats["unmatched"] == 0 and stats["ambiguous"] == 0
    assert summary["n_items"] == K * len(spec.FULL) and summary["n_missing"] == 0
    assert summary["n_failed_requests"] == 0
    assert not summary["overall"]["comparable_to_public_board"]
    assert set(summary["skipped"]) >= {"web_search_base", "web_search_no_snippet", "memory_vector"}


def test_wrong_function_server(single_turn_runs):
    summary = single_turn_runs["wrong"]
    acc = {c: v["accuracy"] for c, v in summary["per_category"].items()}
    assert all(acc[c] == 0.0 for c in AST), acc
    # A call is never right where no call is due; any call is right for relevance.
    assert acc["irrelevance"] == acc["live_irrelevance"] == 0.0
    assert acc["live_relevance"] == 100.0
    errors = summary["errors"]
    assert errors["hallucinated_functions"]["items"] == summary["n_items"]
    assert errors["irrelevance_failures"] == 2 * K
    assert errors["by_bucket"]["wrong_function_name"] + errors["by_bucket"]["wrong_count"] == len(AST) * K


def test_no_call_server_right_only_where_no_call_is_due(single_turn_runs):
    acc = {c: v["accuracy"] for c, v in single_turn_runs["none"]["per_category"].items()}
    assert {c for c, v in acc.items() if v == 100.0} == set(spec.IRRELEVANCE)
    assert all(v == 0.0 for c, v in acc.items() if c not in spec.IRRELEVANCE)
    buckets = single_turn_runs["none"]["errors"]["by_bucket"]
    assert buckets["text_answer"] == len(AST) * K and buckets["malformed_call"] == 0  # prose: no call tried


def test_malformed_output_is_wrong_and_undecodable(single_turn_runs):
    summary = single_turn_runs["malformed"]
    acc = {c: v["accuracy"] for c, v in summary["per_category"].items()}
    assert all(acc[c] == 0.0 for c in AST) and acc["live_relevance"] == 0.0
    assert acc["irrelevance"] == acc["live_irrelevance"] == 100.0
    buckets = summary["errors"]["by_bucket"]
    assert buckets["malformed_call"] == len(AST) * K and buckets["text_answer"] == 0  # a <tool_call> that fails
    assert summary["errors"]["by_bfcl_error_type"]["ast_decoder:decoder_failed"] == len(AST) * K


# ---------------------------------------------------------------- our numbers are bfcl's

def test_per_category_numbers_equal_bfcl_score_files_and_csvs(mixed_run):
    out, summary = mixed_run
    key = summary["bfcl_model_key"]
    headers, failures = tables.load_scores(out, key)
    ours = {r["category"]: r for r in _read_csv(out / "categories.csv")}
    assert set(ours) == set(spec.FULL)
    assert 0 < sum(float(r["accuracy"]) for r in ours.values()) < 100 * len(ours)  # non-trivial
    csvs = {stem: tables.read_bfcl_csv(out / "score" / f"{stem}.csv")[0]
            for stem in ("data_overall", "data_non_live", "data_live", "data_multi_turn", "data_agentic")}
    for category, row in ours.items():
        header = headers[category]
        assert int(row["total"]) == header["total_count"] and int(row["correct"]) == header["correct_count"]
        assert float(row["accuracy"]) == header["accuracy"] * 100
        stem, column = tables.CATEGORY_CSV_COLUMN[category]
        assert f"{float(row['accuracy']):.2f}%" == csvs[stem][column], (category, column)
    # Every aggregate we report is the one bfcl-eval wrote for these score files.
    for column, value in summary["leaderboard"].items():
        cell = csvs["data_overall"][column]
        assert cell == ("N/A" if value is None else f"{value:.2f}%"), column
    # Items table: one row per item, valid exactly where bfcl's score file lists no failure.
    items = _read_csv(out / "items.csv")
    assert len(items) == summary["n_items"] == sum(h["total_count"] for h in headers.values())
    assert {r["id"] for r in items if r["valid"] == "False"} == set(failures)
    # bfcl's own error text, whole
    assert all(json.loads(r["error"]) == failures[r["id"]].get("error") for r in items if r["valid"] == "False")
    assert sum(summary["errors"]["by_bucket"].values()) == len(failures)


def test_failure_kinds_are_all_represented(mixed_run):
    _, summary = mixed_run
    buckets = summary["errors"]["by_bucket"]
    for bucket in ("wrong_function_name", "text_answer", "malformed_call", "missed_call", "irrelevance_failure"):
        assert buckets[bucket] > 0, buckets
    assert buckets["other"] == 0 and buckets["inference_error"] == 0


# ---------------------------------------------------------------- concurrency, retries, resume

def test_transient_server_errors_are_retried(servers, tmp_path):
    summary = _eval(servers["flaky"], "oracle", tmp_path, ["simple_python", "parallel", "live_relevance"],
                    num_threads=8)
    assert servers["flaky"].stats("oracle")["injected_failures"] >= 3 * K
    assert all(v["accuracy"] == 100.0 for v in summary["per_category"].values())
    assert summary["errors"]["by_bucket"]["inference_error"] == 0


def _done_ids(out: Path) -> set[str]:
    ids = set()
    for path in out.rglob("*_result.json"):
        for line in path.read_text().splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):
                pass  # the line the kill cut short
    return ids


def test_resume_after_kill_does_not_regenerate_finished_items(servers, tmp_path):
    server, model = servers["slow"], "oracle"
    cmd = [sys.executable, "-m", "experiments.bfcl", "--base-url", server.url, "--model", model,
           "--out", str(tmp_path), "--categories", ",".join(SINGLE_TURN), "--per-category", str(K),
           "--num-threads", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = len(SINGLE_TURN) * K
    try:
        deadline = time.monotonic() + 120
        while server.stats(model)["requests"] < total // 3:
            assert proc.poll() is None and time.monotonic() < deadline, "eval ended before the kill"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its bfcl worker: no clean-up
        proc.wait()
    done_before = _done_ids(tmp_path)
    assert 0 < len(done_before) < total
    before = server.stats(model)["by_id"]

    summary = _eval(server, model, tmp_path, SINGLE_TURN, num_threads=8)

    after = server.stats(model)["by_id"]
    assert all(after[i] == before[i] for i in done_before), "finished items were requested again"
    assert all(after.get(i, 0) > before.get(i, 0) for i in _done_ids(tmp_path) - done_before)
    assert summary["n_items"] == total and summary["n_missing"] == 0
    assert all(v["accuracy"] == 100.0 for v in summary["per_category"].values())


# ---------------------------------------------------------------- a server that dies mid-eval

DYING_SET = ["simple_python", "memory_kv"]  # 5 single-turn items, a 24-turn memory prerequisite chain


def _results_by_id(out: Path) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line) for path in out.rglob("*_result.json")
            for line in path.read_text().splitlines() if line.strip()}


def test_server_killed_mid_eval_is_incomplete_then_a_rerun_retries_items_and_prerequisites(tmp_path):
    """The server SIGKILLs itself when request 4 arrives (--die-after 3): no timing involved."""
    out = tmp_path / "out"
    dying = OracleServer(tmp_path, "--die-after", "3").wait()
    try:
        first = _eval(dying, "oracle", out, DYING_SET, num_threads=4, max_retries=1)
    finally:
        dying.stop()
    assert dying.proc.returncode == -signal.SIGKILL
    assert first["complete"] is False
    assert first["n_failed_prereqs"] >= 1 and first["n_failed_requests"] >= 1
    assert "failed a request" in first["server_unreachable"]
    # Once the server was found gone, the remaining items were not sent at all.
    answers = _results_by_id(out)
    refused = [i for i, e in answers.items() if "server unreachable" in str(e["result"])]
    assert refused and all(str(answers[i]["result"]).startswith(tables.INFERENCE_ERROR_PREFIX) for i in refused)
    failed_before = {i for i, e in answers.items() if str(e["result"]).startswith(tables.INFERENCE_ERROR_PREFIX)}

    fresh = OracleServer(tmp_path).wait()
    try:
        second = _eval(fresh, "oracle", out, DYING_SET, num_threads=4)
        asked = fresh.stats("oracle")["by_id"]
    finally:
        fresh.stop()
    assert second["complete"] is True and second["n_failed_prereqs"] == 0 and second["n_failed_requests"] == 0
    assert all(v["accuracy"] == 100.0 for v in second["per_category"].values())
    assert failed_before <= set(asked), "a failed item or prerequisite was not asked again"
    assert second["resume"]["failed_prereqs_to_retry"] >= 1


def test_make_eval_against_a_dying_server_fails_the_stage_and_a_rerun_completes_it(tmp_path):
    results = tmp_path / "results"
    run = fake_run(results)
    overrides = ["profile=cpu", "bfcl=quick", f"bfcl.categories=[{','.join(DYING_SET)}]", "bfcl.name=custom",
                 "bfcl.num_threads=4"]

    def make_eval(server):
        return stage_cli("experiments.bfcl.stage", run, f"{server.url}/v1", overrides)

    def mlflow_status():
        return mlflow_statuses(results)

    dying = OracleServer(tmp_path, "--die-after", "3").wait()
    try:
        first = make_eval(dying)
    finally:
        dying.stop()
    assert first.returncode == 3, first.stderr[-3000:]
    message = first.stderr.strip().splitlines()[-1]
    assert "incomplete" in message and "memory prerequisites failed" in message
    assert "make eval RUN=r1 MODEL=merged BFCL=custom BFCL_PATH=api ENDPOINT=" in message
    info = json.loads((run / "run.json").read_text())
    assert info["stages"]["eval_external"] == "partial"
    assert info["stage_counts"]["eval_external"]["n_failed_prereqs"] >= 1
    assert mlflow_status() == ["FAILED"]

    fresh = OracleServer(tmp_path).wait()
    try:
        second = make_eval(fresh)
    finally:
        fresh.stop()
    assert second.returncode == 0, second.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["stages"]["eval_external"] == "done" and "eval_external" not in info["stage_counts"]
    assert mlflow_status() == ["FAILED", "FINISHED"]


def test_make_eval_against_a_keyed_endpoint_sends_the_key_and_never_writes_it(tmp_path):
    key = "sk-h12-eval-" + "5" * 16
    results = tmp_path / "results"
    run = fake_run(results)
    overrides = ["profile=cpu", "bfcl=quick", "bfcl.categories=[simple_python,live_relevance]", "bfcl.name=custom"]
    server = OracleServer(tmp_path, "--api-key", key).wait()
    try:
        without = stage_cli("experiments.bfcl.stage", run, f"{server.url}/v1", overrides)
        keyed = stage_cli("experiments.bfcl.stage", run, f"{server.url}/v1", overrides, VLLM_API_KEY=key)
    finally:
        server.stop()
    assert without.returncode == 2 and "Traceback" not in without.stderr
    assert "HTTP 401" in without.stderr.strip().splitlines()[-1]
    assert keyed.returncode == 0, keyed.stderr[-3000:]
    summary = json.loads((run / "bfcl" / "external" / "api" / "summary.json").read_text())
    assert summary["complete"] and all(v["accuracy"] == 100.0 for v in summary["per_category"].values())
    leaked = [str(p) for p in results.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == [] and key not in keyed.stdout + keyed.stderr


# ---------------------------------------------------------------- pure parts

def test_category_sets_cover_everything_bfcl_knows(tmp_path):
    code = "from bfcl_eval.constants.category_mapping import ALL_CATEGORIES as A; print(','.join(A))"
    env = {**os.environ, "BFCL_PROJECT_ROOT": str(tmp_path)}
    known = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=True).stdout.strip().split(",")
    assert set(known) == set(spec.FULL) | set(spec.SKIPPED) | set(spec.NOT_APPLICABLE)
    with pytest.raises(ValueError, match="cannot run offline"):
        spec.resolve(["simple_python", "web_search_base"])


def test_quick_ids_are_seeded_and_memory_keeps_its_prerequisites():
    entries = [{"id": f"simple_python_{i}"} for i in range(50)]
    a, b = spec.quick_ids("simple_python", entries, 5, 0), spec.quick_ids("simple_python", entries, 5, 0)
    assert a == b and len(a) == 5 and a != spec.quick_ids("simple_python", entries, 5, 1)
    memory = ([{"id": f"memory_kv_prereq_{i}-big-{i}", "question": [[]] * 9} for i in range(3)]
              + [{"id": f"memory_kv_prereq_{i}-small-{i}", "question": [[]]} for i in range(3, 5)]
              + [{"id": f"memory_kv_{i}-{s}-{i}", "scenario": s} for i, s in enumerate(["big", "small"] * 10)])
    picked = spec.quick_ids("memory_kv", memory, 3, 0)
    assert [i for i in picked if "prereq" in i] == ["memory_kv_prereq_3-small-3", "memory_kv_prereq_4-small-4"]
    assert len([i for i in picked if "prereq" not in i and "-small-" in i]) == 3 and len(picked) == 5
    assert spec.model_key("Qwen/Qwen2.5-7B_instruct") == "local-Qwen-Qwen2.5-7B-instruct"


def test_error_buckets():
    assert tables.error_bucket("simple_function_checker:wrong_func_name") == "wrong_function_name"
    assert tables.error_bucket("multiple_function_checker:wrong_count") == "wrong_count"
    assert tables.error_bucket("simple_function_checker:missing_optional") == "missing_parameter"
    assert tables.error_bucket("type_error:java") == "type_error"
    assert tables.error_bucket("value_error:list/tuple") == "value_error"
    assert tables.error_bucket("ast_decoder:decoder_failed") == "undecodable_output"
    assert tables.undecodable_kind("I cannot help.") == "text_answer"
    assert tables.undecodable_kind('<tool_call>{"name": f') == "malformed_call"
    assert tables.undecodable_kind([{"f": "{not json"}]) == "malformed_call"
    assert tables.error_bucket("irrelevance_error:decoder_success") == "irrelevance_failure"
    nested = {"error": ["no match", {"Model Result Index 0": {"sub_error_type": "type_error:simple"}}]}
    assert tables.error_bucket("parallel_function_checker_no_order:cannot_find_match", nested) == "type_error"
    assert tables.error_bucket("something:new") == "other"


def test_repair_drops_torn_lines_and_failed_requests(tmp_path):
    path = tmp_path / "non_live" / "BFCL_v4_simple_python_result.json"
    path.parent.mkdir()
    good = json.dumps({"id": "simple_python_0", "result": [{"f": "{}"}]})
    failed = json.dumps({"id": "simple_python_1", "result": "Error during inference: 503"})
    path.write_text(f"{good}\n{failed}\n" + '{"id": "simple_python_2", "res')
    assert tables.repair_results(tmp_path) == {"torn_lines_dropped": 1, "failed_requests_to_retry": 1,
                                               "failed_prereqs_to_retry": 0, "memory_entries_regenerated": 0}
    assert path.read_text() == f"{good}\n"


def test_repair_regenerates_the_whole_chain_of_a_failed_memory_prerequisite(tmp_path):
    model_dir = tmp_path / "result" / "local-m"
    folder = model_dir / "agentic" / "memory" / "kv"
    folder.mkdir(parents=True)
    line = lambda i, ok: json.dumps({"id": i, "result": [[{"f": "{}"}]] if ok else "Error during inference: x"})  # noqa: E731
    prereqs = folder / "BFCL_v4_memory_kv_prereq_result.json"
    prereqs.write_text("\n".join([line("memory_kv_prereq_0-notetaker-0", True),
                                  line("memory_kv_prereq_1-notetaker-1", False),
                                  line("memory_kv_prereq_2-student-0", True)]) + "\n")
    questions = folder / "BFCL_v4_memory_kv_result.json"
    questions.write_text("\n".join([line("memory_kv_5-notetaker-5", True), line("memory_kv_9-student-3", True),
                                    line("memory_kv_8-student-2", False)]) + "\n")
    assert tables.failed_prereqs(tmp_path, "local-m") == ["memory_kv_prereq_1-notetaker-1"]
    assert tables.repair_results(model_dir) == {"torn_lines_dropped": 0, "failed_requests_to_retry": 1,
                                               "failed_prereqs_to_retry": 1, "memory_entries_regenerated": 2}
    assert [json.loads(x)["id"] for x in prereqs.read_text().splitlines()] == ["memory_kv_prereq_2-student-0"]
    assert [json.loads(x)["id"] for x in questions.read_text().splitlines()] == ["memory_kv_9-student-3"]


def test_baseline_delta():
    base = {"model": "base", "plan_fingerprint": "x", "leaderboard": {"Live Acc": 40.0, "Memory Acc": None},
            "per_category": {"live_simple": {"accuracy": 50.0}}}
    tuned = {"model": "merged", "plan_fingerprint": "x", "leaderboard": {"Live Acc": 55.0, "Memory Acc": None},
             "per_category": {"live_simple": {"accuracy": 80.0}}}
    delta = tables.baseline_delta(tuned, base)
    assert delta == {"base_model": "base", "comparable": True, "leaderboard": {"Live Acc": 15.0},
                     "per_category": {"live_simple": 30.0}}
