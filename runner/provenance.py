"""Describe a finished run as provenance facts: map each stage's result to SLSA terms."""

from __future__ import annotations

import functools
import hashlib
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from runner import __version__
from runner.attest.statement import ProvenanceFacts, ResourceDescriptor, Subject, builder_id_for_host
from runner.execute import ContainerSpec
from runner.hashing import hash_tree, tree_digest
from runner.lockfiles.interface import is_local
from runner.outputs import Outputs
from runner.plan import Plan, canonical_json

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.pipeline import CompletedRun

SEEDED_LIBRARIES = ("random", "numpy", "torch", "tensorflow", "jax")


@dataclass(frozen=True)
class EngineInfo:
    """The container engine as it reported itself."""

    version: str
    runtime: str
    runtime_version: str
    os: str

    def to_json(self) -> dict[str, str]:
        return {"version": self.version, "runtime": self.runtime, "runtimeVersion": self.runtime_version, "os": self.os}


def engine_info(client: Any) -> EngineInfo:
    """Docker engine version and default runtime, from the engine itself."""
    info = client.info()
    version = client.version()
    runtime = info.get("DefaultRuntime", "runc")
    runtime_version = ""
    for component in version.get("Components", []):
        if component.get("Name", "").lower() == runtime:
            runtime_version = component.get("Version", "")
    return EngineInfo(version=version.get("Version", "unknown"), runtime=runtime,
                      runtime_version=runtime_version, os=info.get("OperatingSystem", ""))


@functools.lru_cache(maxsize=1)
def xrun_distribution_digest() -> str:
    """A tree digest of xrun's own installed code (runner/, schemas/, templates/)."""
    root = Path(__file__).resolve().parent
    files = hash_tree(root, ("__pycache__", "*.pyc"))
    return tree_digest(files).split(":", 1)[1]


def as_uri(reference: str) -> str:
    """A data reference as a URI: a plain relative path becomes file:<path> (relative to the manifest)."""
    return reference if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", reference) else f"file:{reference}"


def subjects(outputs: Outputs) -> list[Subject]:
    """One subject per output file, named by its path under /outputs."""
    return [Subject(name=f.path, sha256=f.sha256) for f in outputs.files]


def dependencies(plan: Plan, fetched: list[Any], image: Any, reproduced: ResourceDescriptor | None) -> list[ResourceDescriptor]:
    """resolvedDependencies: base image, built image, packages, wheels, data, code, lockfile."""
    deps: list[ResourceDescriptor] = []
    platform = quote(image.platform, safe="")
    if plan.base is not None:
        deps.append(ResourceDescriptor(
            name="base-image", uri=f"pkg:docker/{plan.base.name}@{plan.base.digest}?platform={platform}",
            digest={"sha256": plan.base.digest.split(":", 1)[1]},
            annotations={"reference": plan.base.pinned, "imageId": image.base_image_id}))
    else:
        deps.append(ResourceDescriptor(
            name="base-image", uri=f"pkg:docker/xrun-bootstrap/{plan.bootstrap.suite}@{image.base_image_id}?platform={platform}",
            digest={"sha256": image.base_image_id.split(":", 1)[1]},
            annotations={"bootstrap": {"suite": plan.bootstrap.suite, "packages": list(plan.bootstrap.packages),
                                       "variant": plan.bootstrap.variant}}))
    deps.append(ResourceDescriptor(name="image", uri=f"docker-image:{image.tag}",
                                   digest={"sha256": image.id.split(":", 1)[1]},
                                   annotations={"tag": image.tag, "buildDigest": plan.build_digest}))
    for deb in image.debs:
        deps.append(ResourceDescriptor(name=f"deb/{deb.name}", uri=deb.purl))
    for wheel in image.wheels:
        deps.append(wheel_dependency(wheel))
    for item in fetched:
        deps.append(ResourceDescriptor(name=f"data/{item.name}", uri=as_uri(item.uri), digest={item.algorithm: item.hexdigest},
                                       annotations={"path": item.container_path, "size": item.size,
                                                    "unpacked": item.unpacked}))
    code_digest = {"sha256": plan.code.digest.split(":", 1)[1]}
    if plan.code.git_commit:
        code_digest["gitCommit"] = plan.code.git_commit
    deps.append(ResourceDescriptor(name="code", uri="file:" + plan.to_json()["code"]["path"], digest=code_digest,
                                   annotations={"files": len(plan.code.files), "gitDirty": plan.code.git_dirty}))
    if plan.lockfile is not None:
        lock = plan.to_json()["lockfile"]
        deps.append(ResourceDescriptor(name="lockfile", uri=f"file:{lock['path']}", digest={"sha256": lock["sha256"]},
                                       annotations={"format": lock["format"], "packages": len(lock["packages"])}))
    if reproduced is not None:
        deps.append(reproduced)
    return deps


