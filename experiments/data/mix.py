"""Several tool datasets -> one training set in the same ``messages`` + ``tools`` schema.

``data.sources`` is a list; each source names a converter (``toolace``, ``glaive``, ``hermes``),
where its rows come from (``path`` or ``hf_id`` + ``config`` + ``split``), and how much of it to
take: ``max_rows`` caps its converted rows (a seeded sample), ``weight`` sets its share.

``data.strategy``:
  interleave  ``datasets.interleave_datasets`` with probabilities = normalised weights (LLaMA-Factory's
              ``interleave_probs``); ``data.stopping_strategy`` first_exhausted (stop when a source runs
              out: shares are exact, large sources are cut) or all_exhausted (small sources repeat).
  concat      alignment-handbook's ``dataset_mixture``: weight = the fraction of the source's rows
              kept (0 < w <= 1), sources concatenated, then shuffled.
Both are seeded by ``data.seed``; only indices go through ``datasets``, so rows are written byte for
byte as the converter made them. One source with no cap and weight 1 is taken whole, in order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from experiments.data import glaive, hermes, toolace

CONVERTERS = {"toolace": toolace.convert_row, "glaive": glaive.convert_row, "hermes": hermes.convert_row}
SOURCE_KEYS = ("name", "converter", "path", "hf_id", "config", "split", "weight", "max_rows", "max_raw_rows")
STRATEGIES = ("interleave", "concat")
STOPPING = ("first_exhausted", "all_exhausted")


class MixError(ValueError):
    """A mixture config that cannot work; the message names the source and key."""


def check_sources(sources: Any, strategy: str = "interleave", stopping: str = "first_exhausted") -> list[dict]:
    """Validated sources with every key present (None where unset)."""
    if strategy not in STRATEGIES:
        raise MixError(f"data.strategy={strategy!r}: expected one of {STRATEGIES}")
    if stopping not in STOPPING:
        raise MixError(f"data.stopping_strategy={stopping!r}: expected one of {STOPPING}")
    if not isinstance(sources, list) or not sources:
        raise MixError("data.sources: expected a non-empty list of sources")
    out, names = [], set()
    for i, src in enumerate(sources):
        where = f"data.sources[{i}]"
        if not isinstance(src, dict):
            raise MixError(f"{where}: expected a mapping, got {src!r}")
        unknown = sorted(set(src) - set(SOURCE_KEYS))
        if unknown:
            raise MixError(f"{where}: unknown key(s) {unknown}; known: {list(SOURCE_KEYS)}")
        s = {k: src.get(k) for k in SOURCE_KEYS}
        s["name"] = s["name"] or s["converter"]
        where = f"data.sources[{i}] ({s['name']})"
        if s["converter"] not in CONVERTERS:
            raise MixError(f"{where}.converter={s['converter']!r}: expected one of {sorted(CONVERTERS)}")
        if (s["path"] is None) == (s["hf_id"] is None):
            raise MixError(f"{where}: give exactly one of path and hf_id")
        if s["name"] in names:
            raise MixError(f"{where}.name: two sources are named {s['name']!r}")
        names.add(s["name"])
        s["weight"] = 1.0 if s["weight"] is None else s["weight"]
        if isinstance(s["weight"], bool) or not isinstance(s["weight"], (int, float)) or s["weight"] <= 0:
            raise MixError(f"{where}.weight={s['weight']!r}: expected a number > 0")
        if strategy == "concat" and s["weight"] > 1:
            raise MixError(f"{where}.weight={s['weight']}: with data.strategy=concat a weight is the fraction "
                           "of the source kept (0 < weight <= 1)")
        for key in ("max_rows", "max_raw_rows"):
            if s[key] is not None and (isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1):
                raise MixError(f"{where}.{key}={s[key]!r}: expected a positive integer or null")
        s["split"] = s["split"] or "train"
        out.append(s)
    return out


def mix_indices(sizes: list[int], sources: list[dict], seed: int, strategy: str = "interleave",
                stopping: str = "first_exhausted") -> list[tuple[int, int]]:
    """(source, row) pairs of the mixture. ``sizes``: converted rows per source."""
    if len(sizes) == 1 and sources[0]["max_rows"] is None and sources[0]["weight"] == 1:
        return [(0, j) for j in range(sizes[0])]
    import datasets  # the eval and train envs have it

    parts = []
    for i, (n, src) in enumerate(zip(sizes, sources)):
        ds = datasets.Dataset.from_dict({"source": [i] * n, "row": list(range(n))}).shuffle(seed=seed + i)
        keep = min(n, src["max_rows"] or n)
        if strategy == "concat":
            keep = min(keep, round(src["weight"] * n))
        if keep < 1:
            raise MixError(f"data.sources[{i}] ({src['name']}): no rows left to mix ({n} converted)")
        parts.append(ds.select(range(keep)))
    if strategy == "concat":
        mixed = datasets.concatenate_datasets(parts).shuffle(seed=seed)
    else:
        total = sum(s["weight"] for s in sources)
        mixed = datasets.interleave_datasets(parts, probabilities=[s["weight"] / total for s in sources],
                                             seed=seed, stopping_strategy=stopping)
    return list(zip(mixed["source"], mixed["row"]))


def mix(converted: list[list[dict]], sources: list[dict], seed: int, strategy: str = "interleave",
        stopping: str = "first_exhausted") -> tuple[list[dict], list[tuple[int, int]], list[int]]:
    """The mixed rows, their (source, row) pairs, and per source how many came from it (repeats counted)."""
    pairs = mix_indices([len(c) for c in converted], sources, seed, strategy, stopping)
    counts = Counter(i for i, _ in pairs)
    return [converted[i][j] for i, j in pairs], pairs, [counts[i] for i in range(len(sources))]
