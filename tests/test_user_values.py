"""User values (ARGS, RUN, ENDPOINT, CONC, ...) reach Python as data, never as shell code, and
bad ones fail in seconds with one line naming the value, before anything is created."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, make

PAYLOADS = {
    "semicolon": "run.id=x;touch {f}",
    "command substitution": "run.id=$(touch {f})",
    "backticks": "run.id=`touch {f}`",
    "make function": "run.id=$(shell touch {f})",
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_args_with_shell_syntax_are_inert(kind, tmp_path):
    marker = tmp_path / "touched"
    results = tmp_path / "results"
    started = time.monotonic()
    proc = make("train", "METHOD=dora", f"ARGS={PAYLOADS[kind].format(f=marker)}",
                env={"RESULTS_DIR": str(results)}, check=False, timeout=300)
    elapsed = time.monotonic() - started
    assert not marker.exists(), f"{kind}: the shell ran it"
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.strip().splitlines() if not line.startswith("make: ***")]
    last = ours[-1]
    assert len(ours) == 1 and last.startswith("[train] error:") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not results.exists() or not any(results.glob("*/run.json")), "a run folder was created"
    print(f"{kind}: exit {proc.returncode} in {elapsed:.1f} s: {last[:160]}")


def test_other_user_values_are_inert(tmp_path):
    marker = tmp_path / "touched"
    proc = make("eval", f"RUN=x;touch {marker}", f"ENDPOINT=http://127.0.0.1:1/v1`touch {marker}`",
                env={"RESULTS_DIR": str(tmp_path / "results")}, check=False, timeout=300)
    assert not marker.exists() and proc.returncode != 0
    ours = [line for line in proc.stderr.strip().splitlines() if not line.startswith("make: ***")]
    assert len(ours) == 1 and ours[0].startswith("[eval] error:"), proc.stderr[-2000:]


def test_args_split_like_a_shell_word_list():
    from experiments.core.argv import user_args

    assert user_args("a=1  b='x y' c=\"$(z)\"") == ["a=1", "b=x y", "c=$(z)"]
    with pytest.raises(SystemExit, match="ARGS="):
        user_args("a='unbalanced")
