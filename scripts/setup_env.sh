#!/usr/bin/env bash
# Create, update or reuse one isolated environment: scripts/setup_env.sh <train|serve|eval> <cpu|h100> [mode]
#   missing            -> create it and install its requirements
#   requirements moved -> pip install them into it again (incremental; nothing is wiped)
#   built for other hw -> refuse (a CPU env is never silently replaced by a GPU one, or back)
# The stamp is written last, so an interrupted first install is redone from scratch.
# mode --pip-args: print the pip install arguments (one a line) and exit; creates nothing.
# mode --lock: write the env's .lock (pip freeze) if there is none yet, then re-stamp the env;
#   scripts/gpu_smoke.sh calls it once the GPU envs passed preflight and smoke.
set -euo pipefail
stage=$1; profile=$2; mode_arg=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv/$stage
case $profile in cpu) hw=cpu ;; *) hw=gpu ;; esac
# PyTorch's CPU wheels: on GPU profiles the eval env takes torch from here (see below).
torch_cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

# --- Python: checked before anything is created (no .venv, no lock, no download) ---------------
# GPU pins: axolotl 0.21 needs Python >= 3.12, vllm 0.33 >= 3.11; the three envs of a profile use
# one interpreter, so the eval env (built first by `make train`) is refused on an old one too.
min_python=""
[ $hw = gpu ] && min_python=3.12
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
py_ok() { [ -z "$min_python" ] || [ "$(printf '%s\n' "$min_python" "$1" | sort -V | head -1)" = "$min_python" ]; }
pick_python() {  # PYTHON if given, else the first of python3, python3.12, python3.13 that is new enough
  local cands=("${PYTHON:-}") c v seen=""
  [ -n "${PYTHON:-}" ] || cands=(python3 python3.12 python3.13)
  for c in "${cands[@]}"; do
    v=$(py_version "$c") || { seen+=" $c (not runnable)"; continue; }
    py_ok "$v" && { echo "$c"; return 0; }
    seen+=" $c ($v)"
  done
  {
    echo "[setup] PROFILE=$profile needs Python >= $min_python (axolotl 0.21 requires 3.12; vllm 0.33 >= 3.11);"
    echo "        found:$seen. Nothing was created."
    echo "        Get Python 3.12 and name it with PYTHON=, e.g.:"
    echo "          uv python install 3.12 && make ${MAKE_TARGET:-env-$stage} PROFILE=$profile PYTHON=\$(uv python find 3.12)"
    echo "          sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt-get install python3.12 python3.12-venv"
    echo "            && make ${MAKE_TARGET:-env-$stage} PROFILE=$profile PYTHON=python3.12"
  } >&2
  return 1
}
python_exe=""
if [ -z "$mode_arg" ] && [ ! -f "$venv/.ready" ]; then
  python_exe=$(pick_python) || exit 1
fi

# --- what to install ------------------------------------------------------------------------
lock_file=$root/requirements/$hw/$stage.lock
[ "$stage" = eval ] && [ $hw = cpu ] && lock_file=$root/requirements.lock
requirements() {  # sets req (pip arguments) and want (the stamp: hw + digest of what they name)
  local files extra=() env_hw=$hw
  case $stage in
    eval) files=("$root/requirements.txt")   # the same packages on every profile
          # bfcl-eval pulls torch (through sentence-transformers) and the orchestrator only needs
          # a tokenizer: on GPU profiles take PyTorch's CPU build, which pip prefers (torch==X+cpu)
          # over PyPI's CUDA build: ~2.7 GB of CUDA wheels less (env 6.1 GB -> ~2.4 GB, as on cpu).
          [ $hw = gpu ] && extra=(--extra-index-url "$torch_cpu_index")
          env_hw=any ;;
    *)    files=("$root/requirements/$hw/$stage.txt") ;;
  esac
  req=(-r "${files[0]}" "${extra[@]}")
  # a .lock (pip freeze of an env that passed the tests) is applied as constraints
  if [ -f "$lock_file" ]; then files+=("$lock_file"); req+=(-c "$lock_file"); fi
  want="hw=$env_hw req=$( { cat "${files[@]}"; [ ${#extra[@]} = 0 ] || printf '%s\n' "${extra[@]}"; } | sha256sum | cut -c1-16)"
  hw_want=$env_hw
}
requirements
if [ "$mode_arg" = --pip-args ]; then printf '%s\n' "${req[@]}"; exit 0; fi
stamp=$venv/.ready

mkdir -p "$root/.venv"
exec 9>"$root/.venv/.$stage.lock"
flock 9   # concurrent `make` calls: the second waits, then finds the env ready

if [ "$mode_arg" = --lock ]; then
  [ -f "$stamp" ] || { echo "[setup] .venv/$stage is not built; nothing to lock" >&2; exit 1; }
  if [ -f "$lock_file" ]; then
    echo "[setup] ${lock_file#$root/} exists; kept"
  else
    "$venv/bin/pip" freeze --exclude-editable > "$lock_file.tmp" && mv "$lock_file.tmp" "$lock_file"
    echo "[setup] wrote ${lock_file#$root/} ($(wc -l < "$lock_file") packages): later installs use it as constraints"
    requirements   # the env is exactly the lock: stamp it with the digest that now includes it
    echo "$want" > "$stamp"
  fi
  exit 0
fi

if [ -f "$stamp" ]; then
  have=$(cat "$stamp")
  [ "$have" = "$want" ] && exit 0
  if [ "${have%% *}" != "hw=$hw_want" ]; then
    echo "[setup] .venv/$stage was built for ${have%% *}, PROFILE=$profile needs hw=$hw_want;" \
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
pip_install() {  # on success pip's own warnings (minus index noise); on failure the log's tail
  if ! "$venv/bin/pip" install "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -30; echo "[setup] pip install failed; full log: $log" >&2; exit 1
  fi
  grep '^WARNING:' "$log" | grep -v "is ignored" | sed 's/^/[setup] pip: /' >&2 || true
  if grep -q "does not provide the extra" "$log"; then  # a requested package would be silently absent
    echo "[setup] a requirement names an extra its package does not have (above); fix ${req[1]#$root/}" >&2
    exit 1
  fi
}
start=$(date +%s)
echo "[setup] ${mode}: .venv/$stage for profile $profile (${req[*]#$root/}) ..."
if [ $mode = create ]; then
  rm -rf "$venv"
  "${python_exe:-${PYTHON:-python3}}" -m venv "$venv"
  pip_install --upgrade pip
fi
pip_install "${req[@]}"
"$venv/bin/python" - <<'PY' "$stage"
import importlib, sys
mods = {"train": ["axolotl", "mlflow"], "serve": ["vllm"], "eval": ["hydra", "mlflow", "bfcl_eval", "aiohttp", "pandas"]}[sys.argv[1]]
for m in mods:
    importlib.import_module(m)
PY
if [ "$stage" = serve ] && [ $hw = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break transformers beside
  # the CPU torch; vLLM serves text models without them. triton is GPU-only (~1 GB).
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
rm -f "$venv"/.ready-*
echo "$want" > "$stamp"
echo "[setup] .venv/$stage ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
