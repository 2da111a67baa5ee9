#!/usr/bin/env bash
# launcher=single: node 0 of 1, 1 process(es) here, world size 1
export ACCELERATE_USE_CPU=true
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=2
exec /work/main/.venv/train/bin/python -m axolotl.cli.train /work/main/.pytest-tmpC/results0/test-qlora/axolotl.yaml
