# Tool-calling fine-tunes: train -> merge -> serve -> eval -> bench -> report.
# `make help` lists the targets. Every target creates the environments it needs on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Hardware profile: h100 where an NVIDIA GPU answers, else cpu (tiny local model, sample data).
PROFILE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo h100 || echo cpu)
METHOD  ?= qlora_opt
RUN     ?=
MODEL   ?= merged
LAUNCHER ?= single
GPUS    ?=
NNODES  ?=
NODE_RANK ?=
MASTER_ADDR ?=
BFCL    ?=
CONC    ?=
RATE    ?=
CAPACITY ?=
ENDPOINT ?=
METHODS ?=
COMPARISON ?=
RUNS    ?=
ARGS    ?=
# Interpreter for new environments; empty: python3, or on GPU profiles the first of python3,
# python3.12, python3.13 that is >= 3.12 (scripts/setup_env.sh refuses an older one).
PYTHON  ?=
export PYTHON

VENV    := .venv
EVAL_PY := $(VENV)/eval/bin/python
# Options common to every stage, passed as Hydra overrides.
HYDRA   := profile=$(PROFILE) $(if $(TRACKING),tracking=$(TRACKING))
STAGE_OPTS := $(if $(RUN),--run $(RUN)) --model $(MODEL) $(if $(ENDPOINT),--endpoint $(ENDPOINT))
LAUNCH_OPTS := launcher=$(LAUNCHER) $(if $(GPUS),launcher.gpus=$(GPUS)) $(if $(NNODES),launcher.nnodes=$(NNODES)) \
	$(if $(NODE_RANK),launcher.node_rank=$(NODE_RANK)) $(if $(MASTER_ADDR),launcher.master_addr=$(MASTER_ADDR))

.PHONY: help env env-train env-serve env-eval preflight train merge serve stop eval bench report compare all test ui clean-envs

help: ## Show this help
	@echo "Usage: make <target> [METHOD=qlora|dora|qlora_opt] [RUN=<run_id>] [MODEL=merged|adapter|base] [PROFILE=$(PROFILE)]"
	@echo "       any Hydra override goes in ARGS=\"axolotl.lora_r=32 data=toolace\""
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

env: env-train env-serve env-eval ## Create all three environments (train, serve, eval)

env-train: ## Create the training environment (axolotl) if missing
	@MAKE_TARGET="$(or $(MAKECMDGOALS),env-train)" bash scripts/setup_env.sh train $(PROFILE)

env-serve: ## Create the serving environment (vLLM) if missing
	@MAKE_TARGET="$(or $(MAKECMDGOALS),env-serve)" bash scripts/setup_env.sh serve $(PROFILE)

env-eval: ## Create the orchestration/eval environment (hydra, mlflow, bfcl-eval, aiohttp) if missing
	@MAKE_TARGET="$(or $(MAKECMDGOALS),env-eval)" bash scripts/setup_env.sh eval $(PROFILE)

# Driver vs torch's CUDA, GPU memory, flash-attn if asked for, disk, model id (experiments/core/preflight.py).
PREFLIGHT = $(EVAL_PY) -m experiments.core.preflight method=$(METHOD) $(HYDRA) $(LAUNCH_OPTS) $(ARGS)
# GPU profiles check the machine before `make train` / `make all` spend minutes on it.
GPU_PREFLIGHT = $(if $(filter cpu,$(PROFILE)),,$(PREFLIGHT) &&)

preflight: env-eval ## Is this machine ready for PROFILE? driver/CUDA, GPU memory, disk, model access
	@$(PREFLIGHT)

train: env-eval env-train ## Train one method: make train METHOD=qlora_opt [LAUNCHER=ddp GPUS=8]
	@$(GPU_PREFLIGHT) $(EVAL_PY) scripts/train.py method=$(METHOD) $(HYDRA) $(LAUNCH_OPTS) $(ARGS)

merge: env-eval env-train ## Merge a run's adapter into its base model: make merge [RUN=<run_id>]
	@$(EVAL_PY) scripts/merge.py $(if $(RUN),--run $(RUN)) $(HYDRA) $(ARGS)

serve: env-eval env-serve ## Start vLLM for a run: make serve [RUN=...] [MODEL=merged|adapter|base] | MODEL=adapters RUNS=a,b (one server)
	@$(EVAL_PY) -m experiments.serve.server start $(if $(RUN),--run $(RUN)) $(if $(RUNS),--runs $(RUNS)) --model $(MODEL) $(HYDRA) $(ARGS)

