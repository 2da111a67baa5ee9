"""`make k8s`: the manifests a cluster needs, rendered from a run's composed config and validated
offline against the official Kubernetes schemas in strict mode (unknown fields are errors)."""
from __future__ import annotations

import copy
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from experiments.cluster.k8s import K8sError, compose_for_cluster, dns_name, endpoint_url, render, validate

from conftest import REPO, hydra_args, make

VERSION = "1.37.0"
GPU_2N = ["method=qlora_opt", "profile=h100", "launcher=ddp", "launcher.gpus=8", "launcher.nnodes=2", "run.id=ft-2n"]


def rendered(overrides, run_id="ft-2n"):
    cfg = compose_for_cluster(overrides)
    return cfg, render(cfg, overrides, run_id)


def by_kind(files) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for docs in files.values() for d in docs}


def env_of(container) -> dict:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("overrides", [
    GPU_2N,
    ["method=dora", "profile=h100", "launcher=single"],
    ["method=qlora_opt", "profile=h100", "launcher=fsdp", "launcher.gpus=4", "serve.tensor_parallel_size=4"],
    ["method=qlora", "profile=cpu", "launcher=ddp", "launcher.gpus=2", "serve=cpu_tp2"],
])
def test_every_manifest_passes_strict_validation(overrides):
    _, files = rendered(overrides)
    docs = [d for ds in files.values() for d in ds]
    assert {d["kind"] for d in docs} >= {"PersistentVolumeClaim", "Job", "Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises on any problem


def test_multi_node_training_is_an_indexed_job_with_a_rendezvous_service():
    cfg, files = rendered(GPU_2N)
    objs = by_kind(files)
    job, svc = objs[("Job", "ft-2n-train")], objs[("Service", "ft-2n-train")]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "ft-2n-train" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": "ft-2n-train"}
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"  # GPUs per node from the launcher
    assert c["resources"]["limits"]["cpu"] == str(8 * cfg.launcher.resources.cpu_per_gpu)
    env = env_of(c)
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert c["command"][:3] == ["make", "--no-print-directory", "train"]
    assert {"METHOD=qlora_opt", "PROFILE=h100", "LAUNCHER=ddp", "GPUS=8", "NNODES=2", "NODE_RANK=$(NODE_RANK)",
            "MASTER_ADDR=ft-2n-train-0.ft-2n-train", "ARGS=run.id=ft-2n"} <= set(c["command"])
    assert any(v["name"] == "shm" and v["emptyDir"]["medium"] == "Memory" for v in pod["volumes"])


def test_single_node_training_has_no_rendezvous_service():
    _, files = rendered(["profile=h100", "launcher=ddp", "launcher.gpus=8"], run_id="ft-1n")
    kinds = [d["kind"] for d in files["10-train.yaml"]]
    assert kinds == ["Job"]
    c = files["10-train.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "NNODES=1" in c["command"] and "MASTER_ADDR=127.0.0.1" in c["command"]


def test_stages_chain_through_the_shared_claim_and_the_service():
    cfg, files = rendered(GPU_2N)
    objs = by_kind(files)
    pvc = objs[("PersistentVolumeClaim", "tool-calling-ft-data")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for (kind, name), doc in objs.items():
        if kind in ("Job", "Deployment"):
            pod = doc["spec"]["template"]["spec"]
            assert {"name": "data", "persistentVolumeClaim": {"claimName": "tool-calling-ft-data"}} in pod["volumes"], name
            env = env_of(pod["containers"][0])
            assert env["RESULTS_DIR"]["value"] == "/data/results" and env["HF_HOME"]["value"] == "/data/hf-cache"

    merge = objs[("Job", "ft-2n-merge")]["spec"]["template"]["spec"]
    assert merge["initContainers"][0]["command"][2:5] == ["--stage", "/data/results/ft-2n", "train"]
    assert "RUN=ft-2n" in merge["containers"][0]["command"] and "merge" in merge["containers"][0]["command"]

    dep = objs[("Deployment", "ft-2n-vllm")]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert c["command"][c["command"].index("--model") + 1] == "/data/results/ft-2n/merged"
    assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": 8000}
    svc = objs[("Service", "ft-2n-vllm")]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]

    url = endpoint_url(cfg, "ft-2n")
    assert url == "http://ft-2n-vllm.tool-calling-ft.svc:8000/v1"
    for target in ("eval", "bench"):
        pod = objs[("Job", f"ft-2n-{target}")]["spec"]["template"]["spec"]
        cmd = pod["containers"][0]["command"]
        assert cmd[2] == target and f"ENDPOINT={url}" in cmd and "RUN=ft-2n" in cmd
        assert pod["initContainers"][0]["command"][2:4] == ["--url", "http://ft-2n-vllm.tool-calling-ft.svc:8000/health"]
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


def test_serving_gpus_follow_the_parallel_sizes():
    _, files = rendered(["profile=h100", "serve.tensor_parallel_size=4", "serve.pipeline_parallel_size=2"], run_id="r")
    c = files["30-serve.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["command"][c["command"].index("--tensor-parallel-size") + 1] == "4"


def test_tracking_uri_comes_from_the_tracking_group():
    _, files = rendered(GPU_2N)
    assert env_of(files["20-merge.yaml"][0]["spec"]["template"]["spec"]["containers"][0])["TRACKING_URI"]["value"] \
        == "sqlite:////data/results/mlflow.db"  # the default group, at the pods' results path
    _, files = rendered([*GPU_2N, "tracking.uri=http://mlflow.mlops:5000"])
    for docs in files.values():
        for d in docs:
            if d["kind"] in ("Job", "Deployment"):
                env = env_of(d["spec"]["template"]["spec"]["containers"][0])
                assert env["TRACKING_URI"]["value"] == "http://mlflow.mlops:5000"


def test_secrets_are_references_never_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_should_never_appear")
    monkeypatch.setenv("VLLM_API_KEY", "sk-should-never-appear")
    _, files = rendered(GPU_2N)
    text = yaml.safe_dump_all([d for ds in files.values() for d in ds])
    assert "should-never-appear" not in text and "should_never_appear" not in text
    assert "kind: Secret" not in text
    for docs in files.values():
        for d in docs:
            if d["kind"] not in ("Job", "Deployment"):
                continue
            env = env_of(d["spec"]["template"]["spec"]["containers"][0])
            ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "tool-calling-ft-secrets", "key": "HF_TOKEN", "optional": True}
            assert "value" not in env["HF_TOKEN"]
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "MLFLOW_TRACKING_PASSWORD"
    with pytest.raises(K8sError, match="tracking.uri carries credentials"):
        rendered([*GPU_2N, "tracking.uri=http://alice:s3cret@mlflow:5000"])
    for name in (("Deployment", "ft-2n-vllm"), ("Job", "ft-2n-eval"), ("Job", "ft-2n-bench")):
        env = env_of(by_kind(files)[name]["spec"]["template"]["spec"]["containers"][0])
        assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "VLLM_API_KEY"


def test_broken_manifests_are_rejected():
    _, files = rendered(GPU_2N)
    job = files["10-train.yaml"][1]
    validate(job, VERSION)

    typo = copy.deepcopy(job)
    typo["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8  # not a Container field
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["completions"] = "two"
    no_image_name = copy.deepcopy(job)
    del no_image_name["spec"]["template"]["spec"]["containers"][0]["name"]  # required
    bad_probe = copy.deepcopy(files["30-serve.yaml"][0])
    bad_probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["url"] = "/health"
    for broken, where in [(typo, "gpus"), (wrong_type, "completions"), (no_image_name, "name"), (bad_probe, "url")]:
        with pytest.raises(K8sError, match=where):
            validate(broken, VERSION)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, VERSION, strict=True)


def test_names_are_valid_dns_labels():
    for run_id in ["20261130-101500-qlora_opt-qwen2_5_7b", "ft-2n", "1-starts-with-digit", "A" * 90]:
        name = dns_name(run_id)
        assert name[0].isalpha() and len(name) <= 40 and name == name.lower()
        assert all(ch.isalnum() or ch == "-" for ch in name)
    assert dns_name("a_b") != dns_name("a.b")  # distinct ids stay distinct


def test_make_k8s_writes_valid_manifests(results_dir):
    proc = make("k8s", "PROFILE=h100", "METHOD=qlora_opt", "LAUNCHER=ddp", "GPUS=8", "NNODES=2",
                hydra_args("run.id=test-k8s"))
    out = results_dir / "k8s" / "test-k8s"
    assert "valid against Kubernetes 1.37.0 (strict)" in proc.stdout
    files = sorted(p.name for p in out.glob("*.yaml"))
    assert files == ["00-storage.yaml", "10-train.yaml", "20-merge.yaml", "30-serve.yaml", "40-eval.yaml", "50-bench.yaml"]
    for path in out.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, VERSION, strict=True)
    assert not (results_dir / "test-k8s").exists()  # rendering is not a run


def test_make_k8s_refuses_an_impossible_launch(results_dir):
    proc = make("k8s", "PROFILE=h100", "LAUNCHER=ddp", "GPUS=3", hydra_args("run.id=x", "launcher.global_batch_size=16"),
                check=False)
    assert proc.returncode != 0 and "launcher.global_batch_size" in proc.stderr


def test_wait_helper(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    wait = [sys.executable, str(REPO / "scripts" / "k8s_wait.py"), "--interval", "0.1"]
    assert subprocess.run([*wait, "--stage", str(run), "train", "--timeout", "0.5"]).returncode == 2  # not yet
    (run / "run.json").write_text('{"stages": {"train": "failed"}}')
    assert subprocess.run([*wait, "--stage", str(run), "train", "--timeout", "5"]).returncode == 1
    (run / "run.json").write_text('{"stages": {"train": "done"}}')
    assert subprocess.run([*wait, "--stage", str(run), "train", "--timeout", "5"]).returncode == 0
