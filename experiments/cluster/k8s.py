"""Kubernetes manifests for one run, from its composed config (`make k8s`).

Pure core: `render(cfg, overrides, run_id) -> list of manifest dicts`. The pods run the same
`make` targets as a workstation, with the same Hydra overrides, so a cluster run is the local
run on bigger hardware:

  PersistentVolumeClaim   results/ and the model cache (HF_HOME), shared by every run
  Service (headless)      rendezvous for multi-node training: <job>-0.<service> is MASTER_ADDR
  Job (Indexed)           training: one pod per node, NODE_RANK = the completion index,
                          GPUs and resources from the launcher group
  Job                     merge (waits for the training's run.json to say train: done)
  Deployment + Service    vLLM, the serve group's argv; readiness/startup probes on /health
  Job, Job                eval and bench against the Service (wait for /health first)

Secrets (hub token, API key) are `secretKeyRef`s to a Secret created out of band, never values.
The tracking URI is the tracking group's, resolved for the pods' paths.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from experiments.core import runs
from experiments.train.axolotl_config import build_axolotl_config
from experiments.core.config import ConfigError, compose, world_size
from experiments.train.launcher import check_launcher
from experiments.serve.server import served_names, vllm_command

# Overrides that `make` spells as its own variables; the rest travel in ARGS.
MAKE_VARS = {"method": "METHOD", "profile": "PROFILE", "launcher": "LAUNCHER", "launcher.gpus": "GPUS",
             "launcher.nnodes": "NNODES", "launcher.node_rank": "NODE_RANK", "launcher.master_addr": "MASTER_ADDR"}


class K8sError(ValueError):
    """A manifest could not be rendered or failed validation; the message names the object."""


# --------------------------------------------------------------------------- names


def dns_name(text: str, limit: int = 40) -> str:
    """A DNS-1035 label (Service names: lowercase, starts with a letter) from a run id; a short
    hash keeps distinct ids distinct after truncation. Short enough for `<name>-train-<index>`."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if clean == text and len(clean) <= limit and clean[:1].isalpha():
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    clean = clean[: limit - 7].strip("-") or "run"
    return f"{clean if clean[:1].isalpha() else 'r' + clean}-{digest}"[:limit]


def label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return value.strip("-_.") or "none"


