"""From bfcl-eval's own files to our tables: per item, per category, summary, baseline delta.

Nothing here scores: validity and error types are read from bfcl-eval's score files (which list
the failed items under a header with accuracy/correct/total); leaderboard columns are the rows
bfcl-eval's aggregation computed (captured by the worker). Readers at the top, pure below.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from experiments.bfcl import spec

IDS_FILE = "test_case_ids_to_generate.json"  # bfcl's --run-ids reads PROJECT_ROOT/<this>
META_FILE = "bfcl_meta.json"  # the worker's record: plan, offered tools, bfcl's leaderboard rows

# bfcl error type -> our bucket. The checker's types are "<checker>:<reason>".
_EXACT = {
    "simple_function_checker:wrong_func_name": "wrong_function_name",
    "simple_function_checker:missing_required": "missing_parameter",
    "simple_function_checker:missing_optional": "missing_parameter",  # omitted, not optional here
    "simple_function_checker:unexpected_param": "unexpected_parameter",
    "ast_decoder:decoder_failed": "undecodable_output",               # split by undecodable_kind
    "ast_decoder:decoder_wrong_output_format": "undecodable_output",
    "irrelevance_error:decoder_success": "irrelevance_failure",
    "multi_turn:irrelevance_error:decoder_success": "irrelevance_failure",
    "relevance_error:decoder_failed": "missed_call",
    "multi_turn:empty_turn_model_response": "missed_call",
    "multi_turn:instance_state_mismatch": "multi_turn_mismatch",
    "multi_turn:execution_response_mismatch": "multi_turn_mismatch",
    "multi_turn:method_invoke_order_mismatch": "multi_turn_mismatch",
    "multi_turn:force_terminated": "step_limit",
    "multi_turn:inference_error": "inference_error",
    "agentic:inference_error": "inference_error",
    "agentic:answer_not_found": "answer_not_found",
    "agentic:no_last_message": "answer_not_found",
}
_PREFIX = {"type_error:": "type_error", "value_error:": "value_error",
           "dict_checker:": "value_error", "list_dict_checker:": "value_error"}
BUCKETS = ["wrong_function_name", "wrong_count", "missing_parameter", "unexpected_parameter",
           "type_error", "value_error", "text_answer", "malformed_call", "irrelevance_failure", "missed_call",
           "multi_turn_mismatch", "step_limit", "answer_not_found", "inference_error", "other"]
INFERENCE_ERROR_PREFIX = "Error during inference"  # what bfcl records when a request failed
TOOL_CALL_TAG = "<tool_call>"

# data_overall.csv columns that are not accuracies.
_NOT_ACCURACY = {"Rank", "Model", "Model Link", "Total Cost ($)", "Latency Mean (s)",
                 "Latency Standard Deviation (s)", "Latency 95th Percentile (s)",
                 "Format Sensitivity Max Delta", "Format Sensitivity Standard Deviation",
                 "Organization", "License"}
# The headline columns, in the leaderboard's order (bfcl's data_overall names).
HEADLINE = ["Non-Live AST Acc", "Non-Live Simple AST", "Non-Live Multiple AST",
            "Non-Live Parallel AST", "Non-Live Parallel Multiple AST", "Live Acc",
            "Irrelevance Detection", "Relevance Detection", "Multi Turn Acc", "Memory Acc",
            "Overall Acc"]
# Where bfcl-eval's CSVs show each category (file stem, column).
CATEGORY_CSV_COLUMN = {
    "simple_python": ("data_non_live", "Python Simple AST"),
    "simple_java": ("data_non_live", "Java Simple AST"),
    "simple_javascript": ("data_non_live", "JavaScript Simple AST"),
    "multiple": ("data_non_live", "Multiple AST"),
    "parallel": ("data_non_live", "Parallel AST"),
    "parallel_multiple": ("data_non_live", "Parallel Multiple AST"),
    "irrelevance": ("data_non_live", "Irrelevance Detection"),
    "live_simple": ("data_live", "Python Simple AST"),
    "live_multiple": ("data_live", "Python Multiple AST"),
    "live_parallel": ("data_live", "Python Parallel AST"),
    "live_parallel_multiple": ("data_live", "Python Parallel Multiple AST"),
    "live_irrelevance": ("data_live", "Irrelevance Detection"),
    "live_relevance": ("data_live", "Relevance Detection"),
    "multi_turn_base": ("data_multi_turn", "Base"),
    "multi_turn_miss_func": ("data_multi_turn", "Miss Func"),
    "multi_turn_miss_param": ("data_multi_turn", "Miss Param"),
    "multi_turn_long_context": ("data_multi_turn", "Long Context"),
    "memory_kv": ("data_agentic", "Memory KV"),
    "memory_rec_sum": ("data_agentic", "Memory Recursive Summarization"),
}


# ---------------------------------------------------------------- readers (I/O)

def read_jsonl(path: Path) -> list[dict]:
    """bfcl's .json files are JSON Lines."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def repair_results(model_result_dir: Path) -> dict:
    """Before (re)generating: drop lines a killed run left half-written (bfcl's reader would crash
    on them) and items whose request failed (bfcl would otherwise keep the error as the answer
    and never retry it). A failed memory prerequisite drops its whole scenario chain (every
    prerequisite and question of that memory category and scenario): each entry starts from the
    memory its predecessors left, so the chain is regenerated from its first, clean entry.
    Files are rewritten atomically. Returns counts."""
    files = sorted(Path(model_result_dir).rglob("*_result.json"))
    parsed = {path: [_parse_line(line) for line in path.read_text().splitlines()] for path in files}
    broken_chains = {memory_chain(e["id"]) for lines in parsed.values() for _, e in lines
                     if e is not None and spec.is_prereq(e["id"]) and _is_inference_error(e.get("result"))}
    counts = {"torn_lines_dropped": 0, "failed_requests_to_retry": 0, "failed_prereqs_to_retry": 0,
              "memory_entries_regenerated": 0}
    for path, lines in parsed.items():
        kept = []
        for line, entry in lines:
            if entry is None:
                counts["torn_lines_dropped"] += bool(line.strip())
            elif memory_chain(entry["id"]) in broken_chains:
                failed = _is_inference_error(entry.get("result"))
                counts["failed_prereqs_to_retry" if spec.is_prereq(entry["id"]) else "failed_requests_to_retry"] += failed
                counts["memory_entries_regenerated"] += not failed
            elif _is_inference_error(entry.get("result")) and not spec.is_prereq(entry["id"]):
                counts["failed_requests_to_retry"] += 1
            else:
                kept.append(line)
                continue
        if len(kept) != len(lines):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            tmp.replace(path)
    return counts


