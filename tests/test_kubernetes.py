"""The rendered Kubernetes objects, validated against the official schemas of two Kubernetes minor versions.

No API server runs here: what is checked is that every object is valid for Kubernetes 1.30 and 1.33
(kubernetes-validate, strict: no unknown fields) and carries the isolation xrun promises.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
