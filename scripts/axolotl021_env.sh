#!/usr/bin/env bash
# The h100 train env's Axolotl (0.21, Python 3.12) on this CPU, for tests/test_gpu_pins.py: every h100
# config is validated under the Axolotl an H100 would run. Built once per requirements/gpu/train.txt
# digest into .cache/gpu-pins/axolotl-0.21-py312 (~8 GB: axolotl's pins pull CUDA torch, which imports
# and validates fine on a CPU; --no-cache-dir keeps pip from storing a second copy of those wheels in
# its cache). .ci/run starts it beside `make env` (downloads overlap the CPU envs' installs); the test
# builds it itself when TEST_AXOLOTL_021=1.
#   bash scripts/axolotl021_env.sh            # prints the venv path once it is ready
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req=$root/requirements/gpu/train.txt
venv=$root/.cache/gpu-pins/axolotl-0.21-py312
digest=$(sha256sum "$req" | cut -c1-16)
if [ "$(cat "$venv/.ready" 2>/dev/null)" = "$digest" ]; then echo "$venv"; exit 0; fi
py=${PYTHON312:-}
if [ -z "$py" ]; then  # PATH first (a pyenv shim there may not run), then pyenv's versions
  for cand in "$(command -v python3.12 || true)" ~/.pyenv/versions/3.12*/bin/python3.12; do
    [ -n "$cand" ] && "$cand" -c pass 2>/dev/null && { py=$cand; break; }
  done
fi
[ -n "$py" ] || { echo "[axolotl021] no Python 3.12 (set PYTHON312=/path/to/python3.12)" >&2; exit 3; }
start=$(date +%s)
rm -rf "$venv" && mkdir -p "$(dirname "$venv")"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
DS_BUILD_OPS=0 "$venv/bin/python" -m pip install -q --no-cache-dir -r "$req" >"$venv/install.log" 2>&1 \
  || { tail -20 "$venv/install.log" >&2; echo "[axolotl021] pip failed: $venv/install.log" >&2; exit 1; }
echo "$digest" >"$venv/.ready"
echo "[axolotl021] built in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)" >&2
echo "$venv"
