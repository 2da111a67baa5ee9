"""The shapes real Team-ACE/ToolACE rows take that the first converter rejected or mangled
(issue #17, classes 1-5), each written here as a test row; and a seeded fuzz run that the
converter answers every malformed row with a RowError, never a crash."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data import toolace  # noqa: E402
from experiments.data.toolace import CallParseError, RowError, parse_pythonic_calls  # noqa: E402
from test_toolace import HEAD, SEARCH, TAIL, WEATHER, row, system  # noqa: E402

FX = {"name": "Currency Exchange", "description": "Convert currencies.", "parameters": {"type": "dict", "properties": {
    "from": {"type": "string"}, "to": {"type": "string"}, "amount": {"type": "float"}}, "required": None}}
LIST = {"name": "list_items", "description": "Paged list.", "parameters": {"type": "dict", "properties": {
    "sort-by": {"type": "string"}, "postal-unit": {"type": "string"}, "$top": {"type": ["int", "null"]},
    "filter": {"type": "dict"}}, "required": None}}


def calls_of(out: dict) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for m in out["messages"] for c in m.get("tool_calls") or ()]


# --------------------------------------------------------------------------- 1. argument names


def test_keyword_hyphen_and_dollar_argument_names_convert():
    out = toolace.convert_row(row(
        ("user", "100 EUR in USD, and the first 10 items by date"),
        ("assistant", '[Currency Exchange(from="EUR", to="USD", amount=100.0), '
                      'list_items(sort-by="date", postal-unit = "B-2", $top=10)]'), tools=[FX, LIST]))
    assert calls_of(out) == [("Currency_Exchange", {"from": "EUR", "to": "USD", "amount": 100.0}),
                             ("list_items", {"sort-by": "date", "postal-unit": "B-2", "$top": 10})]
    assert isinstance(calls_of(out)[0][1]["amount"], float)  # types preserved


def test_odd_argument_names_only_when_declared_and_never_inside_strings():
    # `from` is not declared by get_weather: the call stays unparseable (no guessing)
    with pytest.raises(RowError) as e:
        toolace.convert_row(row(("user", "q"), ("assistant", '[get_weather(from="Paris")]'), tools=[WEATHER, FX]))
    assert e.value.kind == "unknown_argument"
    with pytest.raises(CallParseError):
        parse_pythonic_calls('[f(sort-by="x")]')                      # not declared: not rewritten
    calls = parse_pythonic_calls('[f(q="a, from=b", from="c")]', arg_names=["from"])
    assert calls == [{"name": "f", "arguments": {"q": "a, from=b", "from": "c"}}]
    # a comparison is not a keyword argument
    with pytest.raises(CallParseError):
        parse_pythonic_calls("[f(x=from==1)]", arg_names=["from"])


# --------------------------------------------------------------------------- 2. Chinese tool list

ZH_HEAD = ("你是一个组合函数的专家。你会得到一个问题和一组可能的函数。根据问题，你需要进行一个或多个函数/工具调用以实现目的。\n"
           "以下是可以调用的工具的JSON格式列表:\n")
ZH_TAIL = ("\n如果您决定返回函数调用，请将其格式化为[func1(params_name=params_value, params_name2=params_value2...), "
           "func2(params)]\n\n不得包含其他文本。\n")


def test_chinese_marker_and_format_instruction():
    out = toolace.convert_row({"system": ZH_HEAD + json.dumps([WEATHER], ensure_ascii=False) + ZH_TAIL,
                               "conversations": [{"from": "user", "value": "巴黎天气怎么样？"},
                                                 {"from": "assistant", "value": '[get_weather(city="巴黎")]'}]})
    assert out["messages"][0] == {"role": "system", "content": ZH_HEAD.split("\n以下")[0]}
    assert calls_of(out) == [("get_weather", {"city": "巴黎"})]
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather"]


def test_rows_without_a_recognisable_list_are_reported_by_language():
    bad = [{"system": "工具：" + json.dumps([WEATHER]), "conversations": [{"from": "user", "value": "q"},
                                                                          {"from": "assistant", "value": "a"}]},
           {"system": "Tools: " + json.dumps([WEATHER]), "conversations": [{"from": "user", "value": "q"},
                                                                           {"from": "assistant", "value": "a"}]}]
    converted, rejects = toolace.convert_rows(bad)
    assert converted == [] and [r["kind"] for r in rejects] == ["no_tool_list", "no_tool_list"]
    assert toolace.summarize(converted, rejects)["no_tool_list_by_language"] == {"en": 1, "zh": 1}


# --------------------------------------------------------------------------- 3. prose then calls


def test_prose_followed_by_a_call_list_splits_into_content_and_tool_calls():
    out = toolace.convert_row(row(("user", "q"), ("assistant", 'Let me check both.\n\n[get_weather(city="Oslo"), '
                                                             'Flight Search API(route={"from": "A"})]')))
    m = out["messages"][-1]
    assert m["content"] == "Let me check both."
    assert [n for n, _ in calls_of(out)] == ["get_weather", "Flight_Search_API"]
    assert toolace.summarize([out], [])["turns_text_and_calls"] == 1


def test_prose_with_a_broken_call_list_is_rejected_not_trained_as_text():
    with pytest.raises(RowError) as e:
        toolace.convert_row(row(("user", "q"), ("assistant", 'Sure.\n[get_weather(city="Oslo"]')))
    assert e.value.kind == "undecodable_call" and "text followed by a call list" in e.value.reason
    with pytest.raises(RowError) as e:  # a call list after prose naming an unlisted tool
        toolace.convert_row(row(("user", "q"), ("assistant", 'Sure.\n\n[get_time(tz="UTC")]')))
    assert e.value.kind == "unknown_tool"
    # brackets in ordinary prose stay prose
    text = "Options: [a] or [b]. See [docs](http://x)."
    assert toolace.convert_row(row(("user", "q"), ("assistant", text)))["messages"][-1]["content"] == text


# --------------------------------------------------------------------------- 4. placeholders in strings


def test_tool_name_inside_a_string_argument_comes_back_unchanged():
    note = "see [Flight Search API(x)] and Flight Search API(y), 'quoted' \\\"esc\\\""
    text = f'[Flight Search API(route={{"from": "A"}}, stops=[{json.dumps(note)}])]'
    out = toolace.convert_row(row(("user", "q"), ("assistant", text)))
    assert calls_of(out) == [("Flight_Search_API", {"route": {"from": "A"}, "stops": [note]})]
    calls = parse_pythonic_calls("[Weather API(q='Weather API(1)', r=\"\"\"Weather API(2)\"\"\")]", ["Weather API"])
    assert calls == [{"name": "Weather API", "arguments": {"q": "Weather API(1)", "r": "Weather API(2)"}}]


# --------------------------------------------------------------------------- 5. decided cases


def test_required_null_and_type_unions():
    out = toolace.convert_row(row(("user", "q"), ("assistant", "[list_items($top=None)]"), tools=[LIST]))
    params = json.loads(out["tools"][0]["function"]["parameters"])
    assert "required" not in params                                  # null: nothing required
    assert params["properties"]["$top"]["type"] == ["integer", "null"]  # each member mapped
    assert params["properties"]["filter"]["type"] == "object"
    assert calls_of(out) == [("list_items", {"$top": None})]


@pytest.mark.parametrize("name, safe", [("Stock/Quote (v2)", "Stock_Quote__v2_"), ("Sum, Product", "Sum__Product"),
                                        ("C++ Lint", "C___Lint")])
def test_tool_names_with_punctuation(name, safe):
    tool = {"name": name, "description": "d", "parameters": {"type": "dict", "properties": {"x": {"type": "int"}}}}
    out = toolace.convert_row(row(("user", "q"), ("assistant", f"[{name}(x=1), {name}()]"), tools=[tool]))
    assert calls_of(out) == [(safe, {"x": 1}), (safe, {})]           # no-argument call; same tool twice


def test_json_spellings_unicode_escapes_and_bytes_kept():
    result = '{"t": "caf\\u00e9", "ok": true}'
    out = toolace.convert_row(row(("user", "naïve \\u00e9"),
                                  ("assistant", '[Flight Search API(route={"from": "Z\\u00fcrich", "to": "B"}, '
                                                'flexible=true, stops=[null, false])]'),
                                  ("tool", result), ("assistant", "Done: café.")))
    assert calls_of(out) == [("Flight_Search_API", {"route": {"from": "Zürich", "to": "B"}, "flexible": True,
                                                    "stops": [None, False]})]
    assert out["messages"][-2]["content"] == result and out["messages"][1]["content"] == "naïve \\u00e9"


def test_text_only_rows_convert_without_tools():
    out = toolace.convert_row({"system": "You are a helpful assistant.", "conversations": [
        {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello!"}]})
    assert out == {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                   "tools": []}
    out = toolace.convert_row({"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Yo"}]})
    assert out["tools"] == [] and [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert toolace.summarize([out], [])["rows_text_only"] == 1


def test_dialog_wrapper_stays_one_user_turn():
    wrapped = ("Role definition: You are a travel agent.\nHistorical dialog data is as follows:\n"
               "user: Book Paris.\nassistant: Which dates?\nCurrent user question: 3 to 5 May")
    out = toolace.convert_row(row(("user", wrapped), ("assistant", '[get_weather(city="Paris")]')))
    assert out["messages"][1] == {"role": "user", "content": wrapped}
    assert toolace.summarize([out], [])["rows_with_dialog_wrapper"] == 1


# --------------------------------------------------------------------------- fuzz: never a crash

SEEDS = [
    '[Currency Exchange(from="EUR", to="USD", amount=1.5)]',
    'Checking.\n\n[list_items(sort-by="d", $top=3), get_weather(city="a [get_weather(x)]")]',
    '[Flight Search API(route={"from": "A", "to": true}, stops=["x", null])]',
    "[get_weather(city='''x''', unit=\"c\\u00e9\")]",
]
NOISE = list("[](){}=,.\"'\\$-_ \n:") + ["from", "true", "Flight Search API", "以下", "\\u", '"""', "**", "lambda"]


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.random(), rng.randrange(len(chars) + 1)
        if op < 0.4 and chars:
            del chars[min(at, len(chars) - 1)]
        elif op < 0.8:
            chars.insert(at, rng.choice(NOISE))
        else:
            chars[at:at] = chars[rng.randrange(len(chars) or 1):][:rng.randint(1, 8)]
    return "".join(chars)


def test_fuzzed_rows_are_converted_or_rejected_never_crash():
    rng = random.Random(17)
    systems = [system([WEATHER, SEARCH, FX, LIST]), ZH_HEAD + json.dumps([WEATHER, LIST]) + ZH_TAIL,
               HEAD + json.dumps([FX]) + TAIL]
    outcomes = {"ok": 0, "rejected": 0}
    for i in range(600):
        call = _mutate(rng, rng.choice(SEEDS))
        sysp = systems[i % 3] if rng.random() < 0.8 else _mutate(rng, systems[i % 3])
        turns = [{"from": "user", "value": "q"}, {"from": "assistant", "value": call}]
        try:
            out = toolace.convert_row({"system": sysp, "conversations": turns})
        except RowError as e:
            assert e.kind and e.reason
            outcomes["rejected"] += 1
            continue
        outcomes["ok"] += 1
        json.dumps(out)
        for _, args in calls_of(out):
            assert isinstance(args, dict)
    assert outcomes["ok"] > 50 and outcomes["rejected"] > 50
