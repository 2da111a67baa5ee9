"""The `native` BFCL path: the leaderboard's Qwen2.5 FC handler (gorilla f810631) ported to bfcl-eval.

Unit tests of the port (prompt rendering against strings rendered by the leaderboard's own code,
the decoder on malformed outputs, the audit trail's parsing) and real runs of bfcl-eval against the
oracle server's /v1/completions side (Hermes text answers from bfcl's ground truth), compared item
by item with the `api` path on the same server. Needs the eval environment. ~3 minutes on 2 cores.
"""
from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="needs the eval environment (bfcl-eval)")

from conftest import OracleServer  # noqa: E402
from experiments.bfcl import audit, oracle_text, qwen25_fc, run_bfcl, spec, tables  # noqa: E402
from experiments.bfcl.run import BfclError  # noqa: E402
from experiments.models import tiny_model  # noqa: E402

SINGLE_TURN = spec.NON_LIVE + spec.LIVE
K, SEED = spec.QUICK_PER_CATEGORY, 0
NEUTRAL = {"top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}

FUNCTIONS = [{"name": "spotify.play", "description": "Play songs. Note that the provided function is in Python 3 syntax.",
              "parameters": {"type": "dict", "properties": {
                  "artist": {"type": "string", "description": "The artist."},
                  "duration": {"type": "float", "description": "Minutes.", "default": 1.5},
                  "filters": {"type": "dict", "properties": {"explicit": {"type": "boolean"}}}},
                  "required": ["artist"]}}]
SINGLE = [{"role": "user", "content": "Play Taylor Swift for 20 minutes."}]
MULTI = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Play Taylor Swift, then Maroon 5."},
         {"role": "assistant", "content": None, "tool_calls": [
             {"name": "spotify.play", "arguments": {"artist": "Taylor Swift", "duration": 20}},
             {"name": "spotify.play", "arguments": {"artist": "Maroon 5"}}]},
         {"role": "tool", "content": "{\"status\": \"playing\"}"},
         {"role": "tool", "content": "queued"},
         {"role": "assistant", "content": "Both are playing."},
         {"role": "user", "content": "Thanks"}]