def wheel_dependency(wheel: Any) -> ResourceDescriptor:
    """A wheel as a purl with its digest; downloadLocation only for one fetched over the network.

    A local wheel's location is a host path (or one relative to the lockfile): no URI an auditor could
    fetch, so the purl and the sha256 identify it.
    """
    local = is_local(wheel.url)
    annotations: dict[str, Any] = {"filename": wheel.filename}
    if local:
        annotations["source"] = "local file"
    return ResourceDescriptor(name=f"wheel/{wheel.name}", uri=f"pkg:pypi/{wheel.name}@{wheel.version}",
                              digest={"sha256": wheel.sha256}, download_location=None if local else wheel.url,
                              annotations=annotations)


def internal_parameters(plan: Plan, spec: ContainerSpec, runs_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """What xrun decided: isolation, seed handling and determinism variables, its own settings."""
    seed_env = {k: v for k, v in plan.env.items() if k not in plan.manifest.run.env}
    return {
        "isolation": spec.isolation(),
        "seeding": {"global": plan.seed, "applied": plan.apply_seeds, "environment": seed_env,
                    "libraries": list(SEEDED_LIBRARIES) if plan.apply_seeds else []},
        "planDigest": plan.digest,
        "buildDigest": plan.build_digest,
        "runsDir": str(runs_dir),
        "settings": settings,
    }


def describe(ctx: RunContext, done: CompletedRun, *, record_sha256: str) -> tuple[list[Subject], ProvenanceFacts]:
    """The statement's subjects and the facts of its predicate, from the context and the stages' results."""
    plan, host, outputs, result = ctx.plan, ctx.host, done.outputs, done.execution.result
    engine = engine_info(ctx.client)
    settings = {"allowHardwareMismatch": ctx.options.allow_hardware_mismatch, "signed": ctx.signer is not None,
                "fetch": {"retries": ctx.options.fetch.retries, "parallel": ctx.options.fetch.parallel}}
    run_id, runs_dir, log_sha256 = done.run.run_id, ctx.runs_dir, result.log_sha256
    hardware_mismatch = list(ctx.hardware_mismatch)
    facts = ProvenanceFacts(
        manifest=plan.manifest.raw,
        manifest_sha256=plan.manifest.sha256,
        internal=internal_parameters(plan, done.execution.spec, runs_dir, settings),
        dependencies=tuple(dependencies(plan, list(done.fetched), done.image, ctx.options.reproduces)),
        builder_id=builder_id_for_host(socket.gethostname()),
        xrun_version=__version__,
        builder_dependencies=(
            ResourceDescriptor(name="xrun", uri=f"pkg:pypi/xrun@{__version__}",
                               digest={"sha256": xrun_distribution_digest()}),
            ResourceDescriptor(name="docker-engine", uri=f"pkg:generic/docker-engine@{engine.version}",
                               annotations={"os": engine.os}),
            ResourceDescriptor(name="container-runtime", uri=f"pkg:generic/{engine.runtime}@{engine.runtime_version}"),
        ),
        invocation_id=f"{run_id}/{uuid.uuid4()}",
        started_on=result.started_on,
        finished_on=result.finished_on,
        byproducts=(
            ResourceDescriptor(name="logs/run.log", digest={"sha256": log_sha256}, media_type="text/plain"),
            ResourceDescriptor(name="run.json", digest={"sha256": record_sha256}, media_type="application/json"),
            ResourceDescriptor(name="host", digest={"sha256": hashlib.sha256(canonical_json(host.to_json())).hexdigest()},
                               media_type="application/json", annotations=host.to_json()),
        ),
        extensions={
            "xrun_hermetic": True,
            "xrun_hardware_class": plan.hardware.name,
            "xrun_hardware_mismatch": hardware_mismatch,
            "xrun_plan_digest": plan.digest,
            "xrun_metrics": outputs.metrics,
        },
    )
    return subjects(outputs), facts
