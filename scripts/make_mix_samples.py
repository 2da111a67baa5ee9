"""Write data/glaive_sample.jsonl and data/hermes_sample.jsonl: small samples in the row schemas of
glaiveai/glaive-function-calling-v2 and NousResearch/hermes-function-calling-v1, generated here
(nothing downloaded) from the ToolACE sample's tools and tasks with a seeded RNG:

    python scripts/make_mix_samples.py [--rows 24] [--seed 0]

Glaive rows: `SYSTEM:` text + consecutive JSON function objects; `USER:`/`ASSISTANT:` turns with
`<functioncall> {"name": ..., "arguments": '<json>'} <|endoftext|>`, `FUNCTION RESPONSE:`, some
text before the call, and rows "with no access to external functions". Hermes rows: ShareGPT
`conversations`, `<tools>` holding Python-literal or JSON tool lists, one or more
`<tool_call>` blocks per turn, `<tool_response>` blocks, and a json-mode row without tools.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import make_toolace_sample as ts  # noqa: E402
from experiments.data.schema import normalize_schema  # noqa: E402

GLAIVE_HEAD = "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
GLAIVE_NONE = "SYSTEM: You are a helpful assistant, with no access to external functions."
HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> XML tags. "
    "You may call one or more functions to assist with the user query. Don't make assumptions about what values to "
    "plug into functions.\n<tools>\n{tools}\n</tools>\nFor each function call return a json object with function name "
    "and arguments within <tool_call> </tool_call> tags with the following schema:\n<tool_call>\n"
    "{{'arguments': <args-dict>, 'name': <function-name>}}\n</tool_call>")


def _schema_tool(name: str) -> dict:
    t = ts.TOOLS[name]
    return {"name": t["name"], "description": t["description"], "parameters": normalize_schema(t["parameters"])}


def _ident_tasks(rng):
    """A task whose tools have identifier names (Glaive and Hermes use no spaces or dots)."""
    while True:
        q, calls, results, answer = rng.choice(ts.TASKS)(rng)
        if all(n.isidentifier() for n, _ in calls):
            return q, calls, results, answer


def glaive_row(rng) -> dict:
    if rng.random() < 0.15:
        q = rng.choice(ts.IRRELEVANT)
        return {"system": GLAIVE_NONE, "chat": f"USER: {q}\n\n\nASSISTANT: I can answer that from what I know. <|endoftext|>\n\n\n"}
    q, calls, results, answer = _ident_tasks(rng)
    name, args = calls[0]
    names = [name] + rng.sample([n for n in ts.TOOLS if n.isidentifier() and n != name], rng.randint(0, 2))
    system = GLAIVE_HEAD + "\n\n".join(json.dumps(_schema_tool(n), indent=4) for n in names) + "\n"
    prose = rng.choice(["", "", "Sure, let me check that for you. "])
    chat = (f"USER: {q}\n\n\nASSISTANT: {prose}<functioncall> "
            f"{{\"name\": \"{name}\", \"arguments\": '{json.dumps(args, ensure_ascii=False)}'}} <|endoftext|>\n\n\n"
            f"FUNCTION RESPONSE: {json.dumps(results[0], ensure_ascii=False)}\n\n\nASSISTANT: {answer} <|endoftext|>\n\n\n")
    if rng.random() < 0.3:
        chat += "USER: Thank you!\n\n\nASSISTANT: You're welcome! <|endoftext|>\n\n\n"
    return {"system": system, "chat": chat}


def hermes_row(rng) -> dict:
    if rng.random() < 0.12:  # json-mode style: a system prompt without <tools>
        return {"conversations": [
            {"from": "system", "value": "You are a helpful assistant that answers in JSON."},
            {"from": "human", "value": "Give me a JSON object with the keys a=1 and b=2."},
            {"from": "gpt", "value": '{"a": 1, "b": 2}'}], "category": "JSON Mode", "task": "sample"}
    parts = [_ident_tasks(rng) for _ in range(rng.choice([1, 1, 2]))]
    calls = [c for p in parts for c in p[1]]
    results = [r for p in parts for r in p[2]]
    names = list(dict.fromkeys([n for n, _ in calls] + rng.sample([n for n in ts.TOOLS if n.isidentifier()], 1)))
    tools = [{"type": "function", "function": _schema_tool(n)} for n in names]
    pythonic = rng.random() < 0.6  # the published rows mix Python-literal and JSON spellings
    dump = repr if pythonic else (lambda x: json.dumps(x, ensure_ascii=False))
    gpt = "\n".join(f"<tool_call>\n{dump({'arguments': a, 'name': n})}\n</tool_call>" for n, a in calls)
    tool = "\n".join(f"<tool_response>\n{dump({'name': n, 'content': r})}\n</tool_response>"
                     for (n, _), r in zip(calls, results))
    return {"conversations": [
        {"from": "system", "value": HERMES_SYSTEM.format(tools=dump(tools))},
        {"from": "human", "value": " Also, ".join(p[0] for p in parts)},
        {"from": "gpt", "value": gpt}, {"from": "tool", "value": tool},
        {"from": "gpt", "value": " ".join(p[3] for p in parts)}], "category": "sample", "task": "sample"}


def make_rows(kind: str, n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{kind}-{seed}")
    build = {"glaive": glaive_row, "hermes": hermes_row}[kind]
    return [build(rng) for _ in range(n)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for kind in ("glaive", "hermes"):
        out = ROOT / "data" / f"{kind}_sample.jsonl"
        rows = make_rows(kind, args.rows, args.seed)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
