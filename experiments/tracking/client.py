"""MLflow, the one place every stage logs to: SQLite file by default, any tracking URI by config.

The same calls work against `sqlite:///results/mlflow.db` and `http://host:5000` (a team
server, artifacts proxied through it): the difference is `tracking.uri`, not code.
"""
from __future__ import annotations

import math
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

STAGE_TAG = "stage"

# MLflow's client retries a refused connection 7 times with exponential backoff: minutes per call
# (measured: after the server died, a 20-step CPU training spent 17 min in retries, then crashed
# in on_train_end before saving its adapter). Give up within seconds instead; the run folder keeps
# every result and `make sync` logs it later. A value already in the environment wins.
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used; the message names the URI."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail at once, naming the URI, when an HTTP tracking server does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return
            raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(exc, 'reason', exc)}); "
            "start it (`make tracking-server`) or choose another store (tracking=sqlite / TRACKING_URI=...)"
        ) from None


def client_for(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    for key, value in HTTP_ENV_DEFAULTS.items():  # read per request; inherited by the engines we start
        os.environ.setdefault(key, value)

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)  # for code paths that use the fluent API (transformers' callback)
    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = client._tracking_client.tracking_uri
    # A local store needs an explicit artifact root (else ./mlruns of the cwd); a server proxies its own.
    location = None
    if artifact_location and not uri.startswith(("http://", "https://")):
        Path(artifact_location).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_location).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another stage
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """One MLflow run of one stage. Use as a context manager: an exception marks it FAILED."""

    def __init__(self, tracking_cfg: Mapping[str, Any], run_name: str, tags: Mapping[str, Any],
                 resume_run_id: str | None = None):
        """A new run, or (resume_run_id) the existing run of an interrupted stage, RUNNING again."""
        self.uri = str(tracking_cfg["uri"])
        check_reachable(self.uri)
        if resume_run_id:
            try:
                self.client = client_for(self.uri)
                self.client.update_run(resume_run_id, status="RUNNING")
            except Exception as exc:
                raise TrackingError(f"MLflow tracking store {self.uri}: cannot reopen run {resume_run_id}: {exc}") from None
            self.run_id = resume_run_id
            return
        try:
            self.client = client_for(self.uri)
            self.experiment_id = get_or_create_experiment(
                self.client, str(tracking_cfg["experiment"]), tracking_cfg.get("artifact_location")
            )
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={k: str(v) for k, v in tags.items() if v is not None},
            )
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(f"MLflow tracking store {self.uri}: {exc}") from None
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items() if v is not None]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for p in paths:
            p = Path(p)
            if p.is_dir():
                self.client.log_artifacts(self.run_id, str(p), artifact_path=artifact_path)
            elif p.exists():
                self.client.log_artifact(self.run_id, str(p), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = client_for(uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def guard_mlflow_callbacks(trainer) -> None:
    """Keep a tracking outage from killing a training (runs in the train env, from an Axolotl plugin).

    transformers' MLflowCallback raises when the server is gone, at the latest in on_train_end,
    before the adapter is saved. Each Trainer callback that talks to MLflow instead warns once,
    naming the URI, and goes quiet; train_log.jsonl keeps the history for `make sync`.
    """
    for cb in trainer.callback_handler.callbacks:
        if "mlflow" in type(cb).__name__.lower():
            _quiet_on_failure(cb, run=Path(str(trainer.args.output_dir)).parent.name)


def _quiet_on_failure(cb, run: str) -> None:
    failed = []

    def wrap(name, method):
        def guarded(*args, **kwargs):
            if failed:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                failed.append(exc)
                if hasattr(cb, "_auto_end_run"):
                    cb._auto_end_run = False  # its __del__ would try (and retry) once more
                uri = os.environ.get("MLFLOW_TRACKING_URI", "?")
                print(f"[tracking] MLflow tracking server {uri} failed in {type(cb).__name__}.{name} ({exc}); "
                      "training goes on without it. The run folder keeps the results; log them later with "
                      f"`make sync RUN={run} TRACKING_URI={uri}`", file=sys.stderr, flush=True)
                return None
        return guarded

    for name in dir(type(cb)):
        if name.startswith("on_"):
            setattr(cb, name, wrap(name, getattr(cb, name)))
