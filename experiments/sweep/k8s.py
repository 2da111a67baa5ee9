"""`make k8s SWEEP=<name>`: a sweep as one Kubernetes indexed Job over its grid, strictly validated.

Completion index i is point i: each pod runs `make sweep SWEEP=<name> SWEEP_ID=<id> POINT=<i>`, the
same code as a local sweep (train, then checkpoint BFCL / bench as the sweep file asks), on the shared
claim, so `make report SWEEP=<id>` anywhere on that claim reports the whole grid. A point that fails
is retried on its own (`backoffLimitPerIndex`) and does not fail the others. Every point must fit the
same pod: swept values may not change the launcher or the profile (GPUs, nodes, image resources).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from experiments.cluster.k8s import (K8sError, _common_env, _container, _labels, _meta, _pod_spec, _resources, _volumes,
                                     compose_for_cluster, dns_name, make_argv, pvc, split_overrides, to_yaml, validate)
from experiments.core import runs
from experiments.core.config import ConfigError
from experiments.sweep import run as sweeping
from experiments.sweep.grid import SweepError
from experiments.train.axolotl_config import CombinationError, build_axolotl_config
from experiments.train.launcher import check_launcher


def check_points(plan: dict) -> None:
    """Every point fits one pod template and passes what `make train` would check first."""
    shapes = {(c.profile.name, c.launcher.name, int(c.launcher.gpus), int(c.launcher.nnodes)) for c in plan["configs"]}
    if len(shapes) > 1:
        raise K8sError(f"sweep {plan['id']}: points differ in profile/launcher/GPUs/nodes {sorted(shapes)}; "
                       "one indexed Job needs one pod shape (sweep those in separate sweeps)")
    (_, _, _, nnodes), = shapes
    if nnodes > 1:
        raise K8sError(f"sweep {plan['id']}: launcher.nnodes={nnodes}; a sweep point is one pod (multi-node "
                       "runs: `make k8s` per run)")
    for i, c in enumerate(plan["configs"]):
        check_launcher(c)
        rid = sweeping.grid.run_id(plan["id"], i)
        run_dir = Path(str(c.paths.results)) / rid
        try:
            build_axolotl_config(c, run_dir=run_dir, dataset_path=run_dir / "data" / "train.jsonl", mlflow_run_name=rid)
        except CombinationError as exc:
            raise K8sError(f"point {i} ({' '.join(plan['points'][i])}): {exc}") from None


def sweep_job(cfg: DictConfig, plan: dict, sweep: str | None, overrides: Sequence[str]) -> dict:
    """The indexed Job: completions = points; the completion index is passed as POINT."""
    base = dns_name(f"sweep-{plan['id']}")
    labels = _labels(cfg, base, plan["id"], "sweep")
    labels["experiments/sweep-id"] = labels.pop("experiments/run-id")
    make_vars, rest = split_overrides(overrides)
    if "METHOD" in make_vars:  # `make sweep` reads the method from ARGS (it may be a swept dimension)
        rest = [f"method={make_vars.pop('METHOD')}", *rest]
    variables = {**make_vars, "PROFILE": cfg.profile.name, "SWEEP_ID": plan["id"], "POINT": "$(SWEEP_POINT)"}
    if sweep:
        variables["SWEEP"] = sweep
    ln = cfg.launcher
    gpus = int(ln.gpus)
    volumes, mounts = _volumes(cfg, ln.resources.shm_gib)
    env = _common_env(cfg) + [{"name": "SWEEP_POINT", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    resources = _resources(cfg, gpus, gpus * ln.resources.cpu_per_gpu, gpus * ln.resources.memory_gib_per_gpu)
    container = _container(cfg, "point", make_argv("sweep", variables, rest), env, mounts, resources)
    s = cfg.k8s.sweep
    n = len(plan["points"])
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, base, labels), "spec": {
        "completionMode": "Indexed", "completions": n, "parallelism": min(n, int(s.parallelism)),
        "backoffLimitPerIndex": int(s.backoff_limit_per_index), "maxFailedIndexes": n,
        "ttlSecondsAfterFinished": int(cfg.k8s.train.ttl_seconds_after_finished),
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(cfg, [container], volumes, restart="Never", gpu=True)}}}


def render(sweep: str | None, overrides: Sequence[str], sweep_id: str | None = None,
           max_points: int | None = None) -> tuple[DictConfig, dict, dict[str, list[dict]]]:
    plan = sweeping.build(sweep, overrides, sweep_id, max_points)
    check_points(plan)
    cfg = compose_for_cluster([*plan["fixed"], *plan["points"][0]])
    return cfg, plan, {"00-storage.yaml": [pvc(cfg)], "10-sweep.yaml": [sweep_job(cfg, plan, sweep, overrides)]}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Kubernetes indexed Job over a sweep's grid")
    ap.add_argument("--sweep", default=None)
    ap.add_argument("--id", default=None)
    ap.add_argument("--max-points", type=int, default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg, plan, files = render(args.sweep, args.overrides, args.id, args.max_points)
        for docs in files.values():
            for doc in docs:
                validate(doc, str(cfg.k8s.kubernetes_version))
        out = Path(cfg.k8s.out_dir) / f"sweep-{plan['id']}"
        for name, docs in files.items():
            runs.write_text_atomic(out / name, to_yaml(docs))
        print(f"[k8s] sweep {plan['id']}: indexed Job of {len(plan['points'])} points "
              f"(parallelism {files['10-sweep.yaml'][0]['spec']['parallelism']}), valid against Kubernetes "
              f"{cfg.k8s.kubernetes_version} (strict)")
        print(f"[k8s] wrote {out}/  ->  kubectl apply -f {shlex.quote(str(out))}/; then `make report SWEEP={plan['id']}` "
              "on the claim")
    except (SweepError, ConfigError, K8sError, runs.RunError, ValueError) as exc:
        print(f"[k8s] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
