"""ToolACE conversion: pythonic-call parsing, row conversion and rejects, the shipped sample,
and (in the train env) rendering through Axolotl's own chat_template strategy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data import toolace  # noqa: E402
from experiments.data.toolace import CallParseError, RowError, parse_pythonic_calls  # noqa: E402

SAMPLE = ROOT / "data" / "toolace_sample.jsonl"
TRAIN_PYTHON = os.environ.get("TRAIN_PYTHON", str(ROOT / ".venv" / "train" / "bin" / "python"))

HEAD = ("You are an expert in composing functions. You are given a question and a set of possible functions.\n"
        "Here is a list of functions in JSON format that you can invoke:\n")
TAIL = (". \nShould you decide to return the function call(s). \nPut it in the format of "
        "[func1(params_name=params_value, params_name2=params_value2...), func2(params)]\n\nNO other text MUST be included. \n")
WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "dict", "properties": {
               "city": {"type": "string", "description": "City."},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
               "days": {"type": "integer"}}, "required": ["city"]}}
SEARCH = {"name": "Flight Search API", "description": "Find flights.",
          "parameters": {"type": "dict", "properties": {
              "route": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
              "stops": {"type": "array", "items": {"type": "string"}},
              "max_price": {"type": "float"}, "flexible": {"type": "boolean"}}, "required": ["route"]}}


def system(tools) -> str:
    return HEAD + json.dumps(tools) + TAIL


def row(*turns, tools=(WEATHER, SEARCH)) -> dict:
    return {"system": system(list(tools)), "conversations": [{"from": r, "value": v} for r, v in turns]}


# --------------------------------------------------------------------------- parsing


def test_parses_nested_array_enum_none_negative_values():
    calls = parse_pythonic_calls(
        '[f(a=-1, b=-2.5, c=None, d=[1, "x", True, [False]], e={"k": {"n": [1, -2]}, "s": "a,b(c)"}, '
        'unit="celsius", t=(1, 2), z=+3)]')
    assert calls == [{"name": "f", "arguments": {
        "a": -1, "b": -2.5, "c": None, "d": [1, "x", True, [False]], "e": {"k": {"n": [1, -2]}, "s": "a,b(c)"},
        "unit": "celsius", "t": [1, 2], "z": 3}}]


def test_parses_parallel_dotted_spaced_and_json_spelled_calls():
    text = '[get_weather(city="Paris"), math.factorial(n=5), Flight Search API(route={"from": "A"}), g(x=true, y=null)]'
    calls = parse_pythonic_calls(text, tool_names=["Flight Search API"])
    assert [c["name"] for c in calls] == ["get_weather", "math.factorial", "Flight Search API", "g"]
    assert calls[2]["arguments"] == {"route": {"from": "A"}}
    assert calls[3]["arguments"] == {"x": True, "y": None}
    assert parse_pythonic_calls("[ping()]") == [{"name": "ping", "arguments": {}}]
    assert parse_pythonic_calls('get_weather(city="Oslo")') == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]


@pytest.mark.parametrize("text, why", [
    ('[get_weather(city="Paris"', "parseable"),            # unbalanced brackets
    ('[get_weather(city="Paris")]]', "parseable"),
    ('[get_weather("Paris")]', "positional"),
    ('[get_weather(city=lookup("Paris"))]', "literal"),     # a call inside an argument is code
    ("[get_weather(city=somevar)]", "literal"),
    ("[f(x=1 + 2)]", "literal"),
    ("[f(**opts)]", "kwargs"),
    ("[f(x=1, x=2)]", "twice"),
    ("[f(x=1e999)]", "non-finite"),
    ('[f(x={1: "a"})]', "not a string"),
    ("[1, 2]", "not a call"),
    ("[]", "empty"),
    ("   ", "empty"),
])
def test_undecodable_calls_raise_clear_errors(text, why):
    with pytest.raises(CallParseError, match=why):
        parse_pythonic_calls(text)


def test_format_and_parse_round_trip():
    calls = [{"name": "f", "arguments": {"s": 'quote " and \\ and ünïcode', "n": -0.5, "l": [None, {"a": [1]}]}},
             {"name": "g", "arguments": {}}]
    assert parse_pythonic_calls(toolace.format_pythonic_calls(calls)) == calls


# --------------------------------------------------------------------------- rows


def test_converts_a_full_conversation_to_storage_form():
    r = row(("user", "Weather in Paris for 3 days, and flights A->B?"),
            ("assistant", '[get_weather(city="Paris", unit="celsius", days=3), '
                          'Flight Search API(route={"from": "A", "to": "B"}, stops=[], max_price=-1.5, flexible=None)]'),
            ("tool", '[{"name": "get_weather", "results": {"t": 21}}]'),
            ("assistant", "21 degrees; flights found."))
    out = toolace.convert_row(r)
    m = out["messages"]
    assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "assistant"]
    # instructions kept; the embedded list and the pythonic-format instruction removed
    assert m[0]["content"].startswith("You are an expert in composing functions")
    assert "Here is a list of functions" not in m[0]["content"] and "[func1(" not in m[0]["content"]
    assert m[2]["content"] == ""
    calls = m[2]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "Flight_Search_API"]
    assert all(c["type"] == "function" and isinstance(c["function"]["arguments"], str) for c in calls)
    assert json.loads(calls[1]["function"]["arguments"]) == {
        "route": {"from": "A", "to": "B"}, "stops": [], "max_price": -1.5, "flexible": None}
    assert m[3] == {"role": "tool", "content": '[{"name": "get_weather", "results": {"t": 21}}]'}
    assert m[4] == {"role": "assistant", "content": "21 degrees; flights found."}
    assert "tool_calls" not in m[1] and "tool_calls" not in m[4]

    tools = out["tools"]
    assert [t["function"]["name"] for t in tools] == ["get_weather", "Flight_Search_API"]
    assert all(set(t) == {"type", "function"} and set(t["function"]) == {"name", "description", "parameters"}
               for t in tools)
    params = json.loads(tools[1]["function"]["parameters"])
    assert params == {"type": "object", "properties": {
        "route": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
        "stops": {"type": "array", "items": {"type": "string"}},
        "max_price": {"type": "number"}, "flexible": {"type": "boolean"}}, "required": ["route"]}
    assert toolace.to_native(out)["tools"][1]["function"]["parameters"] == params


def test_odd_tool_names_and_duplicate_definitions():
    odd = {"name": "Stock/Quote-v2", "description": "Quote.", "parameters": {"type": "dict", "properties": {
        "symbol": {"type": "string"}}}}
    out = toolace.convert_row(row(("user", "q"), ("assistant", '[Stock/Quote-v2(symbol="IBM")]'),
                                  tools=[odd, WEATHER, odd]))
    assert [t["function"]["name"] for t in out["tools"]] == ["Stock_Quote-v2", "get_weather"]  # one copy kept
    assert out["messages"][-1]["tool_calls"][0]["function"] == {"name": "Stock_Quote-v2",
                                                               "arguments": '{"symbol": "IBM"}'}
    clash = {**WEATHER, "name": "get.weather", "description": "another tool"}  # same OpenAI-valid name
    with pytest.raises(RowError) as e:
        toolace.convert_row(row(("user", "q"), ("assistant", "a"), tools=[{**WEATHER, "name": "get_weather"}, clash]))
    assert e.value.kind == "bad_tool"


def test_answer_without_call_stays_text():
    out = toolace.convert_row(row(("user", "Write a poem."), ("assistant", "None of the functions can do that.")))
    assert out["messages"][-1] == {"role": "assistant", "content": "None of the functions can do that."}


BAD_ROWS = [
    ("undecodable_call", row(("user", "q"), ("assistant", '[get_weather(city="Paris"'))),
    ("unknown_tool", row(("user", "q"), ("assistant", '[get_time(tz="UTC")]'))),
    ("unknown_argument", row(("user", "q"), ("assistant", '[get_weather(town="Paris")]'))),
    ("no_tool_list", {"system": "You are a helpful assistant.", "conversations": [
        {"from": "user", "value": "q"}, {"from": "assistant", "value": '[get_weather(city="Paris")]'}]}),
    ("no_tool_list", {"system": "Tools: " + json.dumps([WEATHER]), "conversations": [
        {"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}),
    ("empty_assistant_turn", row(("user", "q"), ("assistant", "  "))),
    ("bad_tool_list", {"system": HEAD + '[{"name": "f",' + TAIL, "conversations": [
        {"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}),
    ("bad_tool", row(("user", "q"), ("assistant", "a"), tools=[{"description": "nameless"}])),
    ("unknown_role", row(("user", "q"), ("narrator", "meanwhile"), ("assistant", "a"))),
    ("empty_conversation", {"system": system([WEATHER]), "conversations": []}),
    ("orphan_tool_result", row(("user", "q"), ("tool", '{"t": 1}'), ("assistant", "a"))),
    ("no_assistant_turn", row(("user", "q"))),
    ("bad_turn", row(("user", "q"), ("assistant", None))),
]


@pytest.mark.parametrize("kind, bad", BAD_ROWS, ids=[k for k, _ in BAD_ROWS])
def test_malformed_rows_are_rejected_with_a_reason(kind, bad):
    with pytest.raises(RowError) as e:
        toolace.convert_row(bad)
    assert e.value.kind == kind and e.value.reason


def test_convert_rows_reports_every_reject_with_counts():
    good = row(("user", "q"), ("assistant", '[get_weather(city="Oslo")]'))
    rows = [good, BAD_ROWS[0][1], good, BAD_ROWS[1][1], BAD_ROWS[8][1]]
    converted, rejects = toolace.convert_rows(rows)
    assert len(converted) == 2
    assert [(r["index"], r["kind"]) for r in rejects] == [(1, "undecodable_call"), (3, "unknown_tool"), (4, "unknown_role")]
    assert all(r["reason"] for r in rejects)
    s = toolace.summarize(converted, rejects)
    assert s["rows_in"] == 5 and s["rows_out"] == 2 and s["rejected"] == 3
    assert s["rejected_by_kind"] == {"undecodable_call": 1, "unknown_role": 1, "unknown_tool": 1}
    assert s["tool_calls"] == 2


def test_load_raw_reads_jsonl_and_json_list(tmp_path):
    rows = [row(("user", str(i)), ("assistant", "a")) for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))  # ToolACE's data.json is one JSON list
    assert toolace.load_raw(path=str(tmp_path / "a.jsonl")) == rows
    assert toolace.load_raw(path=str(tmp_path / "b.json"), max_rows=2) == rows[:2]
    with pytest.raises(ValueError):
        toolace.load_raw()
    with pytest.raises(ValueError):
        toolace.load_raw(path="x", hf_id="Team-ACE/ToolACE")


# --------------------------------------------------------------------------- the shipped sample


def _sample_rows():
    return toolace.load_raw(path=str(SAMPLE))


def test_sample_is_clean_varied_and_arrow_safe():
    raw = _sample_rows()
    converted, rejects = toolace.convert_rows(raw)
    assert len(raw) >= 150 and rejects == []
    calls = [json.loads(c["function"]["arguments"]) for r in converted for m in r["messages"]
             for c in m.get("tool_calls") or ()]
    values = [v for args in calls for v in args.values()]
    assert sum(len(m.get("tool_calls") or ()) > 1 for r in converted for m in r["messages"]) >= 20  # parallel
    assert sum(any(m["role"] == "tool" for m in r["messages"]) for r in converted) >= 50     # results + answer
    assert sum(not any(m.get("tool_calls") for m in r["messages"]) for r in converted) >= 10  # no call at all
    assert any(v is None for v in values)
    assert any(isinstance(v, dict) for v in values) and any(isinstance(v, list) for v in values)
    assert any(isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for a in calls for v in _leaves(a))
    assert len({t["function"]["name"] for r in converted for t in r["tools"]}) >= 15
    # Arrow-sensitive fields are strings; every message has a string content
    for r in converted:
        assert all(isinstance(t["function"]["parameters"], str) for t in r["tools"])
        assert all(isinstance(m["content"], str) for m in r["messages"])


def _leaves(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    else:
        yield x


def test_sample_file_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_toolace_sample", ROOT / "scripts" / "make_toolace_sample.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.make_rows(seed=0) == _sample_rows()


def test_sample_holds_the_real_row_shapes():
    """The classes of issue #17 are in the shipped sample (so training and the tokenizer see them)."""
    raw = _sample_rows()
    converted, rejects = toolace.convert_rows(raw)
    s = toolace.summarize(converted, rejects)
    assert rejects == [] and s["rows_text_only"] >= 2 and s["turns_text_and_calls"] >= 2
    assert s["rows_with_dialog_wrapper"] >= 2
    args = [json.loads(c["function"]["arguments"]) for r in converted for m in r["messages"] for c in m.get("tool_calls") or ()]
    assert {"from", "sort-by", "$top"} <= {k for a in args for k in a}
    assert sum("以下是可以调用的工具" in (r.get("system") or "") for r in raw) >= 2
    assert any("Currency Converter API(amount=1)" in a.get("body", "") for a in args)  # name inside a string kept


