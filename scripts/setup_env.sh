#!/usr/bin/env bash
# Create (or reuse) one isolated environment: scripts/setup_env.sh <train|serve|eval> <cpu|h100>
# The stamp file is written last, so an interrupted install is redone, never half-used.
set -euo pipefail
stage=$1; profile=$2
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv/$stage
stamp=$venv/.ready-$profile
[ -f "$stamp" ] && exit 0
case $profile in cpu) hw=cpu ;; *) hw=gpu ;; esac
case $stage in
  eval)  req=(-r "$root/requirements.txt") ;;
  *)     req=(-r "$root/requirements/$hw/$stage.txt")
         [ -f "$root/requirements/$hw/$stage.lock" ] && req+=(-c "$root/requirements/$hw/$stage.lock") ;;
esac
echo "[setup] creating .venv/$stage for profile $profile (${req[*]}) ..."
start=$(date +%s)
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
log=$root/.venv/$stage-install.log
pip_install() {  # quiet on success; the log's tail (minus pip's index noise) on failure
  if ! "$venv/bin/pip" install "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -30; echo "[setup] pip install failed; full log: $log" >&2; exit 1
  fi
}
pip_install --upgrade pip
pip_install "${req[@]}"
"$venv/bin/python" - <<'PY' "$stage"
import importlib, sys
mods = {"train": ["axolotl", "mlflow"], "serve": ["vllm"], "eval": ["hydra", "mlflow", "bfcl_eval", "aiohttp", "pandas"]}[sys.argv[1]]
for m in mods:
    importlib.import_module(m)
PY
if [ "$stage" = serve ]; then
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break transformers beside
  # the CPU torch; vLLM serves text models without them. triton is GPU-only (~1 GB).
  [ "$hw" = cpu ] && "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
touch "$stamp"
echo "[setup] .venv/$stage ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
