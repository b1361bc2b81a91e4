"""The run context: everything a run needs, resolved once before any work, then handed to each stage.

Like sigstore-python's SigningContext: `RunContext.create()` loads and plans the manifest, checks
the host against the hardware class, loads the signing key (a wrong password must not cost a
training run), connects to the engine and opens the cache; the stages then only do their work.
This is the seam every backend plugs into.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import hardware
from runner.codetree import OwnPaths, signing_key_path
from runner.fetch import Cache, FetchOptions
from runner.manifest import load_manifest
from runner.plan import CodeTree, Plan, resolve_plan
from runner.progress import ProgressSink, StderrProgress
from runner.rundir import default_runs_dir

if TYPE_CHECKING:
    from runner.attest import ResourceDescriptor, Signer
    from runner.runs.record import SchedulerInfo


@dataclass(frozen=True)
class RunOptions:
    """How to run: where runs go, the signing key, and the escape hatches."""

    runs_dir: Path | None = None
    key: Path | None = None
    key_password: bytes | None = None
    allow_hardware_mismatch: bool = False
    quiet: bool = False
    fetch: FetchOptions = field(default_factory=FetchOptions)
    reproduces: ResourceDescriptor | None = None  # the attestation this run reproduces
    mlflow: str | None = None  # --mlflow URI (runner/trackers/track.py resolves the rest)
    seed: int | None = None  # overrides the manifest's seeds.global (seed sweeps; recorded as externalParameters.seed)
    cache_dir: Path | None = None  # the cache root (a shared directory for cluster runs); default Cache.default()
    scheduler: SchedulerInfo | None = None  # what run.json's `scheduler` starts as (sweep members)
    tsa: str | None = None  # --tsa URL: an RFC 3161 timestamp over the signature (default $XRUN_TSA_URL)
    # A compute node never reads the submitter's key, but keeps it out of the code tree as the submitter did.
    submitter_key: Path | None = None
    code: CodeTree | None = None  # the code folder already hashed on this node (runner/node.py); else hashed here

    def open_cache(self) -> Cache:
        """--cache-dir, else Cache.default()."""
        return Cache(self.cache_dir) if self.cache_dir else Cache.default()

    def runs_folder(self, manifest_root: Path) -> Path:
        """--runs-dir, else <manifest folder>/.xrun/runs; absolute."""
        return (self.runs_dir or default_runs_dir(manifest_root)).absolute()

    def own_paths(self, manifest_root: Path) -> OwnPaths:
        """The cache, runs folder and signing key of this run: never part of its code tree."""
        return OwnPaths(cache=self.open_cache().root, runs=self.runs_folder(manifest_root),
                        key=signing_key_path(self.key) or self.submitter_key)


def timestamp_authority(given: str | None, signed: bool, environ: Mapping[str, str] = os.environ) -> str | None:
    """--tsa, else $XRUN_TSA_URL; a timestamp countersigns a signature, so an unsigned run gets none.

    An explicit --tsa without a signing key is a usage error; the CI-wide XRUN_TSA_URL simply does
    not apply to the unsigned runs of that CI.
    """
    from runner.attest.timestamp import tsa_url

    url = tsa_url(given, environ)
    if url is not None and not signed:
        if given:
            from runner.errors import UsageError

            raise UsageError("--tsa timestamps the attestation's signature: give a signing key too "
                             "(--key or XRUN_SIGNING_KEY)")
        return None
    return url


@dataclass(frozen=True)
class RunContext:
    """Plan, host, signer, engine client, cache and options of one run, resolved before it starts."""

    plan: Plan
    host: hardware.Host
    hardware_mismatch: tuple[str, ...]
    signer: Signer | None
    client: Any  # docker.DockerClient
    cache: Cache
    runs_dir: Path
    options: RunOptions
    progress: ProgressSink
    tsa_url: str | None = None  # the Time-Stamping Authority the attestation's signature is sent to
    gpu_allocation: hardware.GpuAllocation | None = None  # the GPUs a scheduler gave this job (Slurm's variables)

    @classmethod
    def create(cls, manifest_path: Path, options: RunOptions, *, progress: ProgressSink | None = None) -> "RunContext":
        """Resolve everything a run needs; raises XrunError (with its exit code) before any work is done."""
        from runner.engine.client import docker_client

        manifest = load_manifest(manifest_path, verdicts=options.open_cache().root / "verdicts" / "manifest")
        plan = resolve_plan(manifest, options.own_paths(manifest.root), options.code).with_seed(options.seed)
        sink = progress or StderrProgress(options.quiet)
        warning = plan.code.summary().warning()
        if warning:
            sink.warn(warning)
        host = hardware.detect_host()
        allocation = hardware.allocated_gpus() if plan.hardware.gpus else None
        mismatch = hardware.shortfalls(plan.hardware, host, allocation)
        if mismatch and not options.allow_hardware_mismatch:
            hardware.check_host(plan.hardware, host, allocation)
        key_path = signing_key_path(options.key)
        signer = None
        if key_path:  # only then: the signing code loads the crypto library, which an unsigned run never needs
            from runner.attest import load_signer

            signer = load_signer(key_path, options.key_password)
        tsa = timestamp_authority(options.tsa, signer is not None)
        return cls(plan=plan, host=host, hardware_mismatch=tuple(mismatch), signer=signer, client=docker_client(),
                   cache=options.open_cache(), runs_dir=options.runs_folder(manifest.root), options=options,
                   progress=sink, tsa_url=tsa, gpu_allocation=allocation)