def _parse_line(line: str) -> tuple[str, dict | None]:
    try:
        entry = json.loads(line)
        entry["id"]
        return line, entry
    except (json.JSONDecodeError, KeyError, TypeError):
        return line, None


def memory_chain(test_id: str) -> tuple[str, str] | None:
    """(memory category, scenario) of a memory entry (memory_kv_prereq_3-notetaker-0 and
    memory_kv_7-notetaker-2 share ("memory_kv", "notetaker")); None for any other id."""
    category = spec.category_of(test_id).removesuffix("_prereq")
    if category not in spec.MEMORY or "-" not in test_id:
        return None
    return category, test_id.split("-")[1]


def failed_prereqs(root: Path, key: str) -> list[str]:
    """Memory prerequisite conversations whose request failed (never scored, yet their memory
    feeds the questions after them)."""
    return sorted(e["id"] for path in sorted((Path(root) / "result" / key).rglob("*_result.json"))
                  for e in read_jsonl(path) if spec.is_prereq(e["id"]) and _is_inference_error(e.get("result")))


def load_results(root: Path, key: str) -> dict[str, dict]:
    out = {}
    for path in sorted((Path(root) / "result" / key).rglob("*_result.json")):
        for entry in read_jsonl(path):
            if not spec.is_prereq(entry["id"]):
                out[entry["id"]] = entry
    return out


