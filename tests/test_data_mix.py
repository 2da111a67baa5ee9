"""Glaive v2 and Hermes converters, the mixture (weights, caps, seeds, per-source report) and the
shipped samples of each schema."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data import glaive, hermes, mix, prepare, schema  # noqa: E402
from experiments.data.schema import RowError  # noqa: E402
from experiments.data.sources import load_raw  # noqa: E402

DATA = ROOT / "data"
NEWS = {"name": "get_news", "description": "Headlines.", "parameters": {
    "type": "object", "properties": {"country": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["country"]}}
GLAIVE_SYSTEM = ("SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
                 + json.dumps(NEWS, indent=4) + "\n\n" + json.dumps({**NEWS, "name": "get_time"}) + "\n")


def calls(out):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for m in out["messages"] for c in m.get("tool_calls") or ()]


# --------------------------------------------------------------------------- Glaive v2


def test_glaive_row_converts_exactly():
    chat = ("USER: News for Spain, 3 items? \n\n\nASSISTANT: Sure. <functioncall> {\"name\": \"get_news\", "
            "\"arguments\": '{\"country\": \"Spain\", \"limit\": 3}'} <|endoftext|>\n\n\n"
            "FUNCTION RESPONSE: {\"headlines\": [\"a\", \"b\"]}\n\n\nASSISTANT: Here: a, b. <|endoftext|>\n\n\n")
    out = glaive.convert_row({"system": GLAIVE_SYSTEM, "chat": chat})
    assert out["messages"] == [
        {"role": "system", "content": "You are a helpful assistant with access to the following functions. "
                                      "Use them if required"},
        {"role": "user", "content": "News for Spain, 3 items?"},
        {"role": "assistant", "content": "Sure.", "tool_calls": [{"type": "function", "function": {
            "name": "get_news", "arguments": '{"country": "Spain", "limit": 3}'}}]},
        {"role": "tool", "content": '{"headlines": ["a", "b"]}'},
        {"role": "assistant", "content": "Here: a, b."}]
    assert [t["function"]["name"] for t in out["tools"]] == ["get_news", "get_time"]
    assert json.loads(out["tools"][0]["function"]["parameters"]) == NEWS["parameters"]


def test_glaive_no_functions_row_is_text_only():
    out = glaive.convert_row({"system": "SYSTEM: You are a helpful assistant, with no access to external functions.",
                              "chat": "USER: Hi\n\n\nASSISTANT: Hello! <|endoftext|>"})
    assert out["tools"] == [] and out["messages"][-1] == {"role": "assistant", "content": "Hello!"}


@pytest.mark.parametrize("kind, system, chat", [
    ("undecodable_call", GLAIVE_SYSTEM, "USER: q\n\n\nASSISTANT: <functioncall> {\"name\": \"get_news\", \"arguments\": '{bad}'}"),
    ("unknown_tool", GLAIVE_SYSTEM, "USER: q\n\n\nASSISTANT: <functioncall> {\"name\": \"nope\", \"arguments\": '{}'}"),
    ("unknown_argument", GLAIVE_SYSTEM, "USER: q\n\n\nASSISTANT: <functioncall> {\"name\": \"get_news\", \"arguments\": '{\"x\": 1}'}"),
    ("bad_tool_list", "SYSTEM: functions -\n{\"name\": \"f\",", "USER: q\n\n\nASSISTANT: a"),
    ("orphan_tool_result", GLAIVE_SYSTEM, "USER: q\n\n\nFUNCTION RESPONSE: {}\n\n\nASSISTANT: a"),
    ("bad_turn", GLAIVE_SYSTEM, "hello USER: q"),
    ("empty_conversation", GLAIVE_SYSTEM, ""),
    ("empty_assistant_turn", GLAIVE_SYSTEM, "USER: q\n\n\nASSISTANT: <|endoftext|>"),
    ("no_assistant_turn", GLAIVE_SYSTEM, "USER: q"),
])
def test_glaive_malformed_rows_are_rejected(kind, system, chat):
    with pytest.raises(RowError) as e:
        glaive.convert_row({"system": system, "chat": chat})
    assert e.value.kind == kind and e.value.reason


# --------------------------------------------------------------------------- Hermes


def hermes_row(gpt, tool=None, tools_text=None):
    tools_text = tools_text or repr([{"type": "function", "function": NEWS}])
    turns = [{"from": "system", "value": f"Functions within <tools> </tools> tags.\n<tools>\n{tools_text}\n</tools>"},
             {"from": "human", "value": "q"}, {"from": "gpt", "value": gpt}]
    if tool is not None:
        turns += [{"from": "tool", "value": tool}, {"from": "gpt", "value": "done"}]
    return {"conversations": turns}


def test_hermes_parallel_python_literal_calls_and_responses():
    gpt = ("<tool_call>\n{'arguments': {'country': 'ES', 'limit': 2}, 'name': 'get_news'}\n</tool_call>\n"
           '<tool_call>\n{"name": "get_news", "arguments": "{\\"country\\": \\"FR\\"}"}\n</tool_call>')
    tool = "<tool_response>\n{'name': 'get_news', 'content': 1}\n</tool_response>\n<tool_response>\n{\"x\": 2}\n</tool_response>"
    out = hermes.convert_row(hermes_row(gpt, tool))
    assert calls(out) == [("get_news", {"country": "ES", "limit": 2}), ("get_news", {"country": "FR"})]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]  # system dropped
    assert [m["content"] for m in out["messages"][2:4]] == ["{'name': 'get_news', 'content': 1}", '{"x": 2}']
    json_tools = hermes.convert_row(hermes_row(gpt, tool, tools_text=json.dumps([NEWS])))
    assert json_tools == out


@pytest.mark.parametrize("kind, row", [
    ("text_between_calls", hermes_row("<tool_call>\n{'arguments': {'country': 'ES'}, 'name': 'get_news'}\n</tool_call> and more")),
    ("undecodable_call", hermes_row("<tool_call>\n{'arguments': {'country': __import__('os')}, 'name': 'get_news'}\n</tool_call>")),
    ("unknown_tool", hermes_row("<tool_call>\n{'arguments': {}, 'name': 'other'}\n</tool_call>")),
    ("bad_tool_list", hermes_row("a", tools_text="[{'name': 'f',")),
    ("orphan_tool_result", {"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "x"},
                                              {"from": "gpt", "value": "a"}]}),
    ("bad_turn", {"conversations": [{"from": "narrator", "value": "q"}]}),
])
def test_hermes_malformed_rows_are_rejected(kind, row):
    with pytest.raises(RowError) as e:
        hermes.convert_row(row)
    assert e.value.kind == kind and e.value.reason


# --------------------------------------------------------------------------- the samples


def test_samples_convert_cleanly_and_match_their_generator():
    spec = importlib.util.spec_from_file_location("make_mix_samples", ROOT / "scripts" / "make_mix_samples.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for kind, module in (("glaive", glaive), ("hermes", hermes)):
        raw = load_raw(path=str(DATA / f"{kind}_sample.jsonl"))
        assert gen.make_rows(kind, len(raw), seed=0) == raw
        converted, rejects = schema.convert_rows(raw, module.convert_row)
        assert rejects == [] and len(converted) == len(raw) >= 20
        assert sum(bool(r["tools"]) for r in converted) >= 15 and any(not r["tools"] for r in converted)
    hermes_rows, _ = schema.convert_rows(load_raw(path=str(DATA / "hermes_sample.jsonl")), hermes.convert_row)
    assert any(len(m.get("tool_calls") or ()) > 1 for r in hermes_rows for m in r["messages"])


# --------------------------------------------------------------------------- mixing


def src(name, weight=1.0, max_rows=None):
    return mix.check_sources([{"name": name, "converter": "toolace", "path": "x", "weight": weight,
                               "max_rows": max_rows}])[0]


def test_interleave_shares_follow_weights_within_sampling_error():
    weights = [0.5, 0.3, 0.2]
    sources = [src(f"s{i}", w) for i, w in enumerate(weights)]
    pairs = mix.mix_indices([4000, 4000, 4000], sources, seed=1)
    n = len(pairs)
    assert n > 5000
    for i, w in enumerate(weights):
        share = sum(s == i for s, _ in pairs) / n
        assert abs(share - w) < 4 * math.sqrt(w * (1 - w) / n), (i, share)
    assert len(set(pairs)) == n                                # first_exhausted: no repeats
    assert mix.mix_indices([4000, 4000, 4000], sources, seed=1) == pairs   # seed reproducible
    assert mix.mix_indices([4000, 4000, 4000], sources, seed=2) != pairs


def test_caps_concat_fractions_and_all_exhausted():
    rows = [[{"i": (k, j)} for j in range(n)] for k, n in enumerate([100, 50])]
    sources = [src("a", 0.5), src("b", 1.0, max_rows=20)]
    mixed, pairs, counts = mix.mix(rows, sources, seed=0, strategy="concat")
    assert counts == [50, 20] and len(mixed) == 70 and len(set(pairs)) == 70
    assert [r["i"] for r in mixed] == [(i, j) for i, j in pairs]      # the converter's rows, unchanged
    _, pairs2, _ = mix.mix(rows, sources, seed=0, strategy="concat")
    assert pairs2 == pairs
    _, pairs, counts = mix.mix(rows, [src("a", 0.5), src("b", 0.5, max_rows=5)], seed=0, stopping="all_exhausted")
    assert {j for i, j in pairs if i == 0} == set(range(100)) and len({j for i, j in pairs if i == 1}) == 5
    assert counts[1] > 5                                        # the capped source repeats
    one = [src("only")]
    assert mix.mix_indices([7], one, seed=3) == [(0, j) for j in range(7)]  # one whole source: in order


@pytest.mark.parametrize("sources, strategy, match", [
    ([{"converter": "alpaca", "path": "x"}], "interleave", "converter='alpaca'"),
    ([{"converter": "glaive", "path": "x", "hf_id": "y"}], "interleave", "exactly one of path and hf_id"),
    ([{"converter": "glaive", "path": "x", "wieght": 1}], "interleave", "unknown key"),
    ([{"converter": "glaive", "path": "x", "weight": -1}], "interleave", "weight=-1"),
    ([{"converter": "glaive", "path": "x", "weight": 2}], "concat", "fraction"),
    ([{"converter": "glaive", "path": "x", "max_rows": 0}], "interleave", "max_rows=0"),
    ([{"converter": "glaive", "path": "x"}, {"converter": "glaive", "path": "y"}], "interleave", "two sources"),
    ([], "interleave", "non-empty"),
    ([{"converter": "glaive", "path": "x"}], "random", "data.strategy"),
])
def test_bad_mixture_configs_fail_fast_naming_the_key(sources, strategy, match):
    with pytest.raises(mix.MixError, match=match):
        mix.check_sources(sources, strategy)


def test_prepare_writes_the_mixture_and_per_source_report(tmp_path):
    glaive_rows = load_raw(path=str(DATA / "glaive_sample.jsonl"))
    bad = {"system": GLAIVE_SYSTEM, "chat": "USER: q\n\n\nASSISTANT: <functioncall> {\"name\": \"nope\", \"arguments\": '{}'}"}
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in glaive_rows + [bad, bad]))
    data = {"name": "m", "seed": 0, "strategy": "interleave", "stopping_strategy": "all_exhausted", "sources": [
        {"name": "ta", "converter": "toolace", "path": str(DATA / "toolace_sample.jsonl"), "weight": 0.7},
        {"name": "gl", "converter": "glaive", "path": str(tmp_path / "g.jsonl"), "weight": 0.3, "max_rows": 10}]}
    report = prepare.prepare(data, tmp_path / "out", count_tokens=lambda r: len(json.dumps(r)))
    written = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    on_disk = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    ta, gl = report["sources"]["ta"], report["sources"]["gl"]
    assert (ta["rows_in"], ta["rows_out"], gl["rows_in"], gl["rows_out"]) == (222, 222, 26, 24)
    assert gl["rejected_by_kind"] == {"unknown_tool": 2} and report["rejected_by_kind"] == {"unknown_tool": 2}
    assert ta["rows_in_mix"] + gl["rows_in_mix"] == report["rows_out"] == len(written)
    assert ta["rows_in_mix"] == 222 and len({json.dumps(r) for r in written} - {json.dumps(r) for r in
                                            schema.convert_rows(glaive_rows, glaive.convert_row)[0]}) == 222  # 10 distinct glaive rows
    assert report["tokens"] == sum(len(json.dumps(r)) for r in written) == ta["tokens_in_mix"] + gl["tokens_in_mix"]
    assert [r["source"] for r in report["rejects"]] == ["gl", "gl"]


def test_prepare_single_source_is_the_converter_output_in_order(tmp_path):
    from experiments.data import toolace
    report = prepare.prepare({"name": "toolace_sample", "path": str(DATA / "toolace_sample.jsonl"), "max_rows": 30},
                             tmp_path)
    written = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert written == toolace.convert_rows(load_raw(path=str(DATA / "toolace_sample.jsonl"), max_rows=30))[0]
    assert report["rows_in"] == report["rows_out"] == 30 and report["tokens"] is None


def test_prepare_with_nothing_left_writes_the_report_and_fails(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"system": GLAIVE_SYSTEM, "chat": "USER: q"}) + "\n")
    with pytest.raises(prepare.PrepareError, match="data_report.json"):
        prepare.prepare({"name": "x", "converter": "glaive", "path": str(tmp_path / "bad.jsonl")}, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "data_report.json").read_text())["rejected_by_kind"] == {"no_assistant_turn": 1}


def test_fuzzed_glaive_and_hermes_rows_are_converted_or_rejected_never_crash():
    import random
    rng = random.Random(17)
    noise = list("{}[]'\":,\n") + ["<functioncall>", "<tool_call>", "</tool_call>", "<tools>", "USER: ",
                                   "ASSISTANT: ", "FUNCTION RESPONSE: ", "<|endoftext|>", "__import__"]

    def mutate(text):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(chars) + 1)
            if rng.random() < 0.5 and chars:
                del chars[min(at, len(chars) - 1)]
            else:
                chars.insert(at, rng.choice(noise))
        return "".join(chars)

    outcomes = {"ok": 0, "rejected": 0}
    samples = {kind: load_raw(path=str(DATA / f"{kind}_sample.jsonl")) for kind in ("glaive", "hermes")}
    for i in range(400):
        kind = ("glaive", "hermes")[i % 2]
        r = json.loads(json.dumps(rng.choice(samples[kind])))
        if kind == "glaive":
            field = "system" if rng.random() < 0.3 else "chat"
            r[field] = mutate(r[field])
        else:
            turn = rng.choice(r["conversations"])
            turn["value"] = mutate(turn["value"])
        try:
            out = (glaive if kind == "glaive" else hermes).convert_row(r)
        except RowError as e:
            assert e.kind and e.reason
            outcomes["rejected"] += 1
            continue
        json.dumps(out)
        outcomes["ok"] += 1
    assert outcomes["ok"] > 50 and outcomes["rejected"] > 50
