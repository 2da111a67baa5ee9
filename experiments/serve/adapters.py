"""Several runs' adapters on one vLLM server: `make serve MODEL=adapters RUNS=a,b`.

One server on the runs' common base model with `--enable-lora --max-loras N --lora-modules
<run>-adapter=<run>/adapter ...`; each adapter is its own served name. The server's files live
in the first run's serve/adapters/; every run also gets serve/adapter/endpoint.json naming the
shared server and its own adapter (no server.pid there), so `make eval RUN=<b> MODEL=adapter`
and `make bench RUN=<b> MODEL=adapter` use the shared server as they would their own, and never
stop it. DoRA adapters are refused (vLLM serves LoRA, not DoRA): serve those merged, one server
each (`make serve RUN=<run> MODEL=merged`). Adapters are fixed at start (`--lora-modules`); vLLM's
runtime loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING, /v1/load_lora_adapter) is not used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from experiments.core import runs
from experiments.serve.server import (SHARED_KIND, Endpoint, ServeError, check_served_folder, launch, read_endpoint,
                                      serve_dir, served_names, stop_server)


def plan(run_dirs: Sequence[Path]) -> tuple[str, list[tuple[str, str]]]:
    """(base model path, [(served name, adapter dir)]) for the runs; ServeError naming the run otherwise."""
    if len(run_dirs) < 1:
        raise ServeError("MODEL=adapters needs RUNS=a,b (one or more run ids)")
    base, loras = None, []
    for rd in run_dirs:
        info = runs.read_json(Path(rd) / runs.RUN_JSON)
        adapter = Path(rd) / "adapter"
        cfg_path = adapter / "adapter_config.json"
        if not cfg_path.is_file():
            raise ServeError(f"{adapter}: no adapter; the training of {info['run_id']} did not finish")
        if json.loads(cfg_path.read_text()).get("use_dora"):
            raise ServeError(f"run {info['run_id']} is a DoRA adapter, which vLLM does not serve: "
                             f"serve it merged on its own (`make serve RUN={info['run_id']} MODEL=merged`)")
        if base is not None and info["model_path"] != base:
            raise ServeError(f"run {info['run_id']}: base model {info['model_path']} differs from {base}; "
                             "one server holds adapters of one base model")
        base = info["model_path"]
        loras.append((served_names(info["run_id"])["adapter"], str(adapter)))
    return base, loras


def start(cfg: DictConfig, run_dirs: Sequence[Path]) -> Endpoint:
    base, loras = plan(run_dirs)
    fps = [check_served_folder(cfg, rd, base) for rd in run_dirs]   # each run against the served base
    first = Path(run_dirs[0])
    ep = read_endpoint(first, SHARED_KIND)
    if ep is None:
        info = runs.read_json(first / runs.RUN_JSON)
        ep = launch(cfg, serve_dir(first, SHARED_KIND), SHARED_KIND, base, served_names(info["run_id"])["base"], loras,
                    {"unchecked": "shared by several runs: each run's serve/adapter/endpoint.json holds its own"})
    shared = runs.read_json(serve_dir(first, SHARED_KIND) / "endpoint.json")
    for rd, (name, _path), fp in zip(run_dirs, loras, fps):
        runs.write_json_atomic(serve_dir(rd, "adapter") / "endpoint.json",
                               {**shared, "model": name, "kind": "adapter", "fingerprints": fp,
                                "shared_with": str(serve_dir(first, SHARED_KIND))})
    return ep


def stop(run_dirs: Sequence[Path]) -> bool:
    """Stop the shared server (the first run's PID file) and remove every run's pointer to it."""
    stopped = stop_server(Path(run_dirs[0]), SHARED_KIND)
    for rd in run_dirs:
        path = serve_dir(rd, "adapter") / "endpoint.json"
        if path.is_file() and runs.read_json(path).get("shared_with"):
            path.unlink()
    return stopped
