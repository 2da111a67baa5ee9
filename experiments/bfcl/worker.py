"""The bfcl-eval side of an evaluation: one process per evaluation folder.

    BFCL_PROJECT_ROOT=<out> OPENAI_BASE_URL=... OPENAI_API_KEY=... \
        python -m experiments.bfcl.worker <out>/bfcl_job.json

bfcl-eval fixes its result/score paths from BFCL_PROJECT_ROOT when first imported, so each
evaluation folder needs its own process (experiments.bfcl.run starts it). Here we only register
our model and call bfcl-eval's own `generate` and `evaluate` commands; everything that scores
is bfcl-eval's. We add one observation: the leaderboard rows bfcl-eval computes (before it
rounds them into its CSVs), captured at the call that writes each CSV.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from experiments.bfcl import spec
from experiments.bfcl.tables import IDS_FILE, META_FILE
from experiments.core.runs import write_json_atomic


SERVER_GONE = "server unreachable"  # the start of every answer the breaker refused to request


class ServerGone(RuntimeError):
    pass


class Breaker:
    """Stop asking a server that is gone. After a request fails with a connection error (the
    OpenAI client's own retries spent), probe the server's /health `probes` times, `interval_s`
    apart; when none answers, every later request fails at once (bfcl records each as an
    inference error, which the next run retries) instead of spending its retries."""

    def __init__(self, root_url: str, headers: dict, probes: int = 3, interval_s: float = 1.0):
        self.root_url, self.headers = root_url, headers
        self.probes, self.interval_s = probes, interval_s
        self.reason: str | None = None
        self.refused = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.reason is not None:
            with self._lock:
                self.refused += 1
            raise ServerGone(f"{SERVER_GONE}: {self.reason}; not sent")

    def connection_failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.reason is not None:
                return
            for attempt in range(self.probes):
                if self._answers():
                    return
                if attempt + 1 < self.probes:
                    time.sleep(self.interval_s)
            self.reason = (f"{self.root_url} failed a request ({type(exc).__name__}) and then "
                           f"{self.probes} /health probes")
            print(f"[bfcl] {self.reason}: the remaining requests are not sent", file=sys.stderr, flush=True)

    def _answers(self) -> bool:
        """Any HTTP answer below 500 means a server is there (an external one may lack /health)."""
        request = urllib.request.Request(self.root_url + "/health", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except (urllib.error.URLError, OSError):
            return False


def breaker_from_env() -> Breaker:
    base = os.environ["OPENAI_BASE_URL"].rstrip("/")
    key = os.environ.get("OPENAI_API_KEY")
    return Breaker(base[: -len("/v1")] if base.endswith("/v1") else base,
                   {"Authorization": f"Bearer {key}"} if key else {})


PATHS = ("api", "native")


def register(key: str, served_model_name: str, path: str, breaker: Breaker) -> dict:
    """Add our model to bfcl-eval's registry as a function-calling (FC) model; returns the
    handler's class and flags for the audit trail.

    api: bfcl's chat-completions handler, tools in OpenAPI form with "." -> "_" in names (the
    checker maps them back), the server parses the calls. native: the leaderboard's Qwen2.5 FC
    handler on /v1/completions, names kept as they are (underscore_to_dot=False)."""
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING, ModelConfig

    from experiments.bfcl import handlers, qwen25_fc

    handlers.BREAKER = breaker  # in front of every request of either handler
    if path not in PATHS:
        raise SystemExit(f"bfcl path {path!r}: expected one of {PATHS}")
    handler = handlers.LocalChatHandler if path == "api" else handlers.Qwen25FCHandler
    underscore_to_dot = path == "api"
    MODEL_CONFIG_MAPPING[key] = ModelConfig(
        model_name=served_model_name,                 # the `model` field of each request
        display_name=f"{served_model_name} (FC {path})".replace(",", " "),  # bfcl joins CSV cells with ","
        url="", org="local", license="",
        model_handler=handler,
        input_price=None, output_price=None,
        is_fc_model=True,
        underscore_to_dot=underscore_to_dot,
    )
    flags = {"is_fc_model": True, "underscore_to_dot": underscore_to_dot}
    if path == "native":
        flags = {**qwen25_fc.HANDLER_FLAGS, **flags}
    else:
        flags.update(endpoint="/v1/chat/completions", tools="OpenAPI form (bfcl convert_to_tool)",
                     tool_call_parsing="server side")
    return {"class": f"{handler.__module__}.{handler.__qualname__}",
            "base_class": f"{handler.__mro__[1].__module__}.{handler.__mro__[1].__qualname__}",
            "flags": flags}


@contextmanager
def capture_leaderboard():
    """Record the rows bfcl-eval's generate_leaderboard_csv hands to write_score_csv_file, at
    full precision (the CSVs hold them as "12.34%"). Keys: the CSV stems (data_overall, ...)."""
    from bfcl_eval.eval_checker import eval_runner_helper as helper

    captured: dict[str, list[dict]] = {}
    original = helper.write_score_csv_file

    def recording(data, file_path, header, *args, **kwargs):
        captured[Path(file_path).stem] = [dict(zip(header, row)) for row in copy.deepcopy(data)]
        return original(data, file_path, header, *args, **kwargs)

    helper.write_score_csv_file = recording
    try:
        yield captured
    finally:
        helper.write_score_csv_file = original


def _plain(value):
    """numpy scalars (bfcl's latency percentile) -> JSON numbers."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _offered_tools(entry: dict, underscore_to_dot: bool) -> list[str]:
    """Tool names as the request carried them ("." -> "_" on the api path), held-out ones included."""
    functions = list(entry.get("function", []))
    for held_out in (entry.get("missed_function") or {}).values():
        functions.extend(held_out)
    return sorted({f["name"].replace(".", "_") if underscore_to_dot else f["name"] for f in functions})


def data_record(categories: list[str]) -> dict:
    """Which BFCL data scored: bfcl's version prefix and sha256 of each question/answer file used."""
    from bfcl_eval.constants.category_mapping import VERSION_PREFIX
    from bfcl_eval.constants.eval_config import POSSIBLE_ANSWER_PATH, PROMPT_PATH

    from experiments.bfcl.audit import sha256_file

    stems = sorted({"memory" if c.startswith("memory_") else c for c in categories})
    files = {}
    for folder, tag in ((PROMPT_PATH, "question"), (POSSIBLE_ANSWER_PATH, "answer")):
        for stem in stems:
            path = folder / f"{VERSION_PREFIX}_{stem}.json"
            if path.is_file():
                files[f"{tag}/{path.name}"] = sha256_file(path)
    return {"version": VERSION_PREFIX, "files": files}


def _existing_ids(result_dir: Path) -> set[str]:
    ids = set()
    for path in result_dir.rglob("*_result.json"):
        for line in path.read_text().splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return ids


def _clear_scores(score_root: Path, key: str) -> None:
    # Score files are derived; stale ones (other categories) would leak into bfcl's aggregation.
    shutil.rmtree(score_root / key, ignore_errors=True)
    for csv in score_root.glob("data_*.csv"):
        csv.unlink()


def tolerate_single_latency() -> None:
    """bfcl-eval's leaderboard CSV takes statistics.stdev of the latencies it has, which raises
    with fewer than two (a one-item subset, or a rerun that regenerates one item): our verdicts do
    not use that column, so a spread of one point is reported as 0 instead of failing the eval."""
    import statistics

    stdev = statistics.stdev

    def safe_stdev(data, xbar=None):
        data = list(data)
        return 0.0 if len(data) < 2 else stdev(data, xbar)

    statistics.stdev = safe_stdev


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    root = Path(os.environ["BFCL_PROJECT_ROOT"]).resolve()
    key, categories, k = job["model_key"], job["categories"], job["per_category"]
    breaker = breaker_from_env()
    handler = register(key, job["served_model_name"], job["path"], breaker)
    tolerate_single_latency()

    from bfcl_eval.__main__ import cli
    from bfcl_eval.utils import load_dataset_entry

    entries = {c: load_dataset_entry(c) for c in categories}
    plan = {c: spec.quick_ids(c, entries[c], k, job["seed"]) if k else [e["id"] for e in entries[c]]
            for c in categories}
    planned = {i for ids in plan.values() for i in ids}
    if k:
        # A subset is evaluated with --partial-eval, which scores whatever results exist.
        foreign = sorted(i for i in _existing_ids(root / "result" / key)
                         if spec.category_of(i).replace("_prereq", "") in plan and i not in planned)
        if foreign:
            raise SystemExit(f"{root}: holds {len(foreign)} results outside this category set "
                             f"(e.g. {foreign[:3]}); evaluate each category set in its own folder")
        write_json_atomic(root / IDS_FILE, plan)

    common = ["--model", key]
    generate = ["generate", *common, "--temperature", str(job["temperature"]),
                "--num-threads", str(job["num_threads"])]
    generate += ["--run-ids"] if k else ["--test-category", ",".join(categories)]
    generate += ["--skip-server-setup"] if job["path"] == "native" else []
    generate += ["--include-input-log"] if job.get("include_input_log") else []
    evaluate = ["evaluate", *common, "--test-category", ",".join(categories)]
    evaluate += ["--partial-eval"] if k else []

    t0 = time.monotonic()
    cli(generate, standalone_mode=False)
    t1 = time.monotonic()
    _clear_scores(root / "score", key)
    with capture_leaderboard() as leaderboard:
        cli(evaluate, standalone_mode=False)
    t2 = time.monotonic()

    offered = {e["id"]: _offered_tools(e, handler["flags"]["underscore_to_dot"]) for c in categories for e in entries[c]
               if e["id"] in planned and not spec.is_prereq(e["id"])}
    write_json_atomic(root / META_FILE, {
        "bfcl_eval_version": version("bfcl-eval"),
        "model_key": key,
        "handler": handler,
        "data": data_record(categories),
        "commands": {"generate": generate, "evaluate": evaluate},
        "timings_s": {"generate": t1 - t0, "evaluate": t2 - t1},
        "server_unreachable": {"reason": breaker.reason, "requests_not_sent": breaker.refused},
        "plan": plan,
        "offered_tools": offered,
        "leaderboard": {name: [{h: _plain(v) for h, v in row.items()} for row in rows]
                        for name, rows in leaderboard.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
