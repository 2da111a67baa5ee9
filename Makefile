# Tool-calling fine-tunes: train -> merge -> serve -> eval -> bench -> report.
# `make help` lists the targets. Every target creates the environments it needs on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Hardware profile: h100 where an NVIDIA GPU answers, else cpu (tiny local model, sample data).
ifeq ($(origin PROFILE),undefined)
PROFILE := $(shell nvidia-smi -L >/dev/null 2>&1 && echo h100 || echo cpu)
endif
METHOD  ?= qlora_opt
RUN     ?=
MODEL   ?= merged
LAUNCHER ?= single
GPUS    ?=
NNODES  ?=
NODE_RANK ?=
MASTER_ADDR ?=
BFCL    ?=
BFCL_PATH ?=
TOKENIZER ?=
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
# Freeze each user value as typed: make never expands `$(...)` inside it (not even when it exports
# a command-line variable to a recipe's environment, which would run `$(shell ...)`).
USER_VARS := PROFILE METHOD RUN MODEL LAUNCHER GPUS NNODES NODE_RANK MASTER_ADDR BFCL CONC RATE CAPACITY ENDPOINT \
	METHODS COMPARISON RUNS ARGS RESUME TRACKING tracking FRESH FORCE CHECKPOINT SWEEP SWEEP_ID POINT MAX_POINTS DRY_RUN
$(foreach n,$(USER_VARS),$(eval override $(n) := $$(value $(n))))

VENV    := .venv
EVAL_PY := $(VENV)/eval/bin/python
# Every user value reaches Python as data, never as shell code: $(call v,NAME) is NAME's value
# unexpanded by make, with ' escaped; $(call q,NAME) single-quotes it for the recipe's shell;
# $(call opt,NAME,PREFIX) is 'PREFIXvalue' when NAME is set. So `;`, `$(...)`, backticks and
# quotes stay characters. ARGS travels in the environment and Python splits it with shlex
# (experiments.core.argv, which then runs the stage's module).
v   = $(subst ','\'',$(value $(1)))
q   = '$(call v,$(1))'
opt = $(if $(value $(1)),'$(2)$(call v,$(1))')
PY  := EXPERIMENTS_ARGS=$(call q,ARGS) $(EVAL_PY) -m experiments.core.argv
# Options common to every stage, passed as Hydra overrides.
HYDRA   := $(call opt,PROFILE,profile=) $(call opt,TRACKING,tracking=)
STAGE_OPTS := $(call opt,RUN,--run=) $(call opt,MODEL,--model=) $(call opt,ENDPOINT,--endpoint=)
LAUNCH_OPTS := $(call opt,LAUNCHER,launcher=) $(call opt,GPUS,launcher.gpus=) $(call opt,NNODES,launcher.nnodes=) \
	$(call opt,NODE_RANK,launcher.node_rank=) $(call opt,MASTER_ADDR,launcher.master_addr=)

.PHONY: help system-deps env env-train env-serve env-eval preflight train merge serve stop eval eval-checkpoints sweep bench agree report compare all test ui clean-envs

help: ## Show this help
	@echo "Usage: make <target> [METHOD=qlora|dora|qlora_opt] [RUN=<run_id>] [MODEL=merged|adapter|base] [PROFILE=$(PROFILE)]"
	@echo "       any Hydra override goes in ARGS=\"axolotl.lora_r=32 data=toolace\""
	@c=; r=; if [ -t 1 ]; then c=$$'\033[36m'; r=$$'\033[0m'; fi; \
	grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -v c="$$c" -v r="$$r" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-16s%s %s\n", c, $$1, r, $$2}'

env: env-train env-serve env-eval ## Create all three environments (train, serve, eval)

env-train: ## Create the training environment (axolotl) if missing
	@MAKE_TARGET="$(or $(MAKECMDGOALS),env-train)" bash scripts/setup_env.sh train $(call q,PROFILE)

env-serve: ## Create the serving environment (vLLM) if missing
	@MAKE_TARGET="$(or $(MAKECMDGOALS),env-serve)" bash scripts/setup_env.sh serve $(call q,PROFILE)