# --------------------------------------------------------------------------- commands


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Hydra overrides -> (make variables, the rest for ARGS). k8s.* and run.id are dropped:
    they are about rendering, and run.id is always passed explicitly."""
    make_vars, rest = {}, []
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in MAKE_VARS:
            make_vars[MAKE_VARS[key]] = value
        elif key == "k8s" or key.startswith("k8s.") or key == "run.id":
            continue
        else:
            rest.append(o)
    return make_vars, rest


def make_argv(target: str, variables: dict[str, str], args: Sequence[str]) -> list[str]:
    """`make <target> VAR=value ... ARGS="a=1 b=2"` as an argv (no shell: each item is one word;
    the Makefile hands the values on quoted, and ARGS is split by Python's shlex, so each override
    is shlex-quoted here and arrives as exactly one word)."""
    argv = ["make", "--no-print-directory", target] + [f"{k}={v}" for k, v in variables.items()]
    return argv + ([f"ARGS={shlex.join(args)}"] if args else [])


# --------------------------------------------------------------------------- building blocks


def _labels(cfg: DictConfig, base: str, run_id: str, component: str) -> dict:
    return {"app.kubernetes.io/name": cfg.k8s.app, "app.kubernetes.io/instance": base,
            "app.kubernetes.io/component": component, "experiments/run-id": label_value(run_id)}


def _meta(cfg: DictConfig, name: str, labels: dict) -> dict:
    return {"name": name, "namespace": cfg.k8s.namespace, "labels": labels}


def _secret_env(cfg: DictConfig, name: str, key: str) -> dict:
    # optional: a public model needs no hub token, a keyless server no API key
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": cfg.k8s.secrets.name, "key": key, "optional": True}}}


def _common_env(cfg: DictConfig) -> list[dict]:
    k = cfg.k8s
    return [
        {"name": "RESULTS_DIR", "value": str(cfg.paths.results)},
        {"name": "HF_HOME", "value": f"{k.storage.mount_path}/{k.storage.cache_subpath}"},
        {"name": "TRACKING_URI", "value": str(cfg.tracking.uri)},
        {"name": "MLFLOW_EXPERIMENT", "value": str(cfg.tracking.experiment)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        _secret_env(cfg, "HF_TOKEN", k.secrets.hub_token_key),
        # an MLflow server behind basic auth: the client reads these (never put them in the URI)
        _secret_env(cfg, "MLFLOW_TRACKING_USERNAME", k.secrets.tracking_username_key),
        _secret_env(cfg, "MLFLOW_TRACKING_PASSWORD", k.secrets.tracking_password_key),
    ]


def _volumes(cfg: DictConfig, shm_gib: int | None) -> tuple[list[dict], list[dict]]:
    k = cfg.k8s
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": k.storage.claim}}]
    mounts = [{"name": "data", "mountPath": str(k.storage.mount_path)}]
    if shm_gib:
        # NCCL and dataloader workers use /dev/shm; a container's default is 64 MiB
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{int(shm_gib)}Gi"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _resources(cfg: DictConfig, gpus: int, cpu: int | float, memory_gib: int | float) -> dict:
    amounts = {"cpu": str(cpu), "memory": f"{int(memory_gib)}Gi"}
    if gpus and cfg.profile.accelerator != "cpu":
        amounts[str(cfg.k8s.gpu_resource)] = str(int(gpus))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_spec(cfg: DictConfig, containers: list[dict], volumes: list[dict], *, restart: str,
              init: list[dict] | None = None, gpu: bool = False) -> dict:
    k = cfg.k8s
    spec = {"restartPolicy": restart, "containers": containers, "volumes": volumes}
    if init:
        spec["initContainers"] = init
    gpu = gpu and cfg.profile.accelerator != "cpu"  # GPU node selection only for GPU profiles
    if k.node_selector and gpu:
        spec["nodeSelector"] = OmegaConf.to_container(k.node_selector, resolve=True)
    if k.tolerations and gpu:
        spec["tolerations"] = OmegaConf.to_container(k.tolerations, resolve=True)
    return spec


def _container(cfg: DictConfig, name: str, command: list[str], env: list[dict], mounts: list[dict], resources: dict) -> dict:
    return {"name": name, "image": str(cfg.k8s.image), "imagePullPolicy": str(cfg.k8s.image_pull_policy),
            "workingDir": str(cfg.k8s.workdir), "command": command, "env": env, "volumeMounts": mounts,
            "resources": resources}


def _wait(cfg: DictConfig, what: list[str], mounts: list[dict], env: list[dict] | None = None) -> dict:
    """An init container that blocks until the previous stage is done (scripts/k8s_wait.py)."""
    cmd = [".venv/eval/bin/python", "scripts/k8s_wait.py", *what, "--timeout", str(cfg.k8s.wait_timeout_s)]
    return {"name": "wait", "image": str(cfg.k8s.image), "imagePullPolicy": str(cfg.k8s.image_pull_policy),
            "workingDir": str(cfg.k8s.workdir), "command": cmd, "env": env or [], "volumeMounts": mounts,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}}


# --------------------------------------------------------------------------- manifests


def pvc(cfg: DictConfig) -> dict:
    s = cfg.k8s.storage
    spec = {"accessModes": list(s.access_modes), "resources": {"requests": {"storage": str(s.size)}}}
    if s.storage_class:
        spec["storageClassName"] = str(s.storage_class)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": s.claim, "namespace": cfg.k8s.namespace, "labels": {"app.kubernetes.io/name": cfg.k8s.app}},
            "spec": spec}


def train_objects(cfg: DictConfig, overrides: Sequence[str], run_id: str, base: str) -> list[dict]:
    """Indexed Job, one pod per node (completion index = NODE_RANK), plus its headless Service
    when NNODES > 1: pod <job>-0 is reachable as <job>-0.<service>, node 0's rendezvous address."""
    ln, nnodes = cfg.launcher, int(cfg.launcher.nnodes)
    job, svc = f"{base}-train", f"{base}-train"
    labels = _labels(cfg, base, run_id, "train")
    master = f"{job}-0.{svc}" if nnodes > 1 else str(ln.master_addr)
    make_vars, rest = split_overrides(overrides)
    variables = {"METHOD": cfg.method.name, "PROFILE": cfg.profile.name, "LAUNCHER": ln.name, "GPUS": str(ln.gpus),
                 "NNODES": str(nnodes), "NODE_RANK": "$(NODE_RANK)", "MASTER_ADDR": master}
    command = make_argv("train", variables, [*rest, f"run.id={run_id}"])
    env = _common_env(cfg) + [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    volumes, mounts = _volumes(cfg, ln.resources.shm_gib)
    gpus = int(ln.gpus)
    resources = _resources(cfg, gpus, gpus * ln.resources.cpu_per_gpu, gpus * ln.resources.memory_gib_per_gpu)
    container = _container(cfg, "train", command, env, mounts, resources)
    container["ports"] = [{"name": "rendezvous", "containerPort": int(ln.master_port)}]
    pod = _pod_spec(cfg, [container], volumes, restart="Never", gpu=True)
    if nnodes > 1:
        pod["subdomain"] = svc  # gives each pod the DNS name <job>-<index>.<svc>
    objects = []
    if nnodes > 1:
        objects.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(cfg, svc, labels), "spec": {
            "clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": job},
            "publishNotReadyAddresses": True,  # rendezvous happens before any pod is "ready"
            "ports": [{"name": "rendezvous", "port": int(ln.master_port), "targetPort": int(ln.master_port)}]}})
    objects.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, job, labels), "spec": {
        "completionMode": "Indexed", "completions": nnodes, "parallelism": nnodes,  # all nodes at once
        "backoffLimit": int(cfg.k8s.train.backoff_limit),
        "ttlSecondsAfterFinished": int(cfg.k8s.train.ttl_seconds_after_finished),
        "template": {"metadata": {"labels": labels}, "spec": pod}}})
    return objects


