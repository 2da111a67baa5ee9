"""Run folders: a stage left running by a process that is gone is marked failed on next read."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import REPO
from experiments.core import runs

HOLD = """
import sys, time
from experiments.core import runs
runs.record_stage(sys.argv[1], "train", "running")
print("recorded", flush=True)
time.sleep(600)
"""


def test_a_killed_orchestrator_leaves_a_run_marked_failed_on_next_read(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "r1", "stages": {}}))
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "recorded"
    assert runs.reconcile(run) == []                        # alive: left alone
    assert runs.read_json(run / "run.json")["stages"]["train"] == "running"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert runs.resolve_run(tmp_path, "r1") == run          # any read of the run reconciles it
    info = runs.read_json(run / "run.json")
    assert info["stages"]["train"] == "failed" and str(child.pid) in info["stage_counts"]["train"]["reason"]
    assert "train" not in info["stage_owners"]


def test_a_reused_pid_is_not_mistaken_for_the_owner():
    me = runs.owner()
    assert runs.owner_alive(me)
    assert not runs.owner_alive({**me, "started": (me["started"] or 0) + 1})
    assert not runs.owner_alive(None)


def test_result_files_are_as_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        path = runs.write_text_atomic(tmp_path / "a.txt", "x")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (runs.write_text_atomic(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
