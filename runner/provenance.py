"""Describe a finished run as provenance facts: map each stage's result to SLSA terms."""

from __future__ import annotations

import functools
import hashlib
import re
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packageurl import PackageURL

from runner import __version__
from runner.attest.statement import ProvenanceFacts, ResourceDescriptor, Subject, builder_id_for_host
from runner.codetree import repo_path
from runner.engine.execute import ContainerSpec
from runner.hashing import hash_tree, ignore_rules, tree_digest
from runner.lockfiles.interface import is_local
from runner.outputs import Outputs
from runner.plan import ImageRef, Plan, canonical_json
from runner.redact import redact
from runner.wire import fields_to_wire

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.stages import CompletedRun

SEEDED_LIBRARIES = ("random", "numpy", "torch", "tensorflow", "jax")


@dataclass(frozen=True)
class EngineInfo:
    """The container engine as it reported itself."""

    version: str
    runtime: str
    runtime_version: str
    os: str

    def to_json(self) -> dict[str, str]:
        """camelCase (run.json and the attestation's byproducts)."""
        return fields_to_wire(self)


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


def ask_engine_info(client: Any) -> Callable[[], EngineInfo]:
    """engine_info asked in a background thread now; calling the result waits for it (or raises its error).

    `docker info` costs tens of milliseconds: asked while the training runs, a warm run never waits for it.
    """
    answer: Future[EngineInfo] = Future()

    def ask() -> None:
        try:
            answer.set_result(engine_info(client))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised where it asks
            answer.set_exception(exc)

    threading.Thread(target=ask, name="xrun-engine-info", daemon=True).start()
    return answer.result


@functools.lru_cache(maxsize=1)
def xrun_distribution_digest() -> str:
    """A tree digest of xrun's own installed code (runner/, schemas/, templates/)."""
    root = Path(__file__).resolve().parent
    files = hash_tree(root, ignore_rules(("__pycache__", "*.pyc")))
    return tree_digest(files).split(":", 1)[1]


def purl(kind: str, name: str, version: str | None = None, namespace: str | None = None,
         qualifiers: dict[str, str] | None = None) -> str:
    """A package URL written by packageurl-python, so every field is encoded one way (`+` included)."""
    return PackageURL(type=kind, namespace=namespace, name=name, version=version,
                      qualifiers=qualifiers or None).to_string()