# Rendered with the leaderboard's own QwenFCHandler._format_prompt (gorilla f810631,
# berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/qwen_fc.py), run on the inputs below.
TOOLS_BLOCK = (
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    "{\n"
    "    \"name\": \"spotify.play\",\n"
    "    \"description\": \"Play songs. Note that the provided function is in Python 3 syntax.\",\n"
    "    \"parameters\": {\n"
    "        \"type\": \"dict\",\n"
    "        \"properties\": {\n"
    "            \"artist\": {\n"
    "                \"type\": \"string\",\n"
    "                \"description\": \"The artist.\"\n"
    "            },\n"
    "            \"duration\": {\n"
    "                \"type\": \"float\",\n"
    "                \"description\": \"Minutes.\",\n"
    "                \"default\": 1.5\n"
    "            },\n"
    "            \"filters\": {\n"
    "                \"type\": \"dict\",\n"
    "                \"properties\": {\n"
    "                    \"explicit\": {\n"
    "                        \"type\": \"boolean\"\n"
    "                    }\n"
    "                }\n"
    "            }\n"
    "        },\n"
    "        \"required\": [\n"
    "            \"artist\"\n"
    "        ]\n"
    "    }\n"
    "}\n"
    "\n"
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call><|im_end|>\n"
)
EXPECTED_SINGLE = (
    "<|im_start|>system\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n"
    "\n"
    + TOOLS_BLOCK +
    "<|im_start|>user\n"
    "Play Taylor Swift for 20 minutes.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
EXPECTED_MULTI = (
    "<|im_start|>system\n"
    "Be brief.\n"
    "\n"
    + TOOLS_BLOCK +
    "<|im_start|>user\n"
    "Play Taylor Swift, then Maroon 5.<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<tool_call>\n"
    "{\"name\": \"spotify.play\", \"arguments\": {\"artist\": \"Taylor Swift\", \"duration\": 20}}\n"
    "</tool_call>\n"
    "<tool_call>\n"
    "{\"name\": \"spotify.play\", \"arguments\": {\"artist\": \"Maroon 5\"}}\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    "{\"status\": \"playing\"}\n"
    "</tool_response>\n"
    "<tool_response>\n"
    "queued\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
    "Both are playing.<|im_end|>\n"
    "<|im_start|>user\n"
    "Thanks<|im_end|>\n"
    "<|im_start|>assistant\n"
)
EXPECTED_NO_FUNCTIONS = (
    "<|im_start|>system\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
    "Hi<|im_end|>\n"
    "<|im_start|>assistant\n"
)


# ---------------------------------------------------------------- the port (pure)

def test_prompt_rendering_equals_the_leaderboards_code():
    assert qwen25_fc.format_prompt(SINGLE, FUNCTIONS) == EXPECTED_SINGLE
    assert qwen25_fc.format_prompt(MULTI, FUNCTIONS) == EXPECTED_MULTI
    assert qwen25_fc.format_prompt([{"role": "user", "content": "Hi"}], []) == EXPECTED_NO_FUNCTIONS
    # what sets it apart from bfcl-eval 2026.3.23's QwenFCHandler (the Qwen3 variant)
    assert '"name": "spotify.play"' in EXPECTED_SINGLE and '\n        "type": "dict"' in EXPECTED_SINGLE
    assert EXPECTED_SINGLE.startswith("<|im_start|>system\n" + qwen25_fc.DEFAULT_SYSTEM)


@pytest.mark.parametrize("text, calls", [
    ('<tool_call>\n{"name": "spotify.play", "arguments": {"artist": "Maroon 5", "duration": 15}}\n</tool_call>',
     [{"spotify.play": {"artist": "Maroon 5", "duration": 15}}]),
    # a Python-literal dict (single quotes, True): the checkpoint's eval fallback reads it
    ("<tool_call>\n{'name': 'f', 'arguments': {'a': True, 'b': [1, 2]}}\n</tool_call>", [{"f": {"a": True, "b": [1, 2]}}]),
    # prose around the calls: the calls count, the prose is ignored
    ('Sure, playing it now.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\nEnjoy!', [{"f": {}}]),
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
     [{"f": {"x": 1}}, {"g": {}}]),
    # no call: prose, or a tag that never closes (the checkpoint's regex needs the closing tag)
    ("I cannot help with that.", []),
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}', []),
    # the checkpoint's pattern wants the newlines after/before the tags
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', []),
])
def test_decoder(text, calls):
    assert qwen25_fc.decode_calls(text) == calls


@pytest.mark.parametrize("text", [
    "<tool_call>\n{\"name\": get_weather, \"arguments\": {\"city\": \n</tool_call>",   # neither JSON nor a literal
    "<tool_call>\n[\"f\", {}]\n</tool_call>",                                           # not an object
    "<tool_call>\n{\"arguments\": {}}\n</tool_call>",                                   # no name
    "<tool_call>\n{\"name\": \"f\", \"arguments\": \"x=1\"}\n</tool_call>",              # arguments not an object
    "<tool_call>\n__import__('os').system('true')\n</tool_call>",                     # never executed
])
def test_decoder_refuses_malformed_calls(text):
    with pytest.raises(ValueError, match="malformed <tool_call>"):
        qwen25_fc.decode_calls(text)
    assert tables.undecodable_kind(text) == "malformed_call"


def test_oracle_reads_back_the_native_prompt():
    parsed = oracle_text.parse_prompt(qwen25_fc.format_prompt(MULTI, FUNCTIONS))
    assert parsed == {"users": ["Play Taylor Swift, then Maroon 5.", "Thanks"], "tools": FUNCTIONS, "after_tool": False}
    after = oracle_text.parse_prompt(qwen25_fc.format_prompt(MULTI[:5], FUNCTIONS))
    assert after["after_tool"] is True
    text = oracle_text.hermes([("spotify.play", {"artist": "x"})])
    assert qwen25_fc.decode_calls(text) == [{"spotify.play": {"artist": "x"}}]