stop: env-eval ## Stop the server `make serve` started (by its PID): make stop [RUN=...] [MODEL=...]
	@$(EVAL_PY) -m experiments.serve.server stop $(if $(RUN),--run $(RUN)) $(if $(RUNS),--runs $(RUNS)) --model $(MODEL) $(HYDRA) $(ARGS)

eval: env-eval env-serve ## BFCL with bfcl-eval's checker: make eval [RUN=...] [MODEL=merged|adapter|base] [BFCL=quick|full] [ENDPOINT=url]
	@$(EVAL_PY) -m experiments.bfcl.stage $(STAGE_OPTS) $(HYDRA) $(if $(BFCL),bfcl=$(BFCL)) $(ARGS)

bench: env-eval env-serve ## Load test: make bench [RUN=...] [MODEL=...] [CONC=32 | CONC=1,4,16,32 | RATE=10 | CAPACITY=1] [ENDPOINT=url]
	@$(EVAL_PY) -m experiments.bench.stage $(STAGE_OPTS) $(HYDRA) $(if $(CONC),bench.concurrency=[$(CONC)]) $(if $(RATE),bench.rate=[$(RATE)]) $(if $(CAPACITY),bench.mode=capacity) $(ARGS)

report: env-eval ## Write results/<run>/report.md from the run's files: make report [RUN=...] [RUNS=a,b]
	@$(EVAL_PY) -m experiments.report $(if $(RUN),--run $(RUN)) $(if $(RUNS),--runs $(RUNS)) $(HYDRA) $(ARGS)

all: env ## The whole chain: train -> merge -> serve -> eval -> bench -> report [METHOD=qlora_opt] [FRESH=1]
	@$(GPU_PREFLIGHT) $(EVAL_PY) -m experiments.pipeline $(if $(RUN),--run $(RUN)) $(if $(FRESH),--fresh) method=$(METHOD) $(HYDRA) $(LAUNCH_OPTS) $(ARGS)

compare: env-eval env-train ## Train several methods under one comparison id and report them: make compare [METHODS=qlora,dora] [COMPARISON=id]
	@$(EVAL_PY) -m experiments.report.compare $(if $(METHODS),--methods $(METHODS)) $(if $(COMPARISON),--comparison $(COMPARISON)) $(HYDRA) $(LAUNCH_OPTS) $(ARGS)

test: env ## Run the test suite (the command CI runs)
	@$(EVAL_PY) -m pytest tests --basetemp=$(CURDIR)/.pytest-tmp $(PYTEST_ARGS)

ui: env-eval ## Open the MLflow UI on 127.0.0.1:5000 for the local store
	@$(EVAL_PY) -m experiments.tracking.ui $(HYDRA) $(ARGS)

.PHONY: k8s
k8s: env-eval ## Kubernetes manifests for a run, strictly validated: make k8s PROFILE=h100 LAUNCHER=ddp GPUS=8 NNODES=2 ARGS="run.id=ft1"
	@$(EVAL_PY) scripts/k8s.py method=$(METHOD) $(HYDRA) $(LAUNCH_OPTS) $(ARGS)

# Team tracking: PostgreSQL + MLflow server on this machine (experiments/tracking/server.py).
# `make train tracking=postgres` (Hydra's spelling) works like TRACKING=postgres.
ifeq ($(TRACKING),)
HYDRA += $(if $(tracking),tracking=$(tracking))
endif
TRACKING_SERVER = $(EVAL_PY) -m experiments.tracking.server
.PHONY: tracking-server tracking-stop tracking-status sync
tracking-server: env-eval ## Start PostgreSQL + an MLflow server on 127.0.0.1:5400 (then TRACKING=postgres)
	@$(TRACKING_SERVER) start tracking=$(or $(TRACKING),$(tracking),postgres) $(ARGS)

tracking-stop: env-eval ## Stop exactly the PostgreSQL and MLflow processes `make tracking-server` started
	@$(TRACKING_SERVER) stop tracking=$(or $(TRACKING),$(tracking),postgres) $(ARGS)

tracking-status: env-eval ## Is this machine's tracking server up? (PIDs, ports, logs)
	@$(TRACKING_SERVER) status tracking=$(or $(TRACKING),$(tracking),postgres) $(ARGS)

sync: env-eval ## Log a run folder into a tracking store: make sync RUN=<run_id> TRACKING=postgres [FORCE=1]
	@$(EVAL_PY) -m experiments.tracking.sync $(if $(RUN),--run $(RUN)) $(if $(FORCE),--force) $(HYDRA) $(ARGS)

clean-envs: ## Remove the environments (results/ is never touched)
	rm -rf $(VENV)