def data_uri(reference: str) -> str | None:
    """A remote data reference as its URI; None for a local file (a host or manifest-relative path means
    nothing to a verifier: the digest identifies it, and the manifest says where it was read from)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", reference) and not reference.lower().startswith("file:"):
        return redact(reference)
    return None


def subjects(outputs: Outputs) -> list[Subject]:
    """One subject per output file, named by its path under /outputs."""
    return [Subject(name=f.path, sha256=f.sha256) for f in outputs.files]


def _docker_purl(ref: Any, platform: str) -> str:
    """pkg:docker/NAMESPACE/NAME@sha256:…?repository_url=REGISTRY&platform=…"""
    namespace, _, name = ref.repository.rpartition("/")
    qualifiers = {"platform": platform}
    if ref.registry:
        qualifiers["repository_url"] = ref.registry
    return purl("docker", name, ref.digest, namespace or None, qualifiers)


def dependencies(plan: Plan, fetched: list[Any], image: Any, reproduced: ResourceDescriptor | None) -> list[ResourceDescriptor]:
    """resolvedDependencies: base image, built image, packages, wheels, data, code, lockfile."""
    deps: list[ResourceDescriptor] = []
    base = plan.base
    if isinstance(base, ImageRef):
        deps.append(ResourceDescriptor(
            name="base-image", uri=_docker_purl(base, image.platform),
            digest={"sha256": base.digest.split(":", 1)[1]},
            annotations={"reference": base.pinned, "imageId": image.base_image_id}))
    else:
        deps.append(ResourceDescriptor(
            name="base-image", uri=purl("docker", base.suite, image.base_image_id, "xrun-bootstrap",
                                        {"platform": image.platform}),
            digest={"sha256": image.base_image_id.split(":", 1)[1]},
            annotations={"bootstrap": {"suite": base.suite, "packages": list(base.packages),
                                       "variant": base.variant,
                                       **({"architecture": base.architecture} if base.architecture else {})}}))
    image_notes: dict[str, Any] = {"tag": image.tag, "buildDigest": plan.build_digest}
    if getattr(image, "layers", ()):
        image_notes["layers"] = list(image.layers)
    if getattr(image, "manifest_digest", None):
        image_notes["manifestDigest"] = image.manifest_digest
        image_notes["repository"] = image.pushed_to
    deps.append(ResourceDescriptor(name="image", uri=purl("docker", plan.manifest.name, image.id, "xrun"),
                                   digest={"sha256": image.id.split(":", 1)[1]}, annotations=image_notes))
    for deb in image.debs:
        deps.append(ResourceDescriptor(name=f"deb/{deb.name}", uri=deb.purl,
                                       digest={"sha256": deb.sha256} if deb.sha256 else {}))
    for wheel in image.wheels:
        deps.append(wheel_dependency(wheel))
    sources = {p.item.name: p.source for p in plan.data if p.source is not None}
    for item in fetched:
        notes: dict[str, Any] = {"path": item.container_path, "size": item.size, "unpacked": item.unpacked}
        if item.name in sources:
            notes["source"] = sources[item.name]
        if getattr(item, "files", None) is not None:
            notes["files"] = item.files
        deps.append(ResourceDescriptor(name=f"data/{item.name}", uri=data_uri(item.uri),
                                       digest={item.algorithm: item.hexdigest}, annotations=notes))
    code_digest = {"sha256": plan.code.digest.split(":", 1)[1]}
    if plan.code.git_commit:
        code_digest["gitCommit"] = plan.code.git_commit
    deps.append(ResourceDescriptor(name="code", digest=code_digest,
                                   annotations={"path": plan.to_json()["code"]["path"], "files": len(plan.code.files),
                                                "gitDirty": plan.code.git_dirty}))
    if plan.lockfile is not None:
        lock = plan.to_json()["lockfile"]
        deps.append(ResourceDescriptor(name="lockfile", digest={"sha256": lock["sha256"]},
                                       annotations={"path": lock["path"], "format": lock["format"],
                                                    "packages": len(lock["packages"])}))
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
    return ResourceDescriptor(name=f"wheel/{wheel.name}", uri=purl("pypi", wheel.name, wheel.version),
                              digest={"sha256": wheel.sha256}, download_location=None if local else wheel.url,
                              annotations=annotations)


def internal_parameters(plan: Plan, spec: ContainerSpec, settings: dict[str, Any],
                        hardware_mismatch: list[str]) -> dict[str, Any]:
    """What xrun decided: isolation, seed handling, the hardware shortfall it accepted, its own settings."""
    seed_env = {k: v for k, v in plan.env.items() if k not in plan.manifest.run.env}
    return {
        "hermetic": True,
        "isolation": spec.isolation(),
        "seeding": {"global": plan.seed, "applied": plan.apply_seeds, "environment": seed_env,
                    "libraries": list(SEEDED_LIBRARIES) if plan.apply_seeds else []},
        "hardwareMismatch": list(hardware_mismatch),
        "planDigest": plan.digest,
        "buildDigest": plan.build_digest,
        "settings": settings,
    }


def metrics_byproduct(metrics: dict[str, Any]) -> ResourceDescriptor | None:
    """The metrics read from the outputs, as a byproduct (SLSA's place for what a run produced besides its
    subjects); None when the run declared no metrics file."""
    if not metrics:
        return None
    return ResourceDescriptor(name="metrics", digest={"sha256": hashlib.sha256(canonical_json(metrics)).hexdigest()},
                              media_type="application/json", annotations={"values": metrics})


LISTING_INLINE_MAX = 1000  # files of a dataset listed in its byproduct; beyond, only the listing's digest


def dataset_byproducts(cache: Any, fetched: list[Any]) -> list[ResourceDescriptor]:
    """A byproduct per dataset tree: its canonical listing's digest (= the tree digest) and, when small, the
    files themselves, so `xrun reproduce` can name a changed file as data/<name>/<relpath>."""
    from runner.fetch.sources.tree import dataset_listing

    out = []
    for item in fetched:
        if getattr(item, "files", None) is None:
            continue
        files = dataset_listing(cache, item.hexdigest)
        notes: dict[str, Any] = {"files": item.files, "format": "xrun-tree/v1"}
        if files is not None and len(files) <= LISTING_INLINE_MAX:
            notes["entries"] = [[f.path, f.size, f.sha256] for f in files]
        out.append(ResourceDescriptor(name=f"data/{item.name}/listing", digest={"sha256": item.hexdigest},
                                      media_type="text/plain", annotations=notes))
    return out


def describe(ctx: RunContext, done: CompletedRun, *, record_sha256: str,
             engine: EngineInfo) -> tuple[list[Subject], ProvenanceFacts]:
    """The statement's subjects and the facts of its predicate, from the context and the stages' results."""
    plan, host, outputs, result = ctx.plan, ctx.host, done.outputs, done.execution.result
    settings = {"allowHardwareMismatch": ctx.options.allow_hardware_mismatch, "signed": ctx.signer is not None,
                "fetch": {"retries": ctx.options.fetch.retries, "parallel": ctx.options.fetch.parallel,
                          "verify": ctx.options.fetch.verify}}
    run_id, log_sha256 = done.run.run_id, result.log_sha256
    facts = ProvenanceFacts(
        manifest=plan.manifest.raw,
        manifest_sha256=plan.manifest.sha256,
        internal=internal_parameters(plan, done.execution.spec, settings, list(ctx.hardware_mismatch)),
        dependencies=tuple(dependencies(plan, list(done.fetched), done.image, ctx.options.reproduces)),
        builder_id=builder_id_for_host(socket.gethostname()),
        xrun_version=__version__,
        builder_dependencies=(
            ResourceDescriptor(name="xrun", uri=purl("pypi", "xrun", __version__),
                               digest={"sha256": xrun_distribution_digest()}),
            ResourceDescriptor(name="docker-engine", uri=purl("generic", "docker-engine", engine.version),
                               annotations={"os": engine.os}),
            ResourceDescriptor(name="container-runtime",
                               uri=purl("generic", engine.runtime, engine.runtime_version or None)),
        ),
        invocation_id=f"{run_id}/{uuid.uuid4()}",
        seed=ctx.options.seed,
        manifest_path=repo_path(plan.manifest.file),
        started_on=result.started_on,
        finished_on=result.finished_on,
        byproducts=tuple(d for d in (
            ResourceDescriptor(name="logs/run.log", digest={"sha256": log_sha256}, media_type="text/plain"),
            ResourceDescriptor(name="run.json", digest={"sha256": record_sha256}, media_type="application/json"),
            ResourceDescriptor(name="host", digest={"sha256": hashlib.sha256(canonical_json(host.to_json())).hexdigest()},
                               media_type="application/json", annotations=host.to_json()),
            metrics_byproduct(outputs.metrics),
            *dataset_byproducts(ctx.cache, list(done.fetched)),
        ) if d is not None),
    )
    return subjects(outputs), facts