def load_scores(root: Path, key: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(header per category, failed entry per id) from bfcl's score files."""
    headers, failures = {}, {}
    for path in sorted((Path(root) / "score" / key).rglob("*_score.json")):
        header, *failed = read_jsonl(path)
        category = path.name.removeprefix("BFCL_v4_").removesuffix("_score.json")
        headers[category] = header
        for entry in failed:
            failures[entry["id"]] = entry
    return headers, failures


def read_bfcl_csv(path: Path) -> list[dict]:
    """bfcl's data_*.csv (plain ","-joined rows)."""
    header, *rows = Path(path).read_text().splitlines()
    names = header.split(",")
    return [dict(zip(names, row.split(","))) for row in rows]


# ---------------------------------------------------------------- pure

def _is_inference_error(result) -> bool:
    return isinstance(result, str) and result.startswith(INFERENCE_ERROR_PREFIX)


def bfcl_error_type(failed: dict) -> str:
    """AST and relevance entries carry error_type at the top; multi-turn/agentic in "error"."""
    if "error_type" in failed:
        return failed["error_type"]
    error = failed.get("error")
    return error.get("error_type", "unknown") if isinstance(error, dict) else "unknown"


def error_bucket(error_type: str, failed: dict | None = None) -> str:
    if error_type == "parallel_function_checker_no_order:cannot_find_match" and failed:
        # No output matched some expected call; bfcl lists why each candidate failed.
        for item in failed.get("error", []):
            if isinstance(item, dict):
                for detail in item.values():
                    return error_bucket(detail.get("sub_error_type", ""))
    if error_type in _EXACT:
        return _EXACT[error_type]
    if error_type.endswith(":wrong_count"):
        return "wrong_count"
    for prefix, bucket in _PREFIX.items():
        if error_type.startswith(prefix):
            return bucket
    return "other"


def undecodable_kind(raw) -> str:
    """An answer bfcl could not decode into calls: `text_answer` (prose, no call attempted) or
    `malformed_call` (a `<tool_call>` block, or call objects, that did not parse)."""
    return "text_answer" if isinstance(raw, str) and TOOL_CALL_TAG not in raw else "malformed_call"


def decode_text_calls(raw: str) -> list[dict] | None:
    """Calls in a native-path completion text, as the ported handler reads them; None for prose
    or a block it cannot read. Display only."""
    from experiments.bfcl.qwen25_fc import decode_calls as decode_hermes

    try:
        calls = decode_hermes(raw)
    except ValueError:
        return None
    return [{"name": n, "arguments": a} for call in calls for n, a in call.items()] or None


def decode_calls(result, nested: bool, text_calls: bool = False) -> list[dict] | None:
    """Calls in a bfcl FC result ([{name: arguments_json}] on the api path, completion text with
    `<tool_call>` blocks when `text_calls`: the native path), per turn and step when nested;
    None when the answer was text (no call could be decoded). Display only: bfcl decodes again
    when it scores."""
    if nested:
        if not isinstance(result, list):
            return None
        steps = [step for turn in result if isinstance(turn, list) for step in turn]
        return [call for step in steps for call in (decode_calls(step, False, text_calls) or [])]
    if isinstance(result, str) and text_calls:
        return decode_text_calls(result)
    if not isinstance(result, list):
        return None
    calls = []
    for call in result:
        if not isinstance(call, dict):
            return None
        for name, arguments in call.items():
            try:
                arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            except json.JSONDecodeError:
                pass  # kept as text: bfcl fails such an item as undecodable
            calls.append({"name": name, "arguments": arguments})
    return calls


def item_rows(results: dict[str, dict], failures: dict[str, dict], offered: dict[str, list[str]],
              scored: set[str], text_calls: bool = False) -> list[dict]:
    """One row per scored id that has a result."""
    rows = []
    for test_id in sorted(scored & results.keys(), key=_id_order):
        category = spec.category_of(test_id)
        raw = results[test_id]["result"]
        calls = decode_calls(raw, category in spec.MULTI_TURN or category in spec.MEMORY, text_calls)
        failed = failures.get(test_id)
        error_type = bfcl_error_type(failed) if failed else ""
        bucket = ""
        if failed:
            bucket = "inference_error" if _is_inference_error(raw) else error_bucket(error_type, failed)
            if bucket == "undecodable_output" or (bucket == "wrong_count" and isinstance(raw, str) and not calls):
                # No call read from a text answer: the api handler fails to decode it, the native
                # decoder reads zero calls (bfcl: wrong_count). Either way: prose or a broken call.
                bucket = undecodable_kind(raw)
        names = set(offered.get(test_id, []))
        hallucinated = sorted({c["name"] for c in calls or []} - names) if test_id in offered else []
        rows.append({
            "id": test_id, "category": category, "valid": failed is None,
            "error_type": error_type, "error_bucket": bucket,
            "error": json.dumps(failed.get("error"), ensure_ascii=False) if failed else "",  # bfcl's full text
            "hallucinated_functions": ";".join(hallucinated),
            "n_calls": len(calls) if calls is not None else "",
            "decoded_calls": json.dumps(calls, ensure_ascii=False) if calls is not None else "",
            "raw_output": json.dumps(raw, ensure_ascii=False),
        })
    return rows


def _id_order(test_id: str):
    category, _, rest = test_id.rpartition("_")
    head = rest.split("-")[0]
    return (category, int(head) if head.isdigit() else 0, test_id)


def category_rows(headers: dict[str, dict], categories: list[str]) -> list[dict]:
    rows = []
    for category in categories:
        header = headers.get(category)
        if header is None:
            continue
        rows.append({"category": category, "group": spec.group_of(category),
                     "total": header["total_count"], "correct": header["correct_count"],
                     "accuracy": header["accuracy"] * 100})
    return rows


def taxonomy(items: list[dict]) -> dict:
    failed = [r for r in items if not r["valid"]]
    buckets = Counter(r["error_bucket"] for r in failed)
    per_category: dict[str, Counter] = {}
    for r in failed:
        per_category.setdefault(r["category"], Counter())[r["error_bucket"]] += 1
    halluc = [r for r in items if r["hallucinated_functions"]]
    return {
        "by_bucket": {b: buckets.get(b, 0) for b in BUCKETS},
        "by_bfcl_error_type": dict(sorted(Counter(r["error_type"] for r in failed).items())),
        "hallucinated_functions": {
            "items": len(halluc),
            "calls": sum(len(r["hallucinated_functions"].split(";")) for r in halluc),
            "names": dict(Counter(n for r in halluc for n in r["hallucinated_functions"].split(";"))
                          .most_common(20)),
        },
        "irrelevance_failures": buckets.get("irrelevance_failure", 0),
        "by_category": {c: dict(v) for c, v in sorted(per_category.items())},
    }


def leaderboard_columns(overall_row: dict) -> dict[str, float | None]:
    """bfcl's data_overall row -> {column: percent}, None where bfcl shows N/A."""
    return {name: (value * 100 if isinstance(value, (int, float)) else None)
            for name, value in overall_row.items() if name not in _NOT_ACCURACY}


def plan_fingerprint(plan: dict[str, list[str]]) -> str:
    scored = sorted(i for ids in plan.values() for i in ids if not spec.is_prereq(i))
    return hashlib.sha256(json.dumps(scored).encode()).hexdigest()[:16]


def build_summary(*, meta: dict, job: dict, set_name: str, categories: list[dict],
                  items: list[dict], wall_time_s: float, repaired: dict,
                  prereqs_failed: list[str] = ()) -> dict:
    overall_row = meta["leaderboard"]["data_overall"][0]
    columns = leaderboard_columns(overall_row)
    ran = list(meta["plan"])
    partial = bool(job["per_category"])
    why_not = [f"agentic category not run: {c} ({spec.SKIPPED[c]})"
               for c in spec.AGENTIC if c in spec.SKIPPED]
    why_not += [f"category not run: {c}" for c in spec.FULL if c not in ran]
    if partial:
        why_not.append(f"subset of {job['per_category']} ids per category (bfcl --partial-eval)")
    scored = {i for ids in meta["plan"].values() for i in ids if not spec.is_prereq(i)}
    n_failed = sum(r["error_bucket"] == "inference_error" for r in items)
    prereqs_failed = list(prereqs_failed)
    return {
        "model": job["served_model_name"],
        "path": job.get("path", "api"),
        "bfcl_model_key": meta["model_key"],
        "bfcl_eval_version": meta["bfcl_eval_version"],
        "category_set": set_name,
        "categories": ran,
        "ids_per_category": job["per_category"],  # None: every id
        "seed": job["seed"],
        "plan_fingerprint": plan_fingerprint(meta["plan"]),
        "n_items": len(items),
        "n_missing": len(scored) - len(items),  # planned but never generated
        "n_failed_requests": n_failed,
        "n_failed_prereqs": len(prereqs_failed),
        "failed_prereqs": prereqs_failed[:20],
        # Every planned item answered by the server, every memory prerequisite too: only then is
        # the stage done (else it is partial and a rerun retries what failed).
        "complete": len(scored) == len(items) and n_failed == 0 and not prereqs_failed,
        "server_unreachable": meta.get("server_unreachable", {}).get("reason"),
        "leaderboard": columns,  # percent; bfcl-eval's aggregation, bfcl's column names
        "headline": {name: columns.get(name) for name in HEADLINE},
        "overall": {"value": columns.get("Overall Acc"), "comparable_to_public_board": not why_not,
                    "why_not": why_not},
        "per_category": {r["category"]: {k: r[k] for k in ("total", "correct", "accuracy")}
                         for r in categories},
        "skipped": {**spec.SKIPPED, **spec.NOT_APPLICABLE},
        "errors": taxonomy(items),
        "latency_s": {k: overall_row.get(k) for k in
                      ("Latency Mean (s)", "Latency Standard Deviation (s)", "Latency 95th Percentile (s)")},
        "timings_s": {**meta["timings_s"], "wall": wall_time_s},
        "settings": {k: job.get(k) for k in ("base_url", "path", "num_threads", "temperature", "max_retries",
                                             "sampling", "tokenizer_path")},
        "resume": repaired,
    }


def matched_accuracy(items: list[dict], matched: dict[str, list[str]] | None) -> dict | None:
    """Accuracy per single-turn category over the ids unchanged between BFCL v3 and v4 only
    (data/bfcl_v3_v4_unchanged_ids.json): where a v3 anchor is the only one, compare on these."""
    if not matched:
        return None
    out = {}
    for category, ids in matched.items():
        rows = [r for r in items if r["category"] == category and r["id"] in set(ids)]
        if rows:
            correct = sum(bool(r["valid"]) for r in rows)
            out[category] = {"total": len(rows), "correct": correct, "accuracy": 100.0 * correct / len(rows)}
    return out


def baseline_delta(tuned: dict, base: dict) -> dict:
    """Per-column difference (percentage points) of a fine-tuned summary over its base model's."""
    def diff(a: dict, b: dict) -> dict:
        return {k: a[k] - b[k] for k in a
                if isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float))}

    return {
        "base_model": base["model"],
        "comparable": tuned["plan_fingerprint"] == base["plan_fingerprint"],  # same items?
        "leaderboard": diff(tuned["leaderboard"], base["leaderboard"]),
        "per_category": {c: tuned["per_category"][c]["accuracy"] - base["per_category"][c]["accuracy"]
                         for c in tuned["per_category"] if c in base["per_category"]},
    }
