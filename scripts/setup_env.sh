#!/usr/bin/env bash
# Create, update or reuse one isolated environment: scripts/setup_env.sh <train|serve|eval> <cpu|h100>
#   missing            -> create it and install its requirements
#   requirements moved -> pip install them into it again (incremental; nothing is wiped)
#   built for other hw -> refuse (a CPU env is never silently replaced by a GPU one, or back)
# The stamp is written last, so an interrupted first install is redone from scratch.
set -euo pipefail
stage=$1; profile=$2
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv/$stage
mkdir -p "$root/.venv"
exec 9>"$root/.venv/.$stage.lock"
flock 9   # concurrent `make` calls: the second waits, then finds the env ready
case $profile in cpu) hw=cpu ;; *) hw=gpu ;; esac
case $stage in
  eval)  req=(-r "$root/requirements.txt")   # the same packages on every profile
         # requirements.lock pins what was tested on the CPU profile (its torch is the +cpu wheel)
         [ $hw = cpu ] && req+=(-c "$root/requirements.lock")
         hw=any ;;
  *)     req=(-r "$root/requirements/$hw/$stage.txt")
         [ -f "$root/requirements/$hw/$stage.lock" ] && req+=(-c "$root/requirements/$hw/$stage.lock") ;;
esac
files=()
for ((i = 1; i < ${#req[@]}; i += 2)); do files+=("${req[$i]}"); done
digest=$(cat "${files[@]}" | sha256sum | cut -c1-16)
stamp=$venv/.ready
want="hw=$hw req=$digest"
if [ -f "$stamp" ]; then
  have=$(cat "$stamp")
  [ "$have" = "$want" ] && exit 0
  if [ "${have%% *}" != "hw=$hw" ]; then
    echo "[setup] .venv/$stage was built for ${have%% *}, PROFILE=$profile needs hw=$hw;" \
         "remove it (make clean-envs) or use another checkout" >&2
    exit 1
  fi
  mode=update
elif compgen -G "$venv/.ready-*" >/dev/null; then
  mode=update   # stamped by an older version of this script
else
  mode=create
fi
log=$root/.venv/$stage-install.log
pip_install() {  # quiet on success; the log's tail (minus pip's index noise) on failure
  if ! "$venv/bin/pip" install "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -30; echo "[setup] pip install failed; full log: $log" >&2; exit 1
  fi
}
start=$(date +%s)
echo "[setup] ${mode}: .venv/$stage for profile $profile (${req[*]#$root/}) ..."
if [ $mode = create ]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  pip_install --upgrade pip
fi
pip_install "${req[@]}"
"$venv/bin/python" - <<'PY' "$stage"
import importlib, sys
mods = {"train": ["axolotl", "mlflow"], "serve": ["vllm"], "eval": ["hydra", "mlflow", "bfcl_eval", "aiohttp", "pandas"]}[sys.argv[1]]
for m in mods:
    importlib.import_module(m)
PY
if [ "$stage" = serve ] && [ "$hw" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break transformers beside
  # the CPU torch; vLLM serves text models without them. triton is GPU-only (~1 GB).
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
rm -f "$venv"/.ready-*
echo "$want" > "$stamp"
echo "[setup] .venv/$stage ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
