"""Parser round trip: every training target must be read back by the serving tool parser.

For each converted row and each assistant turn with `tool_calls`, the turn is rendered through the
training chat template, the text the model is trained to produce for it (what follows the
generation prompt, up to the end-of-turn token) goes through vLLM's own tool parser (the one
`--tool-call-parser` names), and the calls it returns must equal the row's: same names, JSON-equal
arguments. A row whose calls the server would not read back teaches the model a format nobody parses.

    python -m experiments.data.roundtrip --data train.jsonl --model DIR [--parser hermes] --out out.json

runs in the serve env (vLLM importable; no server). `assistant_targets` and `compare_calls` are
pure and stdlib-only; `check_rows` takes the parser as a function.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from experiments.core import fingerprint

EXAMPLES = 5  # first failing rows kept with their reasons


def _native_calls(message: dict) -> list[dict]:
    """The row's calls with arguments decoded where they are JSON (a raw string stays a string)."""
    calls = []
    for c in message.get("tool_calls") or []:
        fn = c.get("function", c)
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        calls.append({"name": fn.get("name"), "arguments": args})
    return calls


def _native(row: dict) -> dict:
    tools = []
    for t in row.get("tools") or []:
        fn = dict(t.get("function", {}))
        if isinstance(fn.get("parameters"), str):
            fn["parameters"] = json.loads(fn["parameters"])
        tools.append({**t, "function": fn})
    messages = []
    for m in row["messages"]:
        m = {k: v for k, v in m.items() if k != "tool_calls" or v}
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": a["arguments"]}}
                               for c, a in zip(m["tool_calls"], _native_calls(m))]
        messages.append(m)
    return {"messages": messages, "tools": tools}


def assistant_targets(row: dict, template: str, eos: str, **kw) -> list[tuple[int, str, list[dict]]]:
    """(turn index, rendered assistant text, expected calls) for every assistant turn with calls."""
    native = _native(row)
    msgs, out = native["messages"], []
    for i, m in enumerate(msgs):
        if m.get("role") != "assistant" or not m.get("tool_calls"):
            continue
        prompt = fingerprint.render(template, msgs[:i], native["tools"], add_generation_prompt=True, **kw)
        full = fingerprint.render(template, msgs[: i + 1], native["tools"], **kw)
        if not full.startswith(prompt):
            out.append((i, None, _native_calls(m)))  # the template rewrites earlier turns
            continue
        text = full[len(prompt):]
        out.append((i, text.split(eos)[0] if eos else text, _native_calls(m)))
    return out


def compare_calls(expected: list[dict], parsed: list[dict]) -> str | None:
    """None when the parser read back the same calls, else why not."""
    if len(expected) != len(parsed):
        return f"{len(expected)} call(s) in the row, the parser read {len(parsed)}"
    for k, (e, p) in enumerate(zip(expected, parsed)):
        if e["name"] != p["name"]:
            return f"call {k}: name {e['name']!r} read back as {p['name']!r}"
        if not isinstance(e["arguments"], dict):
            return f"call {k} ({e['name']}): arguments {e['arguments']!r} are not a JSON object"
        if e["arguments"] != p["arguments"]:
            return f"call {k} ({e['name']}): arguments {e['arguments']} read back as {p['arguments']}"
    return None


def check_rows(rows: list[dict], template: str, eos: str, parse: Callable[[str], list[dict]], **kw) -> dict:
    """{checked_rows, turns, failed_rows, examples}: the round trip of every row's call turns."""
    failed, examples, turns, checked = 0, [], 0, 0
    for n, row in enumerate(rows):
        problems = []
        try:
            targets = assistant_targets(row, template, eos, **kw)
        except Exception as exc:  # a row the template cannot render at all
            targets, problems = [], [f"does not render: {type(exc).__name__}: {exc}"]
        checked += bool(targets) or bool(problems)
        for turn, text, expected in targets:
            turns += 1
            if text is None:
                problems.append(f"turn {turn}: the full rendering does not start with the generation prompt")
                continue
            why = compare_calls(expected, parse(text))
            if why:
                problems.append(f"turn {turn}: {why}; rendered {text[:300]!r}")
        if problems:
            failed += 1
            if len(examples) < EXAMPLES:
                examples.append({"row": n, "problems": problems})
    return {"rows_with_calls": checked, "turns": turns, "failed_rows": failed, "examples": examples}


def vllm_parser(name: str, tokenizer) -> Callable[[str], list[dict]]:
    """vLLM's registered tool parser `name` as text -> [{name, arguments}] (serve env only)."""
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    parser = ToolParserManager.get_tool_parser(name)(tokenizer)

    def parse(text: str) -> list[dict]:
        info = parser.extract_tool_calls(text, request=None)
        return [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in info.tool_calls]

    return parse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Round trip of training targets through vLLM's tool parser")
    ap.add_argument("--data", required=True, help="converted rows (JSON Lines)")
    ap.add_argument("--model", required=True, help="model folder or hub id (its tokenizer and chat template)")
    ap.add_argument("--template-file", default=None, help="a chat template other than the model's own")
    ap.add_argument("--parser", default="hermes")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    template = Path(args.template_file).read_text() if args.template_file else tok.chat_template
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    kw = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token") if isinstance(getattr(tok, k, None), str)}
    result = check_rows(rows, template, tok.eos_token or "", vllm_parser(args.parser, tok), **kw)
    result.update(parser=args.parser, rows=len(rows))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