def test_server_sampling_is_read_from_argv_and_log():
    argv = ["python", "-m", "vllm.entrypoints.openai.api_server", "--max-model-len", "32768",
            "--override-generation-config", '{"max_new_tokens": 64}']
    log = ("WARNING [model.py:1894] Default vLLM sampling parameters have been overridden by the model's "
           "`generation_config.json`: `{'repetition_penalty': 1.05, 'temperature': 0.7, 'top_k': 20, 'top_p': 0.8}`. "
           "If this is not intended, please relaunch vLLM instance with `--generation-config vllm`.")
    server = audit.server_sampling(argv, log)
    assert server["generation_config"] == "auto" and server["max_tokens_cap"] == 64 and server["max_model_len"] == 32768
    assert server["defaults_from_log"] == {"repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    eff = audit.effective_sampling({"top_p": 1.0, "repetition_penalty": 1.0}, 0.001, "native", server, 32768)
    assert eff["temperature"] == {"value": 0.001, "from": "request"}
    assert eff["top_p"]["value"] == 1.0 and eff["repetition_penalty"]["value"] == 1.0   # ours win
    assert eff["top_k"] == {"value": 20, "from": "server default"}                     # not sent: the server's
    assert "capped at 64" in eff["max_tokens"]["value"]
    assert audit.server_sampling(None, "")["known"] is False


# ---------------------------------------------------------------- real runs against the oracle server

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """The tiny model's folder: bfcl's OSSHandler loads its tokenizer and config (no hub here)."""
    out = tmp_path_factory.mktemp("tiny") / "tiny-qwen2"
    tiny_model.build(out)
    return out


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    server = OracleServer(tmp_path_factory.mktemp("oracle-root"), k=K, seed=SEED)
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def runs(oracle, tokenizer, tmp_path_factory):
    """native oracle (every quick category), native and api on `mixed` (single-turn), in parallel."""
    def go(name, model, path, categories):
        return run_bfcl(oracle.url, model, tmp_path_factory.mktemp(name), categories, quick_per_category=K, seed=SEED,
                        path=path, tokenizer_path=tokenizer, sampling=NEUTRAL, include_input_log=True,
                        temperature=0.001 if path == "native" else 0.0)
    jobs = {"native_oracle": ("oracle", "native", "quick"), "native_mixed": ("mixed", "native", SINGLE_TURN),
            "api_mixed": ("mixed", "api", SINGLE_TURN)}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(go, k, *v) for k, v in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def _items(summary: dict) -> dict[str, dict]:
    out = Path(summary["audit"]["out"])
    with open(out / "items.csv") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_native_oracle_scores_100_everywhere(runs, oracle):
    summary = runs["native_oracle"]
    accuracy = {c: v["accuracy"] for c, v in summary["per_category"].items()}
    assert set(accuracy) == set(spec.FULL) and all(v == 100.0 for v in accuracy.values()), accuracy
    stats = oracle.stats("oracle (completions)")
    assert stats["unmatched"] == 0 and stats["ambiguous"] == 0 and summary["n_missing"] == 0
    out = Path(summary["audit"]["out"])
    assert list((out / "score").glob("data_*.csv")) and list((out / "score").rglob("*_score.json"))  # bfcl's own files


def test_native_requests_are_the_leaderboards(runs, oracle, tokenizer):
    """Sent to /v1/completions: our neutral sampling, temperature 0.001, bfcl's max_tokens."""
    stats = oracle.stats("oracle (completions)")
    sent = [json.loads(p) for p in stats["params"]]
    assert sent and all(p["temperature"] == 0.001 and all(p[k] == v for k, v in NEUTRAL.items()) for p in sent)
    context = json.loads((tokenizer / "config.json").read_text())["max_position_embeddings"]
    assert set(stats["max_tokens"]) <= {4096, 1000} | set(range(1, context))  # min(4096, ctx - prompt - 2), or 1000 past ctx
    assert 4096 in stats["max_tokens"]
    trail = runs["native_oracle"]["audit"]
    assert trail["handler"]["class"] == "experiments.bfcl.handlers.Qwen25FCHandler"
    assert trail["handler"]["flags"]["underscore_to_dot"] is False and "f8106312357d" in trail["handler"]["flags"]["source"]
    assert trail["path"] == "native" and trail["tokenizer_folder"] == str(tokenizer) and trail["context_length_for_max_tokens"] == context
    assert trail["data"]["version"] == "BFCL_v4" and trail["data"]["data_commit"] == "f7cf735"
    matched = runs["native_oracle"]["v3_v4_unchanged"]["per_category"]  # item-matched accuracy
    assert set(matched) <= set(SINGLE_TURN) and matched and all(v["accuracy"] == 100.0 for v in matched.values())
    assert trail["sampling"]["sent_per_request"] == {"temperature": 0.001, **NEUTRAL}
    # --include-input-log: every result keeps the exact prompt it sent
    results = tables.load_results(Path(trail["out"]), runs["native_oracle"]["bfcl_model_key"])
    single = [r for i, r in results.items() if spec.category_of(i) in SINGLE_TURN]
    assert single and all(r["inference_log"][0]["content"]["formatted_prompt"].startswith("<|im_start|>system\n")
                          for r in single)


def test_native_verdicts_equal_api_verdicts_item_by_item(runs):
    native, api = _items(runs["native_mixed"]), _items(runs["api_mixed"])
    assert set(native) == set(api) and len(native) == K * len(SINGLE_TURN)
    assert 0 < sum(r["valid"] == "True" for r in native.values()) < len(native)  # non-trivial
    differ = {i for i in native if native[i]["valid"] != api[i]["valid"]}
    assert differ == set(), {i: (native[i]["raw_output"], api[i]["raw_output"]) for i in differ}
    # the same failure kinds, told apart the same way on both paths
    assert {i: r["error_bucket"] for i, r in native.items()} == {i: r["error_bucket"] for i, r in api.items()}


def test_native_path_needs_a_tokenizer_folder(oracle, tmp_path):
    with pytest.raises(BfclError, match="TOKENIZER="):
        run_bfcl(oracle.url, "oracle", tmp_path, ["simple_python"], path="native")
    with pytest.raises(BfclError, match="lacks config.json"):
        run_bfcl(oracle.url, "oracle", tmp_path, ["simple_python"], path="native", tokenizer_path=tmp_path)


# ---------------------------------------------------------------- anchors and the unchanged-ids file

V3_COLUMNS = {"Non-Live AST Acc", "Non-Live Simple AST", "Non-Live Multiple AST", "Non-Live Parallel AST",
              "Non-Live Parallel Multiple AST", "Live Acc", "Irrelevance Detection"}
GORILLA_GIT = Path("/work/.mirror/ShishirPatil+gorilla/repo")


def _anchors() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parent.parent / "data" / "bfcl_anchors.yaml").read_text())


