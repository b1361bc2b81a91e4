"""The rendered Kubernetes objects, validated against the official schemas of three Kubernetes minor versions.

No API server runs here: what is checked is that every object is valid for Kubernetes 1.30, 1.33 and 1.37
(kubernetes-validate, strict: no unknown fields) and carries the isolation xrun promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import kubernetes_validate
import pytest

from runner.manifest import load_manifest
from runner.plan import resolve_plan
from experiments import probe_experiment

VERSIONS = ("1.30.0", "1.33.0", "1.37.0")
FAKE_BASE = "127.0.0.1:5000/xrun-base@sha256:" + "ab" * 32


def _objects(tmp_path, seeds=(), cls="cpu-1"):
    from runner.backends.kubernetes import render_objects

    manifest = probe_experiment(tmp_path / "exp", FAKE_BASE, cls=cls)
    plan = resolve_plan(load_manifest(manifest))
    return render_objects(plan, "127.0.0.1:5000/xrun/probe@sha256:" + "cd" * 32, seeds, "20261129T171800Z-ab12cd")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("seeds,cls", [((), "cpu-1"), ((1, 2, 3), "gpu-1x-h100-80gb")])
def test_every_object_is_valid(tmp_path, version, seeds, cls):
    for obj in _objects(tmp_path, seeds, cls):
        kubernetes_validate.validate(obj, version, strict=True)


def _by_role(objects, role):
    return [o for o in objects if o["metadata"]["labels"].get("xrun.dev/role") == role]


def _one(objects, kind):
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def test_training_pod_is_isolated(tmp_path):
    objects = _objects(tmp_path, (4, 5), "gpu-1x-h100-80gb")
    train = next(o for o in _by_role(objects, "train") if o["metadata"]["labels"]["xrun.dev/seed"] == "5")
    spec = train["spec"]
    assert spec["backoffLimit"] == 0 and spec["completionMode"] == "NonIndexed" and spec["completions"] == 1
    assert spec["activeDeadlineSeconds"] == 300 + 300
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert "@sha256:" in container["image"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "XRUN_SEED", "value": "5"} in container["env"]
    assert {"name": "PYTHONHASHSEED", "value": "5"} in container["env"]
    assert container["command"] == ["python3", "probe.py"]  # the run command as is: no shell picks the seed
    policy = _one(objects, "NetworkPolicy")
    assert policy["spec"]["egress"] == [] and "Egress" in policy["spec"]["policyTypes"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= train["spec"]["template"]["metadata"]["labels"].items()
    (stage,) = _by_role(objects, "stage")
    # Staging is its own pod, not selected by the deny-egress policy.
    assert stage["spec"]["template"]["metadata"]["labels"]["xrun.dev/role"] == "stage"
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["readOnly"] is True


@pytest.mark.docker
def test_render_from_the_command_line(tmp_path, base_image, registry, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    manifest = probe_experiment(tmp_path / "exp", base_image)
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(manifest), "--backend", "kubernetes",
                          "--render", str(tmp_path / "k8s"), "--registry", f"{registry.host}/xrun-k8s",
                          "--seeds", "1-2", "--json", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["imageReference"].startswith(f"{registry.host}/xrun-k8s@sha256:")
    import yaml

    # Data volume, two outputs volumes, staging, policy, two training Jobs: in apply order, file names sort so.
    assert len(result["rendered"]) == 7 and result["rendered"] == sorted(result["rendered"])
    assert result["seeds"] == [1, 2]
    for path in result["rendered"]:
        obj = yaml.safe_load(open(path))
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    # The terminal counts the members (rendered Jobs are no runs xrun follows: it once said "0 seeds").
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(manifest), "--backend", "kubernetes",
                          "--render", str(tmp_path / "k8s4"), "--registry", f"{registry.host}/xrun-k8s",
                          "--seeds", "1-4", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(4 members: seeds 1-4)" in out.stdout.splitlines()[0], out.stdout
    assert len(list((tmp_path / "k8s4").iterdir())) == 1 + 4 + 1 + 1 + 4
    # Without --render nothing is submitted: a one-line usage error.
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(manifest), "--backend", "kubernetes",
                          "--registry", f"{registry.host}/xrun-k8s", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_training_waits_for_staged_data(tmp_path):
    objects = _objects(tmp_path)
    (train,) = _by_role(objects, "train")
    pod = train["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]  # init containers finish before the training container starts
    assert wait["name"] == "wait-for-data" and wait["image"] == pod["containers"][0]["image"]
    items = json.loads(wait["command"][-1])
    (stage_job,) = _by_role(objects, "stage")
    stage = stage_job["spec"]["template"]["spec"]["containers"][0]
    staged = json.loads(stage["command"][-1])
    # Every pinned file is waited for: what the staging Job fetches and what it leaves to be copied by hand.
    not_staged = stage_job["metadata"]["annotations"]["xrun.dev/not-staged"]
    assert staged == []  # the probe's data item is a local file
    assert [i["name"] for i in items] == ["input"] and "input" in not_staged
    assert items[0]["algorithm"] == "sha256" and len(items[0]["digest"]) == 64
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in wait["volumeMounts"]
    assert wait["securityContext"] == pod["containers"][0]["securityContext"]
    # A single run: one outputs volume, one training Job, no sweep labels.
    (outputs,) = [o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"].endswith("-outputs")]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims["outputs"] == outputs["metadata"]["name"] and "xrun.dev/sweep" not in train["metadata"]["labels"]


def test_a_sweep_is_one_outputs_volume_and_one_job_per_member(tmp_path):
    objects = _objects(tmp_path, (7, 8, 9), "gpu-1x-h100-80gb")
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    # In apply order: the shared data volume, the members' volumes, staging, the policy, the members' Jobs.
    assert [(o["kind"], o["metadata"]["labels"].get("xrun.dev/seed")) for o in objects] == [
        ("PersistentVolumeClaim", None), *[("PersistentVolumeClaim", s) for s in "789"], ("Job", None),
        ("NetworkPolicy", None), *[("Job", s) for s in "789"]]
    sweep = "20261129t171800z-ab12cd"
    volumes = {o["metadata"]["labels"]["xrun.dev/seed"]: o for o in objects
               if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["labels"].get("xrun.dev/sweep") == sweep}
    assert sorted(volumes) == ["7", "8", "9"]
    assert all(v["spec"]["accessModes"] == ["ReadWriteOnce"] for v in volumes.values())
    jobs = _by_role(objects, "train")
    assert len(jobs) == 3 and len({j["metadata"]["name"] for j in jobs}) == 3
    policy = _one(objects, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    (data,) = [o for o in objects if o["metadata"]["name"].endswith("-data")]
    for job in jobs:
        labels = job["metadata"]["labels"]
        seed = labels["xrun.dev/seed"]
        assert labels["xrun.dev/sweep"] == sweep and job["metadata"]["name"].endswith(f"-train-s{seed}")
        assert job["spec"]["completions"] == 1 and job["spec"]["completionMode"] == "NonIndexed"
        pod = job["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()  # the deny-all policy selects every member
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["XRUN_SEED"] == env["PYTHONHASHSEED"] == seed
        assert not any(name.startswith("XRUN_SEED_") for name in env)
        assert container["command"] == ["python3", "probe.py"]
        claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        # Each member mounts its own outputs claim whole (no sub-folder of a shared one) and the one data claim.
        assert claims["outputs"]["claimName"] == volumes[seed]["metadata"]["name"]
        assert claims["data"] == {"claimName": data["metadata"]["name"], "readOnly": True}
        outputs = next(m for m in container["volumeMounts"] if m["mountPath"] == "/outputs")
        assert outputs == {"name": "outputs", "mountPath": "/outputs"}
        (wait,) = pod["spec"]["initContainers"]
        assert wait["name"] == "wait-for-data"
        assert len(job["metadata"]["name"]) <= 63  # a Job's name becomes a pod label
    assert len(_by_role(objects, "stage")) == 1


@pytest.mark.parametrize("seeds", [(), (3,), (10**9, 2**63)])
def test_job_names_fit_a_label_whatever_the_name_and_seed(tmp_path, seeds):
    import dataclasses

    from runner.backends.kubernetes import render_objects

    plan = resolve_plan(load_manifest(probe_experiment(tmp_path / "exp", FAKE_BASE)))
    plan = dataclasses.replace(plan, manifest=dataclasses.replace(plan.manifest, name="a-long-experiment-name" * 4))
    objects = render_objects(plan, "r@sha256:" + "cd" * 32, seeds, "20261129T171800Z-ab12cd")
    for job in _by_role(objects, "train"):  # its name becomes its pods' batch.kubernetes.io/job-name label
        assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].startswith("xrun-a-long"), job


@pytest.mark.docker
def test_the_wait_for_data_script_waits_until_the_digest_matches(tmp_path, base_image, docker_client):
    import hashlib

    from runner.backends.kubernetes import WAIT_SCRIPT

    data = tmp_path / "data"
    data.mkdir()
    (data / "iris.csv").write_bytes(b"half")
    item = {"name": "iris", "path": "iris.csv", "algorithm": "sha256",
            "digest": hashlib.sha256(b"the staged bytes").hexdigest()}
    container = docker_client.containers.run(base_image, ["python3", "-c", WAIT_SCRIPT, json.dumps([item])],
                                             volumes={str(data): {"bind": "/data", "mode": "ro"}}, detach=True,
                                             network_mode="none")
    try:
        for _ in range(600):  # a generous bound on a busy machine: until it says what it waits for
            if b"waiting for staged data: iris" in container.logs():
                break
            time.sleep(0.2)
        container.reload()
        assert container.status == "running", container.logs()
        (data / "iris.csv").write_bytes(b"the staged bytes")
        assert container.wait(timeout=120)["StatusCode"] == 0
    finally:
        container.remove(force=True)
