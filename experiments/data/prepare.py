"""``data.*`` config -> ``<run>/data/train.jsonl`` + ``data_report.json`` (the I/O edge of the data layer).

A single-source config (``data=toolace``, ``data=toolace_sample``) is a mixture of one source taken
whole; ``data=mix`` lists several (experiments.data.mix). Per source the report records rows in and
out, rejects by reason (the first 50 with their reasons), rows and tokens in the mixture, and the
BFCL overlap found (experiments.data.decontam). Runs in the orchestrating (eval) env.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

from experiments.core import runs
from experiments.data import decontam, mix, packing, schema, toolace
from experiments.data.sources import load_raw


class PrepareError(RuntimeError):
    """No usable rows, or a config that cannot be prepared; the message says which."""


def sources_of(data: dict) -> list[dict]:
    """The validated source list: ``data.sources``, or the single source the config describes
    (``data.max_rows`` then caps the raw rows read, as before mixtures existed)."""
    if data.get("sources"):
        return mix.check_sources(data["sources"], data.get("strategy") or "interleave",
                                 data.get("stopping_strategy") or "first_exhausted")
    single = {"name": data.get("name"), "converter": data.get("converter") or "toolace", "path": data.get("path"),
              "hf_id": data.get("hf_id"), "config": data.get("config"), "split": data.get("split"),
              "max_raw_rows": data.get("max_rows")}
    return mix.check_sources([single])


def summarize_source(converter: str, converted: list, rejects: list) -> dict:
    return (toolace.summarize if converter == "toolace" else schema.summarize)(converted, rejects)


def token_counter(model_path: str) -> Callable[[dict], int]:
    """Tokens of one storage-form row rendered by the model's own chat template (transformers)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)

    def count(row: dict) -> int:
        native = schema.to_native(row)
        text = tok.apply_chat_template(native["messages"], tools=native["tools"] or None, tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])
    return count


def _totals(per_source: list[dict], written: list[dict]) -> dict:
    kinds = Counter()
    for s in per_source:
        kinds.update(s["rejected_by_kind"])
    return {"rows_in": sum(s["rows_in"] for s in per_source), "rows_converted": sum(s["rows_out"] for s in per_source),
            "rows_out": len(written), "rejected": sum(s["rejected"] for s in per_source),
            "rejected_by_kind": dict(sorted(kinds.items())),
            "rows_with_calls": sum(any(m.get("tool_calls") for m in r["messages"]) for r in written),
            "tool_calls": sum(len(m.get("tool_calls") or ()) for r in written for m in r["messages"])}


def _tokens(pairs: list[tuple[int, int]], converted: list[list[dict]], count_tokens: Callable[[dict], int]
            ) -> list[int]:
    """Tokens of each mixed row (each distinct row is rendered once)."""
    cache = {}
    for pair in pairs:
        if pair not in cache:
            cache[pair] = count_tokens(converted[pair[0]][pair[1]])
    return [cache[p] for p in pairs]


def bfcl_check(data: dict) -> Callable | None:
    """The decontamination step ``data.decontaminate`` asks for (None for off); reads BFCL's data."""
    mode = data.get("decontaminate") or "report"
    if mode not in decontam.MODES:
        raise PrepareError(f"data.decontaminate={mode!r}: expected one of {decontam.MODES}")
    if mode == "off":
        return None
    opts = data.get("decontam") or {}
    index = decontam.Index(decontam.load_bfcl(), n=int(opts.get("n", 8)), threshold=float(opts.get("threshold", 0.5)))
    return lambda converted, names: decontam.check(converted, names, index, mode)


def prepare(data: dict, out_dir: Path, count_tokens: Callable[[dict], int] | None = None,
            decontaminate: Callable[[list[list[dict]], list[str]], tuple[list[list[dict]], dict]] | None = None,
            sequence_len: int | None = None) -> dict:
    """Convert every source, optionally decontaminate, mix, write train.jsonl and data_report.json
    (the report also when nothing is left, before PrepareError)."""
    sources = sources_of(data)
    converted, per_source, all_rejects = [], [], []
    for src in sources:
        raw = load_raw(path=src["path"], hf_id=src["hf_id"], split=src["split"], max_rows=src["max_raw_rows"],
                       config=src["config"])
        rows, rejects = schema.convert_rows(raw, mix.CONVERTERS[src["converter"]])
        converted.append(rows)
        per_source.append({"name": src["name"], "converter": src["converter"], "source": src["path"] or src["hf_id"],
                           "weight": src["weight"], "max_rows": src["max_rows"],
                           **summarize_source(src["converter"], rows, rejects), "rejects": rejects[:50]})
        all_rejects += [{"source": src["name"], **r} for r in rejects]
    report_extra = {}
    if decontaminate is not None:
        converted, found = decontaminate(converted, [s["name"] for s in per_source])
        report_extra["decontamination"] = found
        for s in per_source:
            s["bfcl_overlap"] = found["by_source"][s["name"]]
    report = {"source": per_source[0]["source"] if len(sources) == 1 else "mix", **_totals(per_source, []),
              **report_extra, "sources": {s["name"]: s for s in per_source}, "rejects": all_rejects[:200]}
    try:
        mixed, pairs, counts = mix.mix(converted, sources, int(data.get("seed") or 0),
                                       data.get("strategy") or "interleave",
                                       data.get("stopping_strategy") or "first_exhausted")
    except mix.MixError as e:
        mixed, problem = [], str(e)
    else:
        problem = f"data={data.get('name')}: none of {sum(s['rows_in'] for s in per_source)} rows converted"
    report.update(_totals(per_source, mixed))
    if not mixed:
        runs.write_json_atomic(out_dir / "data_report.json", report)
        raise PrepareError(f"{problem}; see {out_dir / 'data_report.json'}")
    row_tokens = _tokens(pairs, converted, count_tokens) if count_tokens else None
    report["tokens"] = sum(row_tokens) if row_tokens else None
    if row_tokens:
        report["tokens_per_row"] = packing.length_stats(row_tokens)
        if sequence_len:
            report["rows_over_sequence_len"] = {"sequence_len": sequence_len,
                                                "rows": sum(t > sequence_len for t in row_tokens)}
    for i, s in enumerate(per_source):
        s["rows_in_mix"] = counts[i]
        s["tokens_in_mix"] = sum(t for (k, _), t in zip(pairs, row_tokens) if k == i) if row_tokens else None
    runs.write_text_atomic(out_dir / "train.jsonl", "".join(json.dumps(r) + "\n" for r in mixed))
    runs.write_json_atomic(out_dir / "data_report.json", report)
    return report
