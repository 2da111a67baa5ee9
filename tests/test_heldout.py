"""The fixed held-out split and the scoring of held-out answers (pure), and the report's base vs
tuned section built from such files."""
from __future__ import annotations

import json

import pytest

from experiments.core.paths import REPO_ROOT
from experiments.data import heldout, toolace
from experiments.report import learning


def sample_rows():
    converted, rejects = toolace.convert_rows(toolace.load_raw(path=str(REPO_ROOT / "data" / "toolace_sample.jsonl")))
    assert not rejects
    return converted


def test_split_is_fixed_disjoint_and_ordered():
    rows = sample_rows()
    train, held, idx = heldout.split(rows, 20, seed=0)
    assert len(held) == 20 and len(train) == len(rows) - 20 and idx == sorted(idx)
    assert [rows[i] for i in idx] == held
    assert not {json.dumps(r) for r in held} & {json.dumps(r) for r in train}
    assert heldout.split(rows, 20, seed=0)[2] == idx                 # same seed, same rows
    assert heldout.split(rows, 20, seed=1)[2] != idx                 # the seed decides
    assert heldout.split(rows, 0, seed=0) == (rows, [], [])
    for bad in (-1, len(rows)):
        with pytest.raises(ValueError, match="heldout_rows"):
            heldout.split(rows, bad, seed=0)


def test_prompt_is_everything_before_the_first_answer():
    native = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]}
    p = heldout.prompt_of(native)
    assert [m["role"] for m in p["messages"]] == ["system", "user"]
    assert p["expected_calls"] == [{"name": "f", "arguments": {"a": 1}}] and p["tools"] == native["tools"]
    assert heldout.prompt_of({"tools": [], "messages": [{"role": "user", "content": "u"}]}) is None


def test_score_parsed_right_function_exact_arguments():
    exp = [{"name": "f", "arguments": {"a": 1, "b": [1, 2]}}, {"name": "g", "arguments": {}}]
    exact = heldout.score(exp, [{"name": "g", "arguments": "{}"}, {"name": "f", "arguments": '{"b": [1, 2], "a": 1}'}])
    assert exact == {"expects_call": True, "parsed": True, "right_function": True, "exact_arguments": True, "no_call": False}
    wrong_args = heldout.score(exp, [{"name": "f", "arguments": '{"a": 2, "b": [1, 2]}'}, {"name": "g", "arguments": "{}"}])
    assert wrong_args["right_function"] and not wrong_args["exact_arguments"]
    one_missing = heldout.score(exp, [{"name": "f", "arguments": '{"a": 1, "b": [1, 2]}'}])
    assert one_missing["parsed"] and not one_missing["right_function"] and not one_missing["exact_arguments"]
    undecodable = heldout.score([{"name": "g", "arguments": {}}], [{"name": "g", "arguments": "{not json"}])
    assert undecodable["right_function"] and not undecodable["exact_arguments"]
    none = heldout.score(exp, [])
    assert not none["parsed"] and not none["right_function"]
    assert heldout.score([], [])["no_call"] and not heldout.score([], [{"name": "f", "arguments": "{}"}])["no_call"]
    counts = heldout.summarize([exact, wrong_args, none, {**heldout.score([], []), "error": "HTTP 500"}])
    assert counts == {"rows": 4, "call_rows": 3, "parsed": 2, "right_function": 2, "exact_arguments": 1,
                      "text_rows": 1, "text_rows_no_call": 1, "errors": 1}


def _bfcl(acc: dict) -> dict:
    return {"per_category": {c: {"accuracy": a} for c, a in acc.items()}}


def test_learning_section_shows_both_models_and_what_moved(tmp_path):
    held = {"rows": 20, "call_rows": 18, "parsed": 12, "right_function": 7, "exact_arguments": 3,
            "text_rows": 2, "text_rows_no_call": 0, "errors": 0}
    base_held = {**held, "parsed": 0, "right_function": 0, "exact_arguments": 0, "text_rows_no_call": 2}
    d = {"results": tmp_path, "kind": "merged",
         "subject": {"id": "r", "dir": tmp_path / "r", "info": {"model": "smol"},
                     "config": {"model": {"note": "small model: absolute scores are low"}},
                     "metrics": {"steps": 10, "eval_loss_curve": [[0, 0.88], [10, 0.49]]},
                     "bfcl": _bfcl({"simple_python": 20.0, "irrelevance": 30.0})},
         "heldout": {"base": base_held, "merged": held},
         "subject_bfcl_base": _bfcl({"simple_python": 0.0, "irrelevance": 100.0})}
    text = "\n".join(learning.section(d, {}))
    assert "0.8800 before training" in text and "0.4900 after 10" in text and "-0.3900" in text
    assert "| base `smol` |" in text.replace("  ", " ") or "base `smol`" in text
    assert "absolute scores are low" in text
    lines = [line for line in text.splitlines() if "tuned (merged)" in line]
    assert lines and "12" in lines[0] and "7" in lines[0]
    assert "**Moved up**: simple_python (0 -> 20)" in text and "**Got worse**: irrelevance (100 -> 30)" in text
    # nothing measured: says which commands write it, invents nothing
    empty = "\n".join(learning.section({**d, "heldout": {}, "subject_bfcl_base": None,
                                        "subject": {**d["subject"], "metrics": None}}, {}))
    assert "make eval RUN=r MODEL=base" in empty and "Moved up" not in empty and "before training" not in empty
