"""A fixed held-out split of the training data and its prompts (pure).

`make train` writes `data/heldout.jsonl` (never trained on; Axolotl's eval loss is computed on
it) beside `data/train.jsonl`; `make eval` asks the served model the first assistant turn of
every held-out row and scores the answer against the row's own: did the server parse a tool
call, does it name the right function(s), are the arguments exactly right. The same rows and the
same scoring for the base model and the tuned one, so the two can be compared.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Iterable, Sequence

HELDOUT_FILE = "heldout.jsonl"   # a run's data/heldout.jsonl, beside data/train.jsonl


def split(rows: Sequence[dict], n: int, seed: int) -> tuple[list[dict], list[dict], list[int]]:
    """(train rows, held-out rows, held-out indices into `rows`): `n` rows drawn with `seed`,
    both parts in their original order. The same rows and seed give the same split."""
    if n < 0 or n >= len(rows):
        raise ValueError(f"data.heldout_rows={n}: must be >= 0 and below the {len(rows)} converted rows")
    picked = sorted(random.Random(f"heldout:{seed}").sample(range(len(rows)), n))
    chosen = set(picked)
    return [r for i, r in enumerate(rows) if i not in chosen], [rows[i] for i in picked], picked


def prompt_of(native: dict) -> dict | None:
    """A native row (toolace.to_native) -> its first assistant turn as a prompt and an answer:
    `{"messages": what precedes it, "tools", "expected_calls": [{"name", "arguments"}]}` (an empty
    list when the right answer is text); None if the row has no assistant turn."""
    for i, m in enumerate(native["messages"]):
        if m["role"] == "assistant":
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                     for c in m.get("tool_calls") or []]
            return {"messages": native["messages"][:i], "tools": native["tools"], "expected_calls": calls}
    return None


def _decoded(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments  # kept as text: it cannot equal a decoded object
    return arguments


def _key(call: dict) -> str:
    return json.dumps([call["name"], _decoded(call["arguments"])], sort_keys=True, ensure_ascii=False)


def score(expected: list[dict], got: list[dict]) -> dict[str, bool]:
    """One answer. `got` are the server's parsed tool calls (name, arguments as JSON text or
    object). For a row whose answer is a call: parsed (any call), right_function (the same
    multiset of names), exact_arguments (the same multiset of name + decoded arguments). For a row
    whose answer is text: no_call (the model did not call)."""
    if not expected:
        return {"expects_call": False, "parsed": bool(got), "right_function": False,
                "exact_arguments": False, "no_call": not got}
    names = Counter(c["name"] for c in expected) == Counter(c["name"] for c in got)
    exact = Counter(map(_key, expected)) == Counter(map(_key, got))
    return {"expects_call": True, "parsed": bool(got), "right_function": names, "exact_arguments": exact,
            "no_call": False}


def summarize(items: Iterable[dict]) -> dict[str, int]:
    """Counts over scored items (each carrying score()'s keys)."""
    items = list(items)
    calls = [i for i in items if i["expects_call"]]
    texts = [i for i in items if not i["expects_call"]]
    return {
        "rows": len(items),
        "call_rows": len(calls),
        "parsed": sum(i["parsed"] for i in calls),
        "right_function": sum(i["right_function"] for i in calls),
        "exact_arguments": sum(i["exact_arguments"] for i in calls),
        "text_rows": len(texts),
        "text_rows_no_call": sum(i["no_call"] for i in texts),
        "errors": sum(bool(i.get("error")) for i in items),
    }