env-eval: ## Create the orchestration/eval environment (hydra, mlflow, bfcl-eval, aiohttp) if missing
	@MAKE_TARGET="$(or $(MAKECMDGOALS),env-eval)" bash scripts/setup_env.sh eval $(call q,PROFILE)

# Driver vs torch's CUDA, GPU memory, flash-attn if asked for, disk, model id (experiments/core/preflight.py).
PREFLIGHT = $(PY) experiments.core.preflight $(call opt,METHOD,method=) $(HYDRA) $(LAUNCH_OPTS)
# GPU profiles check the machine before `make train` / `make all` spend minutes on it.
GPU_PREFLIGHT = $(if $(filter cpu,$(PROFILE)),,$(PREFLIGHT) &&)

preflight: env-eval ## Is this machine ready for PROFILE? driver/CUDA, GPU memory, disk, model access
	@$(PREFLIGHT)

train: env-eval env-train env-serve ## Train one method: make train METHOD=qlora_opt [LAUNCHER=ddp GPUS=8] [RESUME=<run_id>]
	@$(GPU_PREFLIGHT) $(PY) experiments.train.stage $(call opt,RESUME,--resume=) $(call opt,METHOD,method=) $(HYDRA) $(LAUNCH_OPTS) \
		&& $(PY) experiments.bfcl.checkpoints --after-training $(call opt,METHOD,method=) $(HYDRA) $(LAUNCH_OPTS)

merge: env-eval env-train ## Merge a run's adapter into its base model: make merge [RUN=<run_id>] [CHECKPOINT=best|<step>]
	@$(PY) experiments.train.merge $(call opt,RUN,--run=) $(call opt,CHECKPOINT,--checkpoint=) $(HYDRA)

serve: env-eval env-serve ## Start vLLM for a run: make serve [RUN=...] [MODEL=merged|adapter|base] | MODEL=adapters RUNS=a,b (one server)
	@$(PY) experiments.serve.server start $(call opt,RUN,--run=) $(call opt,RUNS,--runs=) $(call opt,MODEL,--model=) $(HYDRA)

stop: env-eval ## Stop the server `make serve` started (by its PID): make stop [RUN=...] [MODEL=...] [RUNS=a,b]
	@$(PY) experiments.serve.server stop $(call opt,RUN,--run=) $(call opt,RUNS,--runs=) $(call opt,MODEL,--model=) $(HYDRA)

eval: env-eval env-serve ## BFCL with bfcl-eval's checker: make eval [RUN=...] [MODEL=merged|adapter|base] [BFCL=quick|full] [BFCL_PATH=api|native|both] [ENDPOINT=url TOKENIZER=dir]
	@$(PY) experiments.bfcl.stage $(STAGE_OPTS) $(HYDRA) $(call opt,BFCL,bfcl=) $(call opt,BFCL_PATH,bfcl.path=) $(call opt,TOKENIZER,bfcl.tokenizer=)

eval-checkpoints: env-eval env-serve env-train ## BFCL at every saved checkpoint of a run (one server, adapters at run time): make eval-checkpoints [RUN=...]
	@$(PY) experiments.bfcl.checkpoints $(call opt,RUN,--run=) $(HYDRA)

sweep: env ## Grid of runs from conf/sweep/<name>.yaml (resumable): make sweep SWEEP=<name> [DRY_RUN=1] [MAX_POINTS=n] [SWEEP_ID=id]
	@$(PY) experiments.sweep.run $(call opt,SWEEP,--sweep=) $(call opt,SWEEP_ID,--id=) $(call opt,POINT,--point=) \
		$(call opt,MAX_POINTS,--max-points=) $(if $(value DRY_RUN),--dry-run) $(HYDRA) $(LAUNCH_OPTS)

