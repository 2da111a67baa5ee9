#!/usr/bin/env bash
# The H100 path end to end on one GPU (H100 or H200), offline, in under 10 minutes:
#   build a random-weight model in Qwen2.5 shapes (conf/model/random_qwen2_5_1_5b.yaml; 7B shapes with
#   SMOKE_MODEL=random_qwen2_5_7b), train qlora_opt for 30 steps on the shipped sample with the h100
#   profile, merge, serve it with vLLM and `make bench CONC=1,8,32` with the synthetic workload; then
#   print train tokens/s and MFU, peak GPU memory, decode tok/s per concurrency against the
#   memory-bandwidth roofline (experiments/report/gpu_smoke.py states the formulas).
# On success it writes the GPU lock files (requirements/gpu/*.lock) if there are none yet.
#
#   bash scripts/gpu_smoke.sh             # the envs must exist (make env PROFILE=h100, with internet, once)
#   bash scripts/gpu_smoke.sh --dry-run   # print the commands, run nothing
# Knobs: SMOKE_MODEL, SMOKE_STEPS (30), SMOKE_RUN (run id), SMOKE_REQUESTS (64 per level), RESULTS_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=""; [ "${1:-}" = --dry-run ] && dry=1
model=${SMOKE_MODEL:-random_qwen2_5_1_5b}
steps=${SMOKE_STEPS:-30}
run_id=${SMOKE_RUN:-gpu-smoke-$(date -u +%Y%m%d-%H%M%S)}
requests=${SMOKE_REQUESTS:-64}
results=${RESULTS_DIR:-$PWD/results}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

train_args="model=$model data=toolace_sample run.id=$run_id ++axolotl.max_steps=$steps axolotl.eval_steps=10 axolotl.save_steps=10"
bench_args="model=$model workload=synthetic bench.num_requests=$requests bench.warmup_requests=4"
t0=$(date +%s); times=()
run() {  # echo, run (unless --dry-run), time
  echo "+ $(printf "%q " "$@")"
  [ -n "$dry" ] && return 0
  local s=$(date +%s)
  "$@"
  times+=("$(( $(date +%s) - s )) s  ${*:1:3}")
}
stop_server() { [ -n "$dry" ] || make --no-print-directory stop PROFILE=h100 RUN="$run_id" MODEL=merged >/dev/null 2>&1 || true; }
trap stop_server EXIT

if [ -z "$dry" ]; then
  for env in train serve eval; do
    [ -f ".venv/$env/.ready" ] || { echo "[smoke] .venv/$env is missing: building it needs the package index (make env PROFILE=h100)"; break; }
  done
fi
run make --no-print-directory env PROFILE=h100
# `make train` on a GPU profile starts with `make preflight` (driver/CUDA, GPU memory, disk, model)
run make --no-print-directory train PROFILE=h100 METHOD=qlora_opt ARGS="$train_args"
run make --no-print-directory merge PROFILE=h100 RUN="$run_id" ARGS="model=$model"
run make --no-print-directory bench PROFILE=h100 RUN="$run_id" MODEL=merged CONC=1,8,32 ARGS="$bench_args"
gpu=$([ -n "$dry" ] && echo "<GPU name from nvidia-smi>" || nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
run .venv/eval/bin/python -m experiments.report.gpu_smoke --run "$results/$run_id" --gpu "$gpu"
# The environments passed preflight and the smoke: pin them (kept if a lock exists already).
for env in train serve eval; do run bash scripts/setup_env.sh "$env" h100 --lock; done
[ -n "$dry" ] && exit 0
printf '[smoke] %s\n' "${times[@]}"
echo "[smoke] done in $(( $(date +%s) - t0 )) s; numbers in $results/$run_id/gpu_smoke.json"