# --------------------------------------------------------------------------- Axolotl (train env)

AXOLOTL_RENDER = r"""
import json, sys
import datasets
from transformers import AutoTokenizer
from axolotl.utils.dict import DictDefault
from axolotl.prompt_strategies.chat_template import load as load_strategy
from experiments.data import toolace
from experiments.models import tiny_model

model_dir, raw_path, converted_path = sys.argv[1:4]
tiny_model.build(model_dir)
tok = AutoTokenizer.from_pretrained(model_dir)
converted, rejects = toolace.convert_rows(toolace.load_raw(path=raw_path))
toolace.write_jsonl(converted, converted_path)
# the same path as `axolotl train`: JSONL -> datasets (Arrow) -> chat_template strategy
ds = datasets.load_dataset("json", data_files=converted_path, split="train")
cfg = DictDefault({"sequence_len": 8192, "chat_template": "tokenizer_default", "train_on_inputs": False})
strategy = load_strategy(tok, cfg, {"type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"]})
texts, trained, exact = [], [], 0
for i, r in enumerate(ds):
    out = strategy.tokenize_prompt(r)
    texts.append(tok.decode(out["input_ids"]))
    trained.append(tok.decode([t for t, l in zip(out["input_ids"], out["labels"]) if l != -100]))
    exact += texts[-1] == tiny_model.render_chat(**toolace.to_native(converted[i]))
print(json.dumps({"texts": texts, "trained": trained, "exact": exact, "rejects": rejects}))
"""