bench: env-eval env-serve ## Load test: make bench [RUN=...] [MODEL=...] [CONC=32 | CONC=1,4,16,32 | RATE=10 | CAPACITY=1] [ENDPOINT=url]
	@$(PY) experiments.bench.stage $(STAGE_OPTS) $(HYDRA) $(if $(value CONC),'bench.concurrency=[$(call v,CONC)]') $(if $(value RATE),'bench.rate=[$(call v,RATE)]') $(if $(value CAPACITY),'bench.mode=capacity')

agree: env-eval env-serve ## Served loss = trained loss, adapter = merged: make agree [RUN=...] [MODEL=merged]
	@$(PY) experiments.agree.stage $(STAGE_OPTS) $(HYDRA)

report: env-eval ## Write results/<run>/report.md from the run's files: make report [RUN=...] [RUNS=a,b] | [SWEEP=<id>]
	@$(PY) experiments.report $(call opt,RUN,--run=) $(call opt,RUNS,--runs=) $(call opt,SWEEP,--sweep=) $(HYDRA)

all: env ## The whole chain: train -> merge -> serve -> eval -> bench -> report [METHOD=qlora_opt] [FRESH=1]
	@$(GPU_PREFLIGHT) $(PY) experiments.pipeline $(call opt,RUN,--run=) $(if $(value FRESH),--fresh) $(call opt,METHOD,method=) $(HYDRA) $(LAUNCH_OPTS)

compare: env-eval env-train ## Train several methods under one comparison id and report them: make compare [METHODS=qlora,dora] [COMPARISON=id]
	@$(PY) experiments.report.compare $(call opt,METHODS,--methods=) $(call opt,COMPARISON,--comparison=) $(HYDRA) $(LAUNCH_OPTS)

system-deps: ## Install the system packages the tests need (PostgreSQL, Chromium; apt-get as root or sudo)
	@bash scripts/system_deps.sh

test: env system-deps ## Run the test suite (the command CI runs)
	@$(EVAL_PY) -m pytest tests --basetemp=$(CURDIR)/.pytest-tmp $(PYTEST_ARGS)

ui: env-eval ## Open the MLflow UI on 127.0.0.1:5000 for the local store
	@$(PY) experiments.tracking.ui $(HYDRA)

.PHONY: k8s
k8s: env-eval ## Kubernetes manifests for a run (or SWEEP=<name>: an indexed Job over its grid), strictly validated: make k8s PROFILE=h100 LAUNCHER=ddp GPUS=8 NNODES=2 ARGS="run.id=ft1"
	@$(PY) $(if $(value SWEEP),experiments.sweep.k8s $(call opt,SWEEP,--sweep=) $(call opt,SWEEP_ID,--id=),experiments.cluster.k8s $(call opt,METHOD,method=)) $(HYDRA) $(LAUNCH_OPTS)

# Team tracking: PostgreSQL + MLflow server on this machine (experiments/tracking/server.py).
# `make train tracking=postgres` (Hydra's spelling) works like TRACKING=postgres.
ifeq ($(value TRACKING),)
HYDRA += $(call opt,tracking,tracking=)
endif
TRACKING_SERVER = $(PY) experiments.tracking.server
TRACKING_SET = 'tracking=$(or $(call v,TRACKING),$(call v,tracking),postgres)'
.PHONY: tracking-server tracking-stop tracking-status sync
tracking-server: env-eval ## Start PostgreSQL + an MLflow server on 127.0.0.1:5400 (then TRACKING=postgres)
	@$(TRACKING_SERVER) start $(TRACKING_SET)

tracking-stop: env-eval ## Stop exactly the PostgreSQL and MLflow processes `make tracking-server` started
	@$(TRACKING_SERVER) stop $(TRACKING_SET)

tracking-status: env-eval ## Is this machine's tracking server up? (PIDs, ports, logs)
	@$(TRACKING_SERVER) status $(TRACKING_SET)

sync: env-eval ## Log a run folder into a tracking store: make sync RUN=<run_id> TRACKING=postgres [FORCE=1]
	@$(PY) experiments.tracking.sync $(call opt,RUN,--run=) $(if $(value FORCE),--force) $(HYDRA)

clean-envs: ## Remove the environments (results/ is never touched)
	rm -rf $(VENV)
