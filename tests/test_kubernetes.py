"""The rendered Kubernetes objects, validated against the official schemas of two Kubernetes minor versions.

No API server runs here: what is checked is that every object is valid for Kubernetes 1.30 and 1.33
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

VERSIONS = ("1.30.0", "1.33.0")
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


def test_training_pod_is_isolated(tmp_path):
    objects = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[-1]): o for o in _objects(tmp_path, (4, 5),
                                                                                         "gpu-1x-h100-80gb")}
    train = objects[("Job", "train")]
    spec = train["spec"]
    assert spec["backoffLimit"] == 0 and spec["completionMode"] == "Indexed" and spec["completions"] == 2
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
    assert {"name": "XRUN_SEED_1", "value": "5"} in container["env"]
    policy = objects[("NetworkPolicy", "egress")]
    assert policy["spec"]["egress"] == [] and "Egress" in policy["spec"]["policyTypes"]
    assert policy["spec"]["podSelector"]["matchLabels"] == train["spec"]["template"]["metadata"]["labels"]
    stage = objects[("Job", "stage")]
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

    for path in result["rendered"]:
        obj = yaml.safe_load(open(path))
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    # Without --render nothing is submitted: a one-line usage error.
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(manifest), "--backend", "kubernetes",
                          "--registry", f"{registry.host}/xrun-k8s", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_training_waits_for_staged_data_and_each_member_keeps_its_outputs(tmp_path):
    objects = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[-1]): o for o in _objects(tmp_path, (1, 2, 3, 4))}
    train = objects[("Job", "train")]
    pod = train["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]  # init containers finish before the training container starts
    assert wait["name"] == "wait-for-data" and wait["image"] == pod["containers"][0]["image"]
    items = json.loads(wait["command"][-1])
    stage = objects[("Job", "stage")]["spec"]["template"]["spec"]["containers"][0]
    staged = json.loads(stage["command"][-1])
    # Every pinned file is waited for: what the staging Job fetches and what it leaves to be copied by hand.
    not_staged = objects[("Job", "stage")]["metadata"]["annotations"]["xrun.dev/not-staged"]
    assert staged == []  # the probe's data item is a local file
    assert [i["name"] for i in items] == ["input"] and "input" in not_staged
    assert items[0]["algorithm"] == "sha256" and len(items[0]["digest"]) == 64
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in wait["volumeMounts"]
    assert wait["securityContext"] == pod["containers"][0]["securityContext"]
    # An Indexed Job of four members: each writes only its own folder of the outputs volume.
    assert train["spec"]["completions"] == 4 and train["spec"]["completionMode"] == "Indexed"
    outputs = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/outputs")
    assert outputs["subPathExpr"] == "$(JOB_COMPLETION_INDEX)"


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