def merge_job(cfg: DictConfig, overrides: Sequence[str], run_id: str, base: str) -> dict:
    make_vars, rest = split_overrides(overrides)
    labels = _labels(cfg, base, run_id, "merge")
    volumes, mounts = _volumes(cfg, None)
    m = cfg.k8s.merge
    command = make_argv("merge", {"PROFILE": cfg.profile.name, "RUN": run_id}, rest)
    container = _container(cfg, "merge", command, _common_env(cfg), mounts, _resources(cfg, m.gpus, m.cpu, m.memory_gib))
    init = [_wait(cfg, ["--stage", f"{cfg.paths.results}/{run_id}", "train"], mounts[:1])]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, f"{base}-merge", labels), "spec": {
        "backoffLimit": 1, "ttlSecondsAfterFinished": int(cfg.k8s.train.ttl_seconds_after_finished),
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(cfg, [container], volumes, restart="Never",
                                                                      init=init, gpu=True)}}}


def serve_objects(cfg: DictConfig, run_id: str, base: str) -> list[dict]:
    """vLLM with the serve group's argv (experiments.serve.server.vllm_command) on 0.0.0.0."""
    s, k = cfg.serve, cfg.k8s
    kind = str(k.serve.model)
    names = served_names(run_id)
    run_dir = f"{cfg.paths.results}/{run_id}"
    lora = None
    if kind == "merged":
        model_path, served, wait = f"{run_dir}/merged", names["merged"], ["--stage", run_dir, "merge"]
    elif kind == "adapter":
        model_path, served, wait = str(cfg.model.path), names["base"], ["--stage", run_dir, "train"]
        lora = (names["adapter"], f"{run_dir}/adapter")
    elif kind == "base":
        model_path, served, wait = str(cfg.model.path), names["base"], None
    else:
        raise K8sError(f"k8s.serve.model={kind!r}: expected merged, adapter or base")
    cmd = vllm_command(s, python=Path(k.workdir) / ".venv" / "serve" / "bin" / "python", model_path=model_path,
                       served_name=served, lora=lora)
    gpus = int(s.tensor_parallel_size) * int(s.pipeline_parallel_size) * int(s.data_parallel_size)
    if cfg.profile.accelerator == "cpu":
        resources = _resources(cfg, 0, k.serve.cpu_only.cpu, k.serve.cpu_only.memory_gib)
    else:
        resources = _resources(cfg, gpus, gpus * k.serve.cpu_per_gpu, gpus * k.serve.memory_gib_per_gpu)
    env = _common_env(cfg) + [{"name": str(n), "value": str(v)} for n, v in OmegaConf.to_container(s.env, resolve=True).items()]
    env.append(_secret_env(cfg, str(s.api_key_env), k.secrets.api_key_key))
    volumes, mounts = _volumes(cfg, k.serve.shm_gib)
    container = _container(cfg, "vllm", cmd, env, mounts, resources)
    port = int(s.port)
    probe = {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10, "timeoutSeconds": 5}
    container.update({
        "ports": [{"name": "http", "containerPort": port}],
        # startup: model download + load + graph capture; readiness gates the Service; liveness restarts a hung engine
        "startupProbe": {**probe, "failureThreshold": max(1, int(s.startup_timeout_s) // 10)},
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
    })
    labels = _labels(cfg, base, run_id, "serve")
    init = [_wait(cfg, wait, mounts[:1])] if wait else None
    name = f"{base}-vllm"
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(cfg, name, labels), "spec": {
        "replicas": int(k.serve.replicas), "selector": {"matchLabels": labels},
        "strategy": {"type": "Recreate"},  # a rollout must not hold two servers' GPUs at once
        "template": {"metadata": {"labels": labels},
                     "spec": _pod_spec(cfg, [container], volumes, restart="Always", init=init, gpu=True)}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(cfg, name, labels), "spec": {
        "type": "ClusterIP", "selector": labels, "ports": [{"name": "http", "port": port, "targetPort": port}]}}
    return [deployment, service]


def endpoint_url(cfg: DictConfig, base: str) -> str:
    """The in-cluster URL of the run's vLLM Service (what eval and bench call)."""
    return f"http://{base}-vllm.{cfg.k8s.namespace}.svc:{int(cfg.serve.port)}/v1"


def client_job(cfg: DictConfig, overrides: Sequence[str], run_id: str, base: str, target: str) -> dict:
    """make eval / make bench against the Service, after it answers /health."""
    make_vars, rest = split_overrides(overrides)
    url = endpoint_url(cfg, base)
    labels = _labels(cfg, base, run_id, target)
    volumes, mounts = _volumes(cfg, None)
    command = make_argv(target, {"PROFILE": cfg.profile.name, "RUN": run_id, "MODEL": str(cfg.k8s.serve.model),
                                 "ENDPOINT": url}, rest)
    env = _common_env(cfg) + [_secret_env(cfg, str(cfg.serve.api_key_env), cfg.k8s.secrets.api_key_key)]
    c = cfg.k8s.client
    container = _container(cfg, target, command, env, mounts, _resources(cfg, 0, c.cpu, c.memory_gib))
    init = [_wait(cfg, ["--url", url[: -len("/v1")] + "/health"], mounts[:1])]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, f"{base}-{target}", labels), "spec": {
        "backoffLimit": 1, "ttlSecondsAfterFinished": int(cfg.k8s.train.ttl_seconds_after_finished),
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(cfg, [container], volumes, restart="Never", init=init)}}}


