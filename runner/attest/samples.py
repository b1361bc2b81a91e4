"""Synthetic but realistic provenance facts: for tests, the benchmark and documentation examples."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

from runner.attest.statement import ProvenanceFacts, ResourceDescriptor, Subject, builder_id_for_host

BASE_DIGEST = hashlib.sha256(b"python:3.12-slim").hexdigest()
DATA_DIGEST = hashlib.sha256(b"iris.csv").hexdigest()
MANIFEST: dict[str, Any] = {
    "apiVersion": "xrun/v1",
    "kind": "Experiment",
    "name": "iris",
    "image": {"base": f"docker.io/library/python@sha256:{BASE_DIGEST}", "lockfile": "requirements.lock"},
    "code": {"path": "."},
    "data": [{"name": "iris", "uri": "https://example.org/iris.csv", "sha256": DATA_DIGEST, "path": "iris.csv"}],
    "seeds": {"global": 42},
    "hardware": {"class": "cpu-2"},
    "run": {"command": ["python", "train.py"], "timeout": "30m"},
    "outputs": [{"path": "model.pkl"}, {"path": "metrics.json", "metrics": True}],
}
MANIFEST_SHA256 = hashlib.sha256(b"apiVersion: xrun/v1\nkind: Experiment\nname: iris\n").hexdigest()


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample_subjects(count: int = 2) -> list[Subject]:
    """`count` output files with made-up digests (model.pkl and metrics.json first)."""
    names = ["model.pkl", "metrics.json"] + [f"checkpoints/step-{i:05d}.pt" for i in range(max(0, count - 2))]
    return [Subject(name=n, sha256=_hex(n)) for n in names[:count]]


def sample_dependencies(wheels: int = 40) -> tuple[ResourceDescriptor, ...]:
    """Base image, built image, lockfile, code, one data item, `wheels` wheels."""
    deps = [
        ResourceDescriptor(name="base-image",
                           uri=f"pkg:docker/library/python@sha256:{BASE_DIGEST}?platform=linux/amd64",
                           digest={"sha256": BASE_DIGEST}, annotations={"reference": MANIFEST["image"]["base"]}),
        ResourceDescriptor(name="image", uri="docker-image:xrun/iris:plan-0123456789ab",
                           digest={"sha256": _hex("image")},
                           annotations={"tag": "xrun/iris:plan-0123456789ab"}),
        ResourceDescriptor(name="lockfile", digest={"sha256": _hex("lock")},
                           annotations={"format": "requirements", "packages": wheels}),
        ResourceDescriptor(name="code", digest={"sha256": _hex("tree"), "gitCommit": "a" * 40},
                           annotations={"files": 12, "gitDirty": False}),
        ResourceDescriptor(name="data/iris", uri="https://example.org/iris.csv", digest={"sha256": DATA_DIGEST},
                           annotations={"path": "/data/iris.csv", "size": 4551}),
    ]
    for i in range(wheels):
        name = f"package{i}"
        deps.append(ResourceDescriptor(
            name=f"wheel/{name}", uri=f"pkg:pypi/{name}@1.{i}.0", digest={"sha256": _hex(name)},
            download_location=f"https://files.pythonhosted.org/packages/{name}-1.{i}.0-py3-none-any.whl",
            annotations={"filename": f"{name}-1.{i}.0-py3-none-any.whl"}))
    return tuple(deps)


def sample_facts(*, finished_on: datetime | None = None, hostname: str = "ci-runner-1", wheels: int = 40,
                 hardware_mismatch: list[str] | None = None) -> ProvenanceFacts:
    """Facts of a plausible CPU run that finished at `finished_on` (default: now)."""
    finished = finished_on or datetime.now(timezone.utc).replace(microsecond=0)
    return ProvenanceFacts(
        manifest=MANIFEST,
        manifest_sha256=MANIFEST_SHA256,
        internal={
            "isolation": {"network": "none", "readOnlyRootfs": True, "capDrop": ["ALL"], "noNewPrivileges": True,
                          "user": "1000:1000", "memory": "4g", "cpus": 2},
            "seeding": {"global": 42, "applied": True, "environment": {"PYTHONHASHSEED": "42", "XRUN_SEED": "42"},
                        "libraries": ["random", "numpy", "torch"]},
            "hermetic": True,
            "hardwareMismatch": list(hardware_mismatch or []),
            "planDigest": _hex("plan"),
            "settings": {"allowHardwareMismatch": bool(hardware_mismatch), "signed": True},
        },
        dependencies=sample_dependencies(wheels),
        builder_id=builder_id_for_host(hostname),
        xrun_version="0.1.0",
        builder_dependencies=(
            ResourceDescriptor(name="xrun", uri="pkg:pypi/xrun@0.1.0", digest={"sha256": _hex("xrun")}),
            ResourceDescriptor(name="docker-engine", uri="pkg:generic/docker-engine@27.3.1"),
            ResourceDescriptor(name="container-runtime", uri="pkg:generic/runc@1.1.14"),
        ),
        invocation_id="20261123-101500-iris/5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5",
        started_on=finished - timedelta(minutes=12),
        finished_on=finished,
        byproducts=(
            ResourceDescriptor(name="logs/run.log", digest={"sha256": _hex("log")}, media_type="text/plain"),
            ResourceDescriptor(name="run.json", digest={"sha256": _hex("run.json")}, media_type="application/json"),
        ),
    )
