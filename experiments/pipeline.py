"""`make all`: the whole job as one readable script.

    train [-> BFCL per checkpoint] -> merge -> [serve base -> eval base] -> serve -> eval (BFCL + held-out prompts)
          -> bench (load test) -> agree -> stop the server -> report

On this machine the CPU profile runs it on the tiny local model in minutes; on an H100 the same
code runs the real thing. Each stage is skipped when its outputs for the run already exist and
are complete, so rerunning after an interruption resumes where it stopped. A failing stage stops
the chain with its error and the path of its log; earlier results stay where they are.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from experiments.core import runs
from experiments.serve import server as serving
from experiments.core.config import ConfigError, compose


def _done(run_dir: Path, stage: str) -> bool:
    info = runs.read_json(run_dir / runs.RUN_JSON)
    return info.get("stages", {}).get(stage) == "done"


def pick_run(cfg: DictConfig, run: str | None, fresh: bool) -> Path | None:
    """The run to resume: RUN= if given; else the newest run with the same method, model and
    profile (an interrupted `make all`) when its training is done or was interrupted; else None
    (train a new one). Whether its training still has to be resumed: `_done(run, "train")`."""
    results = Path(cfg.paths.results)
    if run:
        return runs.resolve_run(results, run)
    if fresh:
        return None
    same = [r for r in runs.list_runs(results)  # marks a killed training failed
            if (r.get("method"), r.get("model"), r.get("profile")) == (cfg.method.name, cfg.model.name, cfg.profile.name)]
    if not same:
        return None
    newest = Path(same[-1]["path"])
    state = same[-1].get("stages", {}).get("train")
    return newest if state == "done" or (state == "failed" and _resumable(newest)) else None


def _resumable(run_dir: Path) -> bool:
    from experiments.train.stage import last_checkpoint

    return last_checkpoint(run_dir / "adapter") is not None


def run_all(overrides: list[str], run: str | None = None, fresh: bool = False, kind: str = "merged") -> Path:
    # Imported here so `make all --help` stays instant.
    from experiments.agree import stage as agreement
    from experiments.bench import stage as benchmark
    from experiments.bfcl import checkpoints
    from experiments.bfcl import stage as evaluate
    from experiments.train import merge
    from experiments import report
    from experiments.train import stage as train

    cfg = compose(overrides)
    benchmark.levels(cfg)  # a bad CONC/RATE fails now, not after the training
    timings: dict[str, float] = {}

    def stage(name: str, fn, log_hint: str = ""):
        start = time.time()
        print(f"\n===== [{name}] =====", flush=True)
        try:
            result = fn()
        except Exception as exc:
            timings[name] = round(time.time() - start, 1)
            raise PipelineError(name, exc, log_hint) from exc
        timings[name] = round(time.time() - start, 1)
        print(f"===== [{name}] {timings[name]} s", flush=True)
        return result

    # 1. Train (or resume the latest run of this method/model/profile).
    run_dir = pick_run(cfg, run, fresh)
    if run_dir is None:
        run_dir = stage("train", lambda: train.train(overrides), "results/<run>/train.log")
    elif not _done(run_dir, "train"):
        print(f"[all] resuming {run_dir}: its training is {runs.read_json(run_dir / runs.RUN_JSON)['stages'].get('train')}")
        stage("train", lambda: train.resume(str(run_dir), overrides), str(run_dir / "train.log"))
    else:
        print(f"[all] resuming {run_dir} (train done)")
    # 1b. BFCL at every saved checkpoint (train.eval_checkpoints=true), skipped once every one is scored.
    if cfg.train.eval_checkpoints and not checkpoints.is_complete(cfg, run_dir):
        stage("eval-checkpoints", lambda: checkpoints.evaluate_checkpoints(cfg, run_dir), str(run_dir / "bfcl_checkpoints"))
    # 2. Merge the adapter into the base model (skipped once merged/ exists).
    if kind == "merged" and not (run_dir / "merged" / "config.json").exists():
        stage("merge", lambda: merge.merge(run_dir, Path(cfg.paths.venv)), str(run_dir / "merge.log"))
        try:
            merge.record_in_mlflow(run_dir)
        except Exception as exc:
            print(f"[all] warning: merge not recorded in MLflow: {exc}", file=sys.stderr)

    # 3. The untuned baseline (pipeline.baseline), scored first so the tuned summary carries it.
    base = cfg.pipeline.get("baseline")
    if base and base != kind and not evaluate.is_complete(cfg, run_dir, base):
        with contextlib.ExitStack() as stack:
            log = serving.serve_dir(run_dir, base) / "server.log"
            endpoint = stage(f"serve_{base}", lambda: stack.enter_context(serving.server_for(cfg, run_dir, base)), str(log))
            stage(f"eval_{base}", lambda: evaluate.evaluate(cfg, run_dir, base, endpoint), str(run_dir / "bfcl" / base))

    # 4-6. Serve once for eval, bench and agree; the server is stopped even when a stage fails.
    need_eval = not evaluate.is_complete(cfg, run_dir, kind)
    need_bench = not benchmark.is_complete(cfg, run_dir, kind)
    need_agree = bool(cfg.agree.enabled) and not agreement.is_complete(run_dir, kind)
    runs.update_run_json(run_dir, agree={"skipped": None if cfg.agree.enabled else "agree.enabled=false"})
    if need_eval or need_bench or need_agree:
        log = serving.serve_dir(run_dir, kind) / "server.log"
        with contextlib.ExitStack() as stack:  # leaving it stops a server started here
            endpoint = stage("serve", lambda: stack.enter_context(serving.server_for(cfg, run_dir, kind)), str(log))
            if need_eval:
                stage("eval", lambda: evaluate.evaluate(cfg, run_dir, kind, endpoint), str(run_dir / "bfcl" / kind))
            if need_bench:
                stage("bench", lambda: benchmark.bench(cfg, run_dir, kind, endpoint), str(run_dir / "bench" / kind))
            if need_agree:  # training and serving must agree, or the chain stops here
                stage("agree", lambda: agreement.agree(cfg, run_dir, kind, endpoint, adapter_now=False), str(run_dir / "agree.json"))
        if need_agree:  # adapter = merged needs the adapter server: after the merged one has stopped
            stage("agree_adapter", lambda: agreement.finish_adapter(cfg, run_dir), str(run_dir / "agree.json"))
    else:
        print("[all] eval, bench and agree outputs complete: skipped")

    # 6. Report: always regenerated from the files (cheap, never stale).
    path = stage("report", lambda: report.write_report(cfg, run_dir), str(run_dir))
    runs.update_run_json(run_dir, pipeline={"last_timings_s": timings, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"\n[all] done in {sum(timings.values()):.0f} s: {timings}")
    print(f"[all] run folder: {run_dir}\n[all] report:     {path}\n[all] MLflow:     `make ui` then http://127.0.0.1:5000")
    return run_dir


class PipelineError(RuntimeError):
    def __init__(self, stage: str, exc: Exception, log_hint: str):
        super().__init__(f"stage {stage} failed: {exc}" + (f"\n[all] see {log_hint}" if log_hint else ""))
        self.stage = stage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the whole chain for one method")
    ap.add_argument("--run", default=None, help="resume this run id instead of the latest")
    ap.add_argument("--fresh", action="store_true", help="always train a new run")
    ap.add_argument("--model", default="merged", help="the model kind eval and bench use")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    try:
        run_all(args.overrides, run=args.run, fresh=args.fresh, kind=args.model)
    except PipelineError as exc:
        if not isinstance(exc.__cause__, (runs.StageIncomplete, ConfigError, runs.RunError)):
            traceback.print_exception(exc.__cause__, file=sys.stderr, limit=-3)
        print(f"[all] {exc}", file=sys.stderr)
        return 1
    except (ConfigError, runs.RunError) as exc:
        print(f"[all] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