def render(cfg: DictConfig, overrides: Sequence[str], run_id: str) -> dict[str, list[dict]]:
    """Pure: composed config (with pod paths) -> {file name: manifests}, in apply order."""
    cfg = OmegaConf.merge(cfg, {"run": {"id": run_id}})  # every pod joins this run id
    check_launcher(cfg)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]+@", str(cfg.tracking.uri)):
        raise K8sError("tracking.uri carries credentials; put them in the Secret "
                       f"({cfg.k8s.secrets.name}: {cfg.k8s.secrets.tracking_username_key}/"
                       f"{cfg.k8s.secrets.tracking_password_key}) and give the URI without them")
    # What `make train` would refuse (batch arithmetic, ZeRO-3 + QLoRA...) is refused here, not in the cluster.
    run_dir = Path(str(cfg.paths.results)) / run_id
    build_axolotl_config(cfg, run_dir=run_dir, dataset_path=run_dir / "data" / "train.jsonl", mlflow_run_name=run_id)
    base = dns_name(run_id)
    return {
        "00-storage.yaml": [pvc(cfg)],
        "10-train.yaml": train_objects(cfg, overrides, run_id, base),
        "20-merge.yaml": [merge_job(cfg, overrides, run_id, base)],
        "30-serve.yaml": serve_objects(cfg, run_id, base),
        "40-eval.yaml": [client_job(cfg, overrides, run_id, base, "eval")],
        "50-bench.yaml": [client_job(cfg, overrides, run_id, base, "bench")],
    }


