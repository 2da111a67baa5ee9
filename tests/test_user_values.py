"""User values (ARGS, RUN, ENDPOINT, CONC, ...) reach Python as data, never as shell code, and
bad ones fail in seconds with one line naming the value, before anything is created."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, fake_run, make

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
    ours = [line for line in proc.stderr.strip().splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    last = ours[-1]
    assert len(ours) == 1 and last.startswith("[train] error:") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not results.exists() or not any(results.glob("*/run.json")), "a run folder was created"
    print(f"{kind}: exit {proc.returncode} in {elapsed:.1f} s: {last[:160]}")


def test_other_user_values_are_inert(tmp_path):
    marker = tmp_path / "touched"
    proc = make("eval", f"RUN=x;touch {marker}", f"ENDPOINT=http://127.0.0.1:1/v1`touch {marker}`",
                env={"RESULTS_DIR": str(tmp_path / "results")}, check=False, timeout=300)
    assert not marker.exists() and proc.returncode != 0
    ours = [line for line in proc.stderr.strip().splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(ours) == 1 and ours[0].startswith("[eval] error:"), proc.stderr[-2000:]


def test_args_split_like_a_shell_word_list():
    from experiments.core.argv import user_args

    assert user_args("a=1  b='x y' c=\"$(z)\"") == ["a=1", "b=x y", "c=$(z)"]
    with pytest.raises(SystemExit, match="ARGS="):
        user_args("a='unbalanced")


# --- bad input fails fast: one line naming the key, file or line; nothing left behind --------------

def _fails_fast(target: str, *args: str, results: Path) -> tuple[str, float]:
    started = time.monotonic()
    proc = make(target, *args, env={"RESULTS_DIR": str(results)}, check=False, timeout=600)
    elapsed = time.monotonic() - started
    ours = [line for line in proc.stderr.strip().splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert proc.returncode == 2 and len(ours) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    print(f"{target} {' '.join(args)}: {elapsed:.1f} s: {ours[0][:200]}")
    return ours[0], elapsed


def _no_run_left(results: Path) -> bool:
    return not any(results.glob("*/run.json")) and not (results / "mlflow.db").exists()


@pytest.mark.parametrize("case", ["missing", "malformed", "empty", "wrong_schema"])
def test_bad_data_files_fail_before_any_run_exists(case, tmp_path):
    results, data = tmp_path / "results", tmp_path / "data.jsonl"
    good = (REPO / "data" / "toolace_sample.jsonl").read_text().splitlines()[:2]
    content = {"malformed": "\n".join(good + ['{"system": "x", "conversations": [']) + "\n",
               "empty": "", "wrong_schema": '{"foo": 1}\n{"bar": 2}\n'}
    if case != "missing":
        data.write_text(content[case])
    line, _ = _fails_fast("train", "METHOD=dora", f"ARGS=data.path={data}", results=results)
    assert str(data) in line
    if case == "malformed":
        assert f"{data}:3:" in line
    if case in ("empty", "wrong_schema"):
        reports = list((results / "data_reports").glob("*.json"))
        assert len(reports) == 1 and str(reports[0]) in line
        assert ("is empty" if case == "empty" else "none converted") in line
        assert json.loads(reports[0].read_text())["rows_in"] == (0 if case == "empty" else 2)
    assert _no_run_left(results)


@pytest.fixture
def results_with_run(tmp_path):
    fake_run(tmp_path / "results")
    return tmp_path / "results"


@pytest.mark.parametrize("value, key", [("CONC=0", "bench.concurrency"), ("CONC=abc", "bench.concurrency"),
                                        ("RATE=-1", "bench.rate")])
def test_bad_load_levels_fail_before_any_server(value, key, results_with_run):
    line, elapsed = _fails_fast("bench", "RUN=r1", value, results=results_with_run)
    assert value in line and key in line
    assert not (results_with_run / "r1" / "serve").exists() and not (results_with_run / "mlflow.db").exists()


@pytest.mark.parametrize("target", ["eval", "bench"])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:1/v1", "127.0.0.1:8000/v1"])
def test_a_bad_endpoint_is_one_line(target, endpoint, results_with_run):
    line, _ = _fails_fast(target, "RUN=r1", f"ENDPOINT={endpoint}", results=results_with_run)
    assert f"ENDPOINT={endpoint}" in line and not (results_with_run / "mlflow.db").exists()


def test_make_help_writes_no_colour_codes_into_a_pipe():
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "\033" not in proc.stdout
