"""Run folders: `results/<run_id>/`, never overwritten, and the `results/latest` pointer.

Every file is written atomically (a temp file in the same folder, then os.replace), so an
interrupted stage never leaves a half-written result that a later stage would trust.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.core.procs import process_alive

RUN_JSON = "run.json"
LATEST = "latest"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunError(ValueError):
    """A run folder problem; the message names the folder or file."""


class StageIncomplete(RuntimeError):
    """A stage ran but did not finish its work (requests failed, the server went away).

    Its results so far are on disk and run.json records the stage as `status` ("partial" when
    some work was done, "failed" when none) with `counts`; the message says what failed, how
    much, and the command that resumes. Raised inside the stage's MLflow run, which therefore
    ends FAILED; the command line exits non-zero and `make all` runs the stage again."""

    def __init__(self, message: str, status: str = "partial", counts: dict | None = None):
        super().__init__(message)
        self.status, self.counts = status, dict(counts or {})


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a result file is as readable as any other
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def new_run_id(method: str, model: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return f"{stamp}-{method}-{model}"


def create_run_dir(results: Path, run_id: str | None, method: str, model: str) -> Path:
    """Make a fresh run folder; an explicit id that already exists is an error, never reused."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    if run_id is not None:
        if not _RUN_ID_RE.match(run_id):
            raise RunError(f"run.id={run_id!r}: use letters, digits, '.', '_' or '-'")
        path = results / run_id
        try:
            path.mkdir()
        except FileExistsError:
            raise RunError(f"run.id={run_id!r}: {path} already exists; runs are never overwritten") from None
        return path
    base = new_run_id(method, model)
    for n in range(1000):
        path = results / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"{results}: could not find a free run id for {base}")


def point_latest(results: Path, run_dir: Path) -> None:
    """Atomically repoint results/latest at run_dir (a relative symlink)."""
    link = Path(results) / LATEST
    tmp = Path(results) / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(run_dir).name)
    os.replace(tmp, link)


def resolve_run(results: Path, run: str | None) -> Path:
    """`None`/"latest" -> the latest run; a run id or a path -> that folder (must hold run.json)."""
    results = Path(results)
    if run in (None, "", LATEST):
        link = results / LATEST
        if not link.exists():
            raise RunError(f"{link}: no run yet; run `make train` first (or pass RUN=<run_id>)")
        path = link.resolve()
    else:
        path = Path(run) if Path(run).is_absolute() or os.sep in run else results / run
    if not (path / RUN_JSON).is_file():
        raise RunError(f"RUN={run}: {path} is not a run folder (no {RUN_JSON})")
    for stage in reconcile(path):
        print(f"[runs] {path.name}: stage {stage} was left running by a process that is gone; marked failed",
              file=sys.stderr)
    return path


def update_run_json(run_dir: Path, **fields: Any) -> dict:
    """Merge fields into run.json (dict values are merged one level deep, e.g. stages)."""
    path = Path(run_dir) / RUN_JSON
    data = read_json(path) if path.exists() else {}
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    write_json_atomic(path, data)
    return data


def owner() -> dict:
    """This process, as recorded beside a running stage: its PID and start time (a reused PID
    belongs to a process that started later)."""
    return {"pid": os.getpid(), "started": _start_ticks(os.getpid())}


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_alive(record: dict | None) -> bool:
    if not record or not record.get("pid"):
        return False
    return process_alive(record["pid"]) and _start_ticks(record["pid"]) == record.get("started")


def record_stage(run_dir: Path, stage: str, status: str, counts: dict | None = None) -> dict:
    """run.json: stages[stage] = status ("running", "done", "partial", "failed"); a running stage
    records its owner (reconcile marks it failed once that process is gone); unless done,
    stage_counts[stage] = what was missing or failed (cleared once the stage is done)."""
    path = Path(run_dir) / RUN_JSON
    info = read_json(path) if path.exists() else {}
    info["stages"] = {**info.get("stages", {}), stage: status}
    owners = {k: v for k, v in info.get("stage_owners", {}).items() if k != stage}
    if status == "running":
        owners[stage] = owner()
    info["stage_owners"] = owners
    tallies = {k: v for k, v in info.get("stage_counts", {}).items() if k != stage}
    if status != "done" and counts is not None:
        tallies[stage] = counts
    info["stage_counts"] = tallies
    write_json_atomic(path, info)
    return info


def run_stage(run_dir: Path, stage: str, fn):
    """fn() with run.json's stages[stage]: running, then done, or partial/failed (with counts)
    when it raises StageIncomplete, failed on any other exception."""
    record_stage(run_dir, stage, "running")
    try:
        result = fn()
    except StageIncomplete as exc:
        record_stage(run_dir, stage, exc.status, exc.counts)
        raise
    except BaseException:
        record_stage(run_dir, stage, "failed")
        raise
    record_stage(run_dir, stage, "done")
    return result


def reconcile(run_dir: Path) -> list[str]:
    """Mark every stage run.json calls running whose owner process is gone (a killed
    orchestrator) as failed, saying so; returns those stages. Called whenever a run is resolved."""
    path = Path(run_dir) / RUN_JSON
    try:
        info = read_json(path)
    except RunError:
        return []
    dead = [stage for stage, status in info.get("stages", {}).items()
            if status == "running" and not owner_alive(info.get("stage_owners", {}).get(stage))]
    for stage in dead:
        gone = info.get("stage_owners", {}).get(stage) or {}
        record_stage(run_dir, stage, "failed", {"reason": f"its process (PID {gone.get('pid', '?')}) ended without "
                                                          "finishing it (killed?)"})
    return dead


def list_runs(results: Path) -> list[dict]:
    """Every run folder's run.json (with its path), oldest first."""
    runs = []
    for p in sorted(Path(results).glob(f"*/{RUN_JSON}")):
        if p.parent.is_symlink():
            continue
        reconcile(p.parent)
        try:
            runs.append({**read_json(p), "path": str(p.parent)})
        except RunError:
            continue
    return sorted(runs, key=lambda r: r.get("created", ""))
