"""Team tracking for real: `make tracking-server` starts PostgreSQL + an MLflow server, a short CPU
training with TRACKING=postgres is read back through MLflow's REST API and found in PostgreSQL's
own tables, `make sync` re-creates it from the run folder, and with the server stopped a stage
fails fast naming the URI while the run folder keeps its results.

One server (PostgreSQL + MLflow) and one training for the whole module; the tests run in order.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SHORT_TRAIN, hydra_args, make, read_json

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
pytestmark = pytest.mark.skipif(
    not PG_BINS or not Path(PG_BINS[-1], "initdb").exists(),
    reason="PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb) are not installed: "
           "apt-get install postgresql (.ci/run does)")
RUN_ID = "test-postgres-dora"


def free_ports(n: int, lo: int = 5450, hi: int = 5500) -> list[int]:
    """n free loopback ports in this project's test range."""
    found = []
    for port in range(lo, hi):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"no {n} free ports in {lo}-{hi}")


def rest(uri: str, endpoint: str, body: dict | None = None, **query):
    """MLflow's REST API, as any client would use it (GET with a query, POST with JSON)."""
    url = f"{uri}/api/2.0/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    return raw if endpoint.startswith("mlflow-artifacts/") else json.loads(raw)


def alive(pid: int | None) -> bool:
    """Running (a zombie left for PID 1 to reap does not count)."""
    try:
        return bool(pid) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(results_dir):
    # A folder the postgres user can reach (pytest's own tmp folders are private to root).
    folder = Path(tempfile.mkdtemp(prefix="tracking-", dir="/tmp"))
    folder.chmod(0o755)
    port, pg_port = free_ports(2)
    uri = f"http://127.0.0.1:{port}"
    overrides = [f"tracking.server.dir={folder}", f"tracking.server.port={port}",
                 f"tracking.server.postgres.port={pg_port}", f"tracking.uri={uri}"]
    t0 = time.time()
    make("tracking-server", hydra_args(*overrides), timeout=300)
    print(f"make tracking-server: {time.time() - t0:.1f} s")
    try:
        yield SimpleNamespace(uri=uri, port=port, pg_port=pg_port, dir=folder, overrides=overrides,
                              state=read_json(folder / "server.json"))
    finally:
        make("tracking-stop", hydra_args(*overrides), check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_run(server, results_dir) -> Path:
    """One short real training, tracked through the server."""
    make("train", "METHOD=dora", "TRACKING=postgres", hydra_args(f"run.id={RUN_ID}", *server.overrides, *SHORT_TRAIN))
    return results_dir / RUN_ID


def psql(server, sql: str) -> list[list[str]]:
    """A query in PostgreSQL itself, over TCP with the credentials the server was started with."""
    creds = dict(line.split("=", 1) for line in (server.dir / "credentials.env").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    proc = subprocess.run([f"{PG_BINS[-1]}/psql", "-X", "-A", "-t", "-F", "|", "-h", "127.0.0.1", "-p", str(server.pg_port),
                           "-U", creds["TRACKING_DB_USER"], "-d", "mlflow", "-c", sql],
                          capture_output=True, text=True, env={**os.environ, "PGPASSWORD": creds["TRACKING_DB_PASSWORD"]},
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line.split("|") for line in proc.stdout.splitlines() if line]


def test_server_is_local_recorded_and_idempotent(server):
    state = server.state
    assert alive(state["mlflow"]["pid"]) and alive(state["postgres"]["pid"])
    assert Path(state["mlflow"]["log"]).exists() and Path(state["postgres"]["data"], "PG_VERSION").exists()
    assert Path(state["postgres"]["data"]).is_relative_to(server.dir)
    assert psql(server, "SHOW listen_addresses") == [["127.0.0.1"]]
    # The generated password is private and git-ignored (results/ is), never committed.
    assert (server.dir / "credentials.env").stat().st_mode & 0o077 == 0
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/tracking-server/credentials.env"],
                             cwd=Path(__file__).resolve().parent.parent)
    assert ignored.returncode == 0
    again = make("tracking-server", hydra_args(*server.overrides))
    assert "already running" in again.stdout and read_json(server.dir / "server.json")["mlflow"]["pid"] == state["mlflow"]["pid"]


def test_training_is_logged_through_the_server(server, pg_run):
    info = read_json(pg_run / "run.json")
    assert info["stages"]["train"] == "done" and info["mlflow"]["tracking_uri"] == server.uri
    metrics = read_json(pg_run / "train_metrics.json")
    run_id = info["mlflow"]["train_run_id"]

    run = rest(server.uri, "mlflow/runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["method"] == "dora" and params["cfg.peft_use_dora"] == "True" and int(params["cfg.lora_r"]) > 0
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["stage"] == "train" and tags["training_run"] == RUN_ID

    history = rest(server.uri, "mlflow/metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
    assert [(m["step"], m["value"]) for m in sorted(history, key=lambda m: m["step"])] == \
        [tuple(p) for p in metrics["loss_curve"]]

    # Artifacts went through the server (the client never saw the store) and come back intact.
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    listed = {f["path"] for f in rest(server.uri, "mlflow/artifacts/list", run_id=run_id)["files"]}
    assert {"axolotl.yaml", "config.yaml", "train_metrics.json"} <= listed
    root = run["info"]["artifact_uri"][len("mlflow-artifacts:/"):]
    body = rest(server.uri, f"mlflow-artifacts/artifacts/{root}/train_metrics.json")
    assert json.loads(body) == metrics
    assert list(server.dir.glob(f"artifacts/**/{run_id}/artifacts/axolotl.yaml"))

    # And in PostgreSQL itself.
    assert psql(server, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == [["FINISHED"]]
    assert psql(server, f"SELECT value FROM tags WHERE run_uuid = '{run_id}' AND key = 'training_run'") == [[RUN_ID]]
    rows = psql(server, f"SELECT step, value FROM metrics WHERE run_uuid = '{run_id}' AND key = 'loss' ORDER BY step")
    assert [int(s) for s, _ in rows] == [s for s, _ in metrics["loss_curve"]]
    assert [float(v) for _, v in rows] == pytest.approx([v for _, v in metrics["loss_curve"]])
    assert psql(server, f"SELECT value FROM params WHERE run_uuid = '{run_id}' AND key = 'method'") == [["dora"]]


def test_sync_recreates_the_run_from_its_folder(server, pg_run):
    original = read_json(pg_run / "run.json")["mlflow"]["train_run_id"]
    sync_args = ("sync", f"RUN={RUN_ID}", "TRACKING=postgres", hydra_args(*server.overrides))
    refused = make(*sync_args, check=False)
    assert refused.returncode != 0 and "already logged" in refused.stderr and original in refused.stderr

    make(*sync_args, "FORCE=1")
    copy = read_json(pg_run / "run.json")["mlflow"]["train_run_id"]
    assert copy != original  # run.json now points at the re-created run
    a = rest(server.uri, "mlflow/runs/get", run_id=original)["run"]
    b = rest(server.uri, "mlflow/runs/get", run_id=copy)["run"]
    assert b["info"]["status"] == "FINISHED"
    ours = {p["key"]: p["value"] for p in b["data"]["params"]}
    live = {p["key"]: p["value"] for p in a["data"]["params"]}
    assert ours and all(live[k] == v for k, v in ours.items())
    for key in ("loss", "eval_loss"):
        ha, hb = (sorted((m["step"], m["value"]) for m in rest(server.uri, "mlflow/metrics/get-history", run_id=r,
                                                                 metric_key=key)["metrics"]) for r in (original, copy))
        assert hb and ha == hb
    files = lambda r: {f["path"] for f in rest(server.uri, "mlflow/artifacts/list", run_id=r)["files"]}
    assert files(copy) == files(original)
    assert {t["key"]: t["value"] for t in b["data"]["tags"]}["synced_from"] == str(pg_run)


def test_stage_fails_fast_when_the_server_is_down(server, pg_run, results_dir):
    make("tracking-stop", hydra_args(*server.overrides))
    state = server.state
    assert not alive(state["mlflow"]["pid"]) and not alive(state["postgres"]["pid"])
    assert not any(alive(p) for p in _group(state["mlflow"]["pgid"]))

    t0 = time.time()
    proc = make("train", "METHOD=dora", "TRACKING=postgres",
                hydra_args("run.id=test-postgres-down", *server.overrides, *SHORT_TRAIN), check=False)
    elapsed = time.time() - t0
    assert proc.returncode != 0 and server.uri in proc.stderr and "unreachable" in proc.stderr
    assert elapsed < 30, f"took {elapsed:.1f} s to notice the server is down"
    assert not (results_dir / "test-postgres-down").exists()
    # What the run folder holds does not depend on the server.
    for name in ("adapter/adapter_model.safetensors", "adapter/train_log.jsonl", "train_metrics.json", "run.json"):
        assert (pg_run / name).exists(), name
    down = make("sync", f"RUN={RUN_ID}", "TRACKING=postgres", hydra_args(*server.overrides), check=False)
    assert down.returncode != 0 and server.uri in down.stderr

    # Started again: the runs are still there (PostgreSQL's data folder persists).
    make("tracking-server", hydra_args(*server.overrides), timeout=300)
    run_id = read_json(pg_run / "run.json")["mlflow"]["train_run_id"]
    assert rest(server.uri, "mlflow/runs/get", run_id=run_id)["run"]["info"]["status"] == "FINISHED"


def _group(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return [p for p in out if alive(p)]