def run_in_train_env(code: str, *args: str, timeout: int = 600) -> dict:
    """Run code with the train env's interpreter (axolotl, transformers); return its last JSON line."""
    if not Path(TRAIN_PYTHON).exists():
        pytest.skip(f"train env interpreter not found at {TRAIN_PYTHON} (set TRAIN_PYTHON or build .venv/train)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}
    proc = subprocess.run([TRAIN_PYTHON, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_axolotl_renders_exact_tool_schemas_and_tool_call_blocks(tmp_path):
    # the shipped sample plus rows whose schemas/arguments clash across rows (same parameter name
    # with different types, a tool without properties, explicit nulls): the cases Arrow mangles
    extra = [
        row(("user", "q"), ("assistant", '[get_weather(city="Oslo", days=2)]'), tools=[WEATHER]),
        row(("user", "q"), ("assistant", '[get_weather(city=None, unit="fahrenheit")]'),
            tools=[{**WEATHER, "parameters": {"type": "dict", "properties": {
                "city": {"type": "array", "items": {"type": "integer"}}, "unit": {"type": "string"}}}}]),
        row(("user", "q"), ("assistant", "[ping()]"), ("tool", "pong"), ("assistant", "It answered."),
            tools=[{"name": "ping", "description": "No parameters at all."}]),
    ]
    raw = _sample_rows() + extra
    raw_path = tmp_path / "raw.jsonl"
    raw_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in raw), encoding="utf-8")
    result = run_in_train_env(AXOLOTL_RENDER, str(tmp_path / "tiny"), str(raw_path), str(tmp_path / "conv.jsonl"))

    converted, _ = toolace.convert_rows(raw)
    assert result["rejects"] == [] and len(result["texts"]) == len(converted)
    assert result["exact"] == len(converted)  # byte-equal to the template rendered on plain dicts
    for conv, text, trained in zip(converted, result["texts"], result["trained"]):
        native = toolace.to_native(conv)
        for tool in native["tools"]:  # each schema printed whole, exactly as given, on its own line
            assert "\n" + json.dumps(tool, ensure_ascii=False) + "\n" in text
        for m in native["messages"]:
            for call in m.get("tool_calls") or ():
                fn = call["function"]
                block = ('<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
                         % (fn["name"], json.dumps(fn["arguments"], ensure_ascii=False)))
                assert block in text and block in trained  # rendered, and trained on
        expected_nulls = sum(json.dumps(t, ensure_ascii=False).count("null") for t in native["tools"]) + \
            sum(json.dumps(m, ensure_ascii=False).count("null") for m in native["messages"])
        assert text.count("null") <= expected_nulls  # no null-filled keys from Arrow
    assert "<tools>" in result["texts"][0]