# --------------------------------------------------------------------------- validation and I/O


def validate(doc: dict, version: str) -> None:
    """Strict validation against the official schema of `version` (unknown fields are errors)."""
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError as KValidationError

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except KValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top level)"
        raise K8sError(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {where}: {exc.message}") from None
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        raise K8sError(f"{doc.get('kind')}: no schema in Kubernetes {version} ({exc})") from None


def compose_for_cluster(overrides: Sequence[str]) -> DictConfig:
    """The run's config as the pods will compose it: repo at k8s.workdir, results on the claim,
    the server listening on every interface of its pod."""
    group = [o for o in overrides if o.lstrip("+").startswith("k8s=")]
    rest = [o for o in overrides if o not in group]
    selected = ["+k8s=" + group[-1].split("=", 1)[1]] if group else ["+k8s=default"]
    first = compose([*selected, *rest])
    k = first.k8s
    pod_paths = [f"paths.root={k.workdir}", f"paths.results={k.storage.mount_path}/{k.storage.results_subpath}",
                 "serve.host=0.0.0.0"]
    cfg = compose([*selected, *rest, *pod_paths])
    cfg.k8s.out_dir = first.k8s.out_dir  # written here, on this machine
    return cfg


class _PlainDumper(yaml.SafeDumper):
    """No &anchors/*aliases for objects used twice (labels): kubectl reads them, people less so."""

    def ignore_aliases(self, data):
        return True


def to_yaml(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    """`make k8s`: python -m experiments.cluster.k8s [Hydra overrides] -> <k8s.out_dir>/<run_id>/*.yaml"""
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose_for_cluster(overrides)
        run_id = cfg.run.id or runs.new_run_id(cfg.method.name, cfg.model.name)
        files = render(cfg, overrides, run_id)
        for docs in files.values():
            for doc in docs:
                validate(doc, str(cfg.k8s.kubernetes_version))
        out = Path(cfg.k8s.out_dir) / run_id
        for name, docs in files.items():
            runs.write_text_atomic(out / name, to_yaml(docs))
        ln = cfg.launcher
        if str(cfg.tracking.uri).startswith("sqlite"):
            print(f"[k8s] note: tracking.uri={cfg.tracking.uri} is SQLite on the shared claim; with several pods "
                  "writing at once prefer an MLflow server: TRACKING_URI=http://<mlflow>:5000 make k8s ...")
        elif re.search(r"://(127\.0\.0\.1|localhost)[:/]", str(cfg.tracking.uri)):
            print(f"[k8s] note: tracking.uri={cfg.tracking.uri} is this machine's loopback, which pods cannot reach: "
                  "TRACKING_URI=http://<mlflow service>:5000 make k8s ...")
        print(f"[k8s] run {run_id}: launcher={ln.name} {ln.gpus} GPU(s) x {ln.nnodes} node(s) (world size {world_size(cfg)}), "
              f"serve TP={cfg.serve.tensor_parallel_size} PP={cfg.serve.pipeline_parallel_size} DP={cfg.serve.data_parallel_size}; "
              f"{sum(len(d) for d in files.values())} objects valid against Kubernetes {cfg.k8s.kubernetes_version} (strict)")
        print(f"[k8s] wrote {out}/  ->  kubectl create namespace {cfg.k8s.namespace}; "
              f"kubectl -n {cfg.k8s.namespace} create secret generic {cfg.k8s.secrets.name} --from-literal=HF_TOKEN=... "
              f"--from-literal=VLLM_API_KEY=...; kubectl apply -f {shlex.quote(str(out))}/")
    except (ConfigError, K8sError, runs.RunError, ValueError) as exc:
        print(f"[k8s] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
