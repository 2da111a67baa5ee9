"""Decontamination against BFCL: planted questions and function sets are found per category and,
with drop, removed; the n-gram threshold means what it says; the shipped samples are clean."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data import decontam, glaive, hermes, prepare, schema, toolace  # noqa: E402
from experiments.data.sources import load_raw  # noqa: E402
from test_toolace import HEAD, TAIL, WEATHER, row  # noqa: E402

needs_bfcl = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None,
                                reason="bfcl-eval is in the eval env only (.venv/eval/bin/python -m pytest ...)")


def item(category, iid, question, tools=None):
    return {"category": category, "id": iid, "questions": [question],
            "tools": decontam.tool_key(tools) if tools else None}


def test_ngram_threshold_is_containment_of_the_bfcl_question():
    q = "find the area of a triangle with a base of ten units"      # 12 words: 5 word 8-grams
    index = decontam.Index([item("simple_python", "s0", q)], n=8, threshold=0.5)
    user = lambda text: {"messages": [{"role": "user", "content": text}], "tools": []}  # noqa: E731
    assert index.matches(user("Find the AREA of a triangle, with a base of ten units!")) == [(0, "exact"), (0, "ngram")]
    wrapped = "Historical dialog data is as follows: ... please find the area of a triangle with a base of 3"
    assert index.matches(user(wrapped)) == [(0, "ngram")]            # 3 of 5 8-grams = 0.6
    assert index.matches(user("so find the area of a triangle with a base")) == []  # 2 of 5 = 0.4
    assert decontam.Index([item("x", "s", "too short to have grams")], n=8).matches(user("too short to have grams")) \
        == [(0, "exact")]
    with pytest.raises(ValueError):
        decontam.Index([], n=0)


def test_identical_function_doc_sets_are_found_whatever_the_spelling():
    bfcl_fn = {"name": "weather.get", "description": "Weather.", "parameters": {
        "type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    index = decontam.Index([item("live_simple", "l0", "some question nobody asks", [bfcl_fn])])
    same = toolace.convert_row(row(("user", "q"), ("assistant", "a"), tools=[bfcl_fn]))
    assert index.matches(same) == [(0, "function_docs")]
    other = toolace.convert_row(row(("user", "q"), ("assistant", "a"), tools=[bfcl_fn, WEATHER]))
    assert index.matches(other) == []                                # a superset is not the same set


@needs_bfcl
def test_planted_bfcl_question_is_found_per_category_and_dropped(tmp_path):
    items = {i["id"]: i for i in decontam.load_bfcl()}
    assert len(items) > 4000 and {"simple_python", "live_multiple", "multi_turn_base"} <= {
        i["category"] for i in items.values()}
    data_dir = decontam.bfcl_data_dir()
    entry = json.loads((data_dir / "BFCL_v4_simple_python.json").read_text().splitlines()[0])
    question, functions = entry["question"][0][0]["content"], entry["function"]
    sample = load_raw(path=str(ROOT / "data" / "toolace_sample.jsonl"))
    planted = {"system": HEAD + json.dumps(functions) + TAIL,
               "conversations": [{"from": "user", "value": question.upper()}, {"from": "assistant", "value": "ok"}]}
    live = json.loads((data_dir / "BFCL_v4_live_simple.json").read_text().splitlines()[3])
    wrapped = {"system": HEAD + json.dumps([WEATHER]) + TAIL, "conversations": [
        {"from": "user", "value": "Role definition: helper. Historical dialog data is as follows: "
                                  + live["question"][0][-1]["content"] + " Thanks."},
        {"from": "assistant", "value": "ok"}]}
    raw = sample[:40] + [planted] + sample[40:80] + [wrapped]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in raw))
    data = {"name": "t", "path": str(tmp_path / "rows.jsonl"), "decontaminate": "report"}
    report = prepare.prepare(data, tmp_path / "r", decontaminate=prepare.bfcl_check(data))
    found = report["decontamination"]
    assert found["rows_overlapping"] == 2 and found["rows_dropped"] == 0 and report["rows_out"] == 82
    assert found["by_category"]["simple_python"] == {"exact": 1, "function_docs": 1, "ngram": 1, "rows": 1}
    assert found["by_category"]["live_simple"]["ngram"] == 1
    assert {e["row"] for e in found["examples"]} == {40, 81}
    assert {"bfcl_id": "simple_python_0", "check": "exact"} in found["examples"][0]["matches"]

    data["decontaminate"] = "drop"
    report = prepare.prepare(data, tmp_path / "d", decontaminate=prepare.bfcl_check(data))
    assert report["decontamination"]["rows_dropped"] == 2 and report["rows_out"] == 80
    assert report["sources"]["t"]["bfcl_overlap"] == {"rows_checked": 82, "rows_overlapping": 2, "rows_dropped": 2}
    text = (tmp_path / "d" / "train.jsonl").read_text()
    assert question.upper() not in text and "Role definition: helper." not in text
    with pytest.raises(prepare.PrepareError, match="decontaminate"):
        prepare.bfcl_check({"decontaminate": "maybe"})
    assert prepare.bfcl_check({"decontaminate": "off"}) is None


@needs_bfcl
def test_shipped_samples_do_not_overlap_bfcl():
    index = decontam.Index(decontam.load_bfcl())
    converted = [schema.convert_rows(load_raw(path=str(ROOT / "data" / f"{k}_sample.jsonl")), m.convert_row)[0]
                 for k, m in (("toolace", toolace), ("glaive", glaive), ("hermes", hermes))]
    kept, report = decontam.check(converted, ["toolace", "glaive", "hermes"], index, "drop")
    assert report["rows_overlapping"] == 0 and [len(k) for k in kept] == [len(c) for c in converted]
