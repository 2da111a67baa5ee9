"""Shared fixtures. Tests drive the real entry points (`make ...`) in a private results folder,
train each method at most once per session and share one vLLM server per model kind."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
TRAIN_PY = VENV / "train" / "bin" / "python"
SERVE_PY = VENV / "serve" / "bin" / "python"
# Short trainings: enough steps for an eval, a checkpoint and a loss curve.
SHORT_TRAIN = ["axolotl.max_steps=6", "axolotl.eval_steps=3", "axolotl.save_steps=3", "axolotl.warmup_steps=1"]
# The session's trainings (trained_run) share one comparison id, as `make compare` would give them.
SESSION_COMPARISON = "test-session"


def train_env_json(script: str, *args: str, timeout: float = 900) -> dict:
    """Run a Python script in the train env (repo importable, offline) and return the JSON of its
    last stdout line; skips when the env is missing (TRAIN_PYTHON points at another one)."""
    python = Path(os.environ.get("TRAIN_PYTHON", str(TRAIN_PY)))
    if not python.exists():
        pytest.skip(f"train env interpreter not found at {python} (set TRAIN_PYTHON or build .venv/train)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stub_server(*args: str, key: str | None = None):
    """experiments.bench.stub_server on a free port with these options (its flags, e.g.
    --die-after, --api-key, --max-concurrent); key: the bearer key the readiness probe sends.
    Yields (url, process); stops it (a --die-after stub may already be gone)."""
    import sys
    import time

    from experiments.core.procs import healthy

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "experiments.bench.stub_server", "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"} if key else None
    try:
        for _ in range(300):
            if healthy(url, timeout_s=1, headers=headers):
                break
            if proc.poll() is not None:
                pytest.fail(f"stub server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def make(*args: str, env: dict | None = None, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a make target of this repository; on unexpected failure show its output."""
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def hydra_args(*overrides: str) -> str:
    return "ARGS=" + " ".join(overrides)


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> Path:
    """Every run of the session lands here (RESULTS_DIR is read by conf/config.yaml)."""
    path = tmp_path_factory.mktemp("results")
    os.environ["RESULTS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def trained_run(results_dir):
    """trained_run(method) -> run folder; each method is trained once per session, for real."""
    cache: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in cache:
            run_id = f"test-{method}"
            make("train", f"METHOD={method}", hydra_args(f"run.id={run_id}", f"run.comparison={SESSION_COMPARISON}", *SHORT_TRAIN))
            cache[method] = results_dir / run_id
        return cache[method]

    return get


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def start_server(run: Path, kind: str) -> dict:
    """`make serve` for (run, kind) on a free port; returns endpoint.json."""
    make("serve", f"RUN={run.name}", f"MODEL={kind}", hydra_args(f"serve.port={free_port()}"))
    return read_json(run / "serve" / kind / "endpoint.json")


def stop_server(run: Path, kind: str) -> None:
    make("stop", f"RUN={run.name}", f"MODEL={kind}", check=False)


def merge_once(run: Path) -> Path:
    """`make merge` a run unless its merged/ exists already."""
    if not (run / "merged" / "config.json").exists():
        make("merge", f"RUN={run.name}")
    return run


@pytest.fixture(scope="session")
def merged_run(trained_run) -> Path:
    """A DoRA run merged with `make merge` (once per session)."""
    return merge_once(trained_run("dora"))


@pytest.fixture(scope="session")
def merged_server(merged_run):
    """One vLLM server on the merged tiny model for the whole session, stopped even on failure."""
    endpoint = start_server(merged_run, "merged")
    try:
        yield endpoint
    finally:
        stop_server(merged_run, "merged")


def whitespace_bias(model_dir: Path) -> dict[str, int]:
    """logit_bias that forbids pure-whitespace tokens. The constrained grammar of a named tool
    allows any whitespace between JSON fields, and random weights happily emit it until
    max_tokens; without it the call is complete after a few tokens."""
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return {str(i): -100 for tok, i in vocab.items() if tok and set(tok) <= set(" \n\t\rĠĊĉč")}


def fake_run(results: Path, run_id: str = "r1") -> Path:
    """A run folder whose training is done (for stages pointed at ENDPOINT=, which need no model)."""
    run = Path(results) / run_id
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "stages": {"train": "done"}}))
    return run


def stage_cli(module: str, run: Path, endpoint: str, overrides: list[str], **env: str) -> subprocess.CompletedProcess:
    """`python -m <stage module> --run <run> --endpoint <endpoint> <overrides>` with RESULTS_DIR
    = the run's parent; VLLM_API_KEY only when given in env."""
    full = {**os.environ, "RESULTS_DIR": str(run.parent), "PYTHONPATH": str(REPO), **env}
    if "VLLM_API_KEY" not in env:
        full.pop("VLLM_API_KEY", None)
    return subprocess.run([sys.executable, "-m", module, "--run", run.name, "--endpoint", endpoint, *overrides],
                          cwd=REPO, env=full, capture_output=True, text=True)


def mlflow_statuses(results: Path) -> list[str]:
    """Statuses of the default experiment's runs in RESULTS_DIR's SQLite store, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results}/mlflow.db")
    exp = client.get_experiment_by_name("tool-calling-ft")
    return [r.info.status for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])]

# ---------------------------------------------------------------- BFCL oracle server (tests/test_bfcl*.py)

_handed_out: set[int] = set()


def _free_port() -> int:
    """A free port in this project's test range; never the same twice (servers bind late)."""
    for port in range(8200, 8300):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port in 8200-8299")


class OracleServer:
    """experiments.bfcl.oracle_server in a subprocess, indexing the seeded quick ids (K per category)."""

    def __init__(self, tmp: Path, *flags: str, k: int = 5, seed: int = 0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BFCL_PROJECT_ROOT": str(tmp), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "experiments.bfcl.oracle_server", "--port", str(self.port),
             "--per-category", str(k), "--seed", str(seed), *flags],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oracle server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                if self.proc.poll() is None:  # answered by our process, not a stranger
                    return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("oracle server did not start")

    def stats(self, model: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as r:
            return json.load(r).get(model, {"requests": 0, "by_id": {}, "injected_failures": 0,
                                            "ambiguous": 0, "unmatched": 0})

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
