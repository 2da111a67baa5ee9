"""Packing statistics of the dataset Axolotl prepared for a run, in the train env (datasets, numpy,
Axolotl's own packer). Prints one JSON object (experiments.data.packing.summarize):

    python -m experiments.train.packing_stats PREPARED_DIR --rows-written N --sequence-len L
        [--axolotl-config RUN/axolotl.yaml] [--sample-packing --micro-batch-size B --bin-size S --group-size G --seed K]

PREPARED_DIR holds one folder per dataset hash: the train split's and, with `test_datasets` (the
run's held-out split), the eval split's. --axolotl-config names the train one by Axolotl's own hash.

With packing on, rows are binned by Axolotl's MultipackBatchSampler (the sampler its trainer uses:
first fit over a seeded random order, bins of ``sequence_len`` tokens, at most ``bin_size`` rows each).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.data import packing


def train_split_hash(axolotl_yaml: Path) -> str:
    """The folder name Axolotl saved the train split under (axolotl.utils.data.sft: the hash of the
    validated config's `datasets` and the tokenizer), not the eval split's (`test_datasets`)."""
    from axolotl.cli.config import load_cfg
    from axolotl.utils.data.shared import generate_dataset_hash_from_config

    cfg = load_cfg(str(axolotl_yaml))
    return generate_dataset_hash_from_config(cfg, cfg.datasets, cfg.tokenizer_config)


def prepared_folder(path: Path, axolotl_yaml: Path | None = None) -> Path:
    """The train split's prepared dataset under the run's dataset_prepared_path."""
    if (path / "dataset_info.json").exists():
        return path
    found = sorted(p.name for p in path.iterdir() if (p / "dataset_info.json").exists())
    if axolotl_yaml is not None:
        name = train_split_hash(axolotl_yaml)
        if name not in found:
            raise FileNotFoundError(f"no prepared train split {name} (Axolotl's hash of {axolotl_yaml}) under {path}: {found}")
        return path / name
    if len(found) != 1:
        raise FileNotFoundError(f"{len(found)} prepared datasets under {path} ({found}): pass --axolotl-config to pick the train split")
    return path / found[0]


def axolotl_bins(lengths: list[int], sequence_len: int, micro_batch_size: int, bin_size: int, group_size: int,
                 seed: int) -> list[list[int]]:
    import numpy as np
    import torch
    from axolotl.utils.samplers.multipack import MultipackBatchSampler
    from torch.utils.data import RandomSampler

    sampler = MultipackBatchSampler(RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(seed)),
                                    batch_size=micro_batch_size, batch_max_len=sequence_len,
                                    lengths=np.array(lengths), bin_size=bin_size, group_size=group_size,
                                    drop_last=False, num_processes=1)
    return [list(map(int, b)) for batch in sampler.generate_batches() for b in batch]


def stats(prepared: Path, rows_written: int, sequence_len: int, sample_packing: bool, micro_batch_size: int = 1,
          bin_size: int = 200, group_size: int = 100_000, seed: int = 0, axolotl_yaml: Path | None = None) -> dict:
    import datasets

    ds = datasets.load_from_disk(str(prepared_folder(prepared, axolotl_yaml)))
    lengths = [len(x) for x in ds["input_ids"]]
    trained = sum(packing.trained_tokens(labels) for labels in ds["labels"])
    bins = axolotl_bins(lengths, sequence_len, micro_batch_size, bin_size, group_size, seed) if sample_packing else None
    return packing.summarize(lengths, trained, rows_written, sequence_len, bins)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--rows-written", type=int, required=True)
    ap.add_argument("--sequence-len", type=int, required=True)
    ap.add_argument("--axolotl-config", type=Path, help="the run's axolotl.yaml: picks the train split by Axolotl's hash")
    ap.add_argument("--sample-packing", action="store_true")
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--bin-size", type=int, default=200)
    ap.add_argument("--group-size", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(stats(a.prepared, a.rows_written, a.sequence_len, a.sample_packing, a.micro_batch_size,
                           a.bin_size, a.group_size, a.seed, a.axolotl_config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