def test_anchor_rows_name_their_provenance_and_v3_stays_in_comparable_columns():
    anchors = _anchors()
    for a in anchors["anchors"]:
        assert {"source", "data_version", "handler", "mode"} <= set(a), a["name"]
        src = anchors["sources"][a["source"]]
        assert src["date"] and src["url"] and src["files"] and src["data_version"].startswith(f"BFCL {a['data_version']}")
        if a["data_version"] == "v3":
            assert set(a["columns"]) <= V3_COLUMNS, a["name"]
            assert {"Multi Turn Acc", "Overall Acc"} <= set(a["not_comparable"]), a["name"]
        assert all(isinstance(c["value"], (int, float)) and c["csv"] for c in a["columns"].values())
    gpt = next(a for a in anchors["anchors"] if a["name"] == "GPT-4o-2024-11-20 (FC)")
    assert gpt["not_comparable"]["Multi Turn Acc"]["value"] == 50.62  # the corrected value (gorilla #1001)
    names = {a["name"] for a in anchors["anchors"] if a["data_version"] == "v4"}
    assert names == {"ToolACE-2-8B (FC)", "Qwen3-8B (FC)", "xLAM-2-8b-fc-r (FC)", "Hammer2.1-7b (FC)"}


@pytest.mark.skipif(not GORILLA_GIT.is_dir(), reason="needs a clone of ShishirPatil/gorilla (gh-pages)")
def test_anchor_values_equal_the_boards_csvs():
    import subprocess

    anchors = _anchors()
    for a in anchors["anchors"]:
        commit = anchors["sources"][a["source"]]["url"].rstrip("/").rsplit("/", 1)[1]
        for column, cell in {**a["columns"], **a.get("not_comparable", {})}.items():
            file, header = cell["csv"].split(" ", 1)
            text = subprocess.run(["git", "--git-dir", str(GORILLA_GIT), "show", f"{commit}:{file}"],
                                  capture_output=True, text=True, check=True).stdout.splitlines()
            names = text[0].split(",")
            row = next(dict(zip(names, line.split(","))) for line in text[1:] if a["name"] in line.split(","))
            assert row[header] == f"{cell['value']:.2f}%", (a["name"], column)


