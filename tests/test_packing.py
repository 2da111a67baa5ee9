"""Packing statistics against hand-computed small cases: the pure part here, Axolotl's packer on a
prepared dataset in the train env, the MLflow metric names and the report's data table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data import packing  # noqa: E402

TRAIN_PYTHON = os.environ.get("TRAIN_PYTHON", str(ROOT / ".venv" / "train" / "bin" / "python"))


def test_percentiles_interpolate_between_ranks():
    xs = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5]
    assert packing.percentile(xs, 50) == 5.5          # between 5 and 6
    assert packing.percentile(xs, 95) == pytest.approx(9.55)  # 9 + 0.55 * (10 - 9)
    assert packing.percentile(xs, 100) == 10 and packing.percentile(xs, 0) == 1
    assert packing.percentile([], 50) is None
    assert packing.length_stats([4, 2, 9]) == {"rows": 3, "p50": 4, "p95": pytest.approx(8.5), "max": 9, "total": 15}


def test_summary_of_a_hand_packed_case():
    lengths = [5, 6, 5, 5, 6, 5]                       # capacity 10: 5+5 twice, each 6 alone
    bins = [[0, 2], [1], [3, 5], [4]]
    s = packing.summarize(lengths, trained=8, rows_written=8, sequence_len=10, bins=bins)
    assert s["rows_dropped"] == 2 and s["packed_sequences"] == 4
    assert s["packing_efficiency"] == pytest.approx(32 / 40)
    assert s["trained_share"] == pytest.approx(8 / 32)
    assert s["tokens_per_row"]["p50"] == 5 and s["tokens_per_row"]["max"] == 6
    unpacked = packing.summarize(lengths, 8, 6, 10)
    assert unpacked["packing_efficiency"] is None and unpacked["sample_packing"] is False
    with pytest.raises(ValueError, match="capacity"):
        packing.efficiency(lengths, [[1, 4]], 10)       # 12 tokens in a bin of 10
    assert packing.trained_tokens([-100, -100, 7, 8, -100]) == 2


BUILD = r"""
import sys, datasets
out = sys.argv[1]
lengths = [5, 6, 5, 5, 6, 5]
rows = {"input_ids": [[1] * n for n in lengths],
        "labels": [[-100] * (n - 2) + [1, 1] for n in lengths],   # 2 trained tokens per row
        "attention_mask": [[1] * n for n in lengths], "length": lengths}
datasets.Dataset.from_dict(rows).save_to_disk(out + "/0123abcd")
"""


def test_axolotl_packer_on_a_prepared_dataset(tmp_path):
    if not Path(TRAIN_PYTHON).exists():
        pytest.skip(f"train env interpreter not found at {TRAIN_PYTHON}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
    subprocess.run([TRAIN_PYTHON, "-c", BUILD, str(tmp_path / "prepared")], check=True, env=env, timeout=300)
    out = {}
    for flag in ([], ["--sample-packing"]):
        proc = subprocess.run([TRAIN_PYTHON, "-m", "experiments.train.packing_stats", str(tmp_path / "prepared"),
                               "--rows-written", "8", "--sequence-len", "10", "--micro-batch-size", "2", *flag],
                              capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[bool(flag)] = json.loads(proc.stdout.strip().splitlines()[-1])
    packed = out[True]
    # first fit in any order: every 5 pairs with a 5, each 6 stays alone -> 4 sequences of 10
    assert packed["packed_sequences"] == 4 and packed["packing_efficiency"] == pytest.approx(0.8)
    assert packed["rows_prepared"] == 6 and packed["rows_dropped"] == 2
    assert packed["trained_tokens"] == 12 and packed["trained_share"] == pytest.approx(12 / 32)
    assert out[False]["packing_efficiency"] is None and out[False]["tokens_per_row"] == packed["tokens_per_row"]


def test_packing_metrics_for_mlflow_and_the_report_table():
    from experiments.report.training import data_table
    stats = packing.summarize([5, 6, 5, 5, 6, 5], 12, 8, 10, [[0, 2], [1], [3, 5], [4]])
    assert packing.metrics(stats) == {"data/tokens_per_row_p50": 5, "data/tokens_per_row_p95": 6,
                                      "data/tokens_per_row_max": 6, "data/rows_dropped": 2,
                                      "data/packing_efficiency": 0.8, "data/trained_share": 12 / 32}
    assert packing.metrics({"error": "x"}) == {}
    rep = {"rows_in": 10, "rejected": 2, "rows_out": 8, "packing": stats,
           "decontamination": {"mode": "drop", "rows_overlapping": 1, "rows_dropped": 1},
           "sources": {"toolace": {"rows_in_mix": 5}, "glaive": {"rows_in_mix": 3}}}
    row = data_table([{"id": "r1", "info": {"data": "mix_sample"}, "data": rep}]).iloc[0].to_dict()
    assert row["rows out"] == "8" and row["BFCL overlap"] == "1 (1 dropped)" and row["dropped by Axolotl"] == "2"
    assert row["packing efficiency"] == "0.800" and row["trained share"] == "0.375"
    assert row["sources"] == "toolace 5, glaive 3" and row["tokens/row p50"] == "5"
