"""Packing statistics of a prepared (tokenized) dataset, pure: tokens per row, rows dropped,
packing efficiency, share of trained tokens.

Definitions (the report states them the same way):
* percentiles interpolate linearly between the two nearest ranks (numpy's default);
* rows dropped = rows written to train.jsonl minus rows in Axolotl's prepared dataset (Axolotl drops
  rows longer than ``sequence_len`` and rows without any trained token); rows over ``sequence_len`` =
  rows whose chat-template token count (data preparation) exceeds it;
* packing efficiency = tokens in the packed bins / (bins x bin capacity): the share of a packed
  ``sequence_len`` sequence that is not padding;
* trained share = tokens whose label is not -100 / all tokens of the prepared rows.
Stdlib only.
"""

from __future__ import annotations

from typing import Sequence

IGNORE = -100


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def length_stats(lengths: Sequence[int]) -> dict:
    return {"rows": len(lengths), "p50": percentile(lengths, 50), "p95": percentile(lengths, 95),
            "max": max(lengths) if lengths else None, "total": sum(lengths)}


def trained_tokens(labels: Sequence[int]) -> int:
    return sum(1 for x in labels if x != IGNORE)


def efficiency(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> float | None:
    """Tokens placed in the bins / (bins x capacity); bins hold row indices into ``lengths``."""
    if not bins:
        return None
    used = sum(lengths[i] for b in bins for i in b)
    if any(sum(lengths[i] for i in b) > capacity for b in bins):
        raise ValueError(f"a bin holds more than its capacity of {capacity} tokens")
    return used / (len(bins) * capacity)


def summarize(lengths: Sequence[int], trained: int, rows_written: int, sequence_len: int,
              bins: Sequence[Sequence[int]] | None = None) -> dict:
    """The packing block of data_report.json (``bins`` only when sample_packing is on)."""
    total = sum(lengths)
    return {"sequence_len": sequence_len, "rows_written": rows_written, "rows_prepared": len(lengths),
            "rows_dropped": rows_written - len(lengths), "tokens_per_row": length_stats(lengths),
            "trained_tokens": trained, "trained_share": trained / total if total else None,
            "sample_packing": bins is not None, "packed_sequences": len(bins) if bins is not None else None,
            "packing_efficiency": efficiency(lengths, bins, sequence_len) if bins is not None else None}


METRICS = {"tokens_per_row_p50": ("tokens_per_row", "p50"), "tokens_per_row_p95": ("tokens_per_row", "p95"),
           "tokens_per_row_max": ("tokens_per_row", "max"), "rows_dropped": ("rows_dropped",),
           "packing_efficiency": ("packing_efficiency",), "trained_share": ("trained_share",)}


def metrics(stats: dict) -> dict:
    """MLflow metrics ``data/<name>`` of a packing block (the ones that have a value)."""
    out = {}
    for name, keys in METRICS.items():
        value = stats
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"data/{name}"] = value
    return out