def test_unchanged_ids_file_matches_the_packaged_data():
    data = json.loads((Path(__file__).resolve().parent.parent / "data" / "bfcl_v3_v4_unchanged_ids.json").read_text())
    from bfcl_eval.constants.eval_config import POSSIBLE_ANSWER_PATH, PROMPT_PATH

    for key, digest in data["v4"]["sha256"].items():
        folder = POSSIBLE_ANSWER_PATH if key.startswith("answer/") else PROMPT_PATH
        assert audit.sha256_file(folder / key.split("/", 1)[1]) == digest, key
    assert set(data["categories"]) == set(SINGLE_TURN)
    for category, c in data["categories"].items():
        assert c["unchanged"] == len(c["ids"]) <= c["v4_items"] and all(spec.category_of(i) == category for i in c["ids"])
    assert sum(c["unchanged"] for c in data["categories"].values()) / sum(c["v4_items"] for c in data["categories"].values()) > 0.98


# ---------------------------------------------------------------- the report's BFCL section

def test_report_section_shows_both_paths_and_anchor_provenance(runs, tmp_path):
    from experiments.report import bfcl as section_bfcl
    from experiments.report.common import MISSING

    run = {"id": "r1", "dir": tmp_path / "r1", "info": {"method": "lora", "model": "tiny"},
           "bfcl_paths": {"api": runs["api_mixed"], "native": runs["native_mixed"]}, "bfcl": runs["api_mixed"]}
    anchors = _anchors()
    d = {"kind": "merged", "subject": run, "rows": [run], "base": None, "anchors": anchors,
         "anchors_path": Path("data/bfcl_anchors.yaml"), "results": tmp_path}
    text = "\n".join(section_bfcl.section(d, {}))
    board = section_bfcl.bfcl_rows(section_bfcl.measured_rows(d), anchors).set_index("model")
    for path in ("api", "native"):
        row = board.loc[f"lora `r1` (merged, {path})"]
        assert section_bfcl.PATH_LABEL[path] in row["kind"]
        for column in section_bfcl.BFCL_COLUMNS:
            value = runs[f"{path}_mixed"]["leaderboard"].get(column)
            assert row[column] == (MISSING if value is None else f"{value:.2f}"), (path, column)
    for a in anchors["anchors"]:
        row = board.loc[a["name"]]
        assert row["kind"].startswith(f"published, not measured here (BFCL {a['data_version']}")
        for column in section_bfcl.BFCL_COLUMNS:
            shown = a["columns"].get(column)
            assert row[column] == (f"{shown['value']:.2f}" if shown else MISSING), (a["name"], column)
        if a["data_version"] == "v3":
            assert row["Multi Turn Acc"] == MISSING and row["Overall Acc"] == MISSING
        assert a["handler"] in text and a["mode"] in text
    for src in anchors["sources"].values():
        assert src["url"] in text and src["date"] in text and src["data_version"] in text
    assert "50.62 (v3 multi-turn data (corrected value, gorilla #1001))" in text
    assert "### Items unchanged between BFCL v3 and v4" in text and "bfcl_v3_v4_unchanged_ids.json" in text
