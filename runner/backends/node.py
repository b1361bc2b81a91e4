"""The node side of a cluster run: `xrun node-run RUN_DIR`, the local run on the submitted, frozen plan.

The submitter (runner/submit.py) prepared RUN_DIR on shared storage: the manifest copy, plan.json,
run.json and job.json (the manifest's path, the seed, the plan digest, the image by ID and where to
get it, the shared cache). Here xrun re-plans the manifest and refuses a different plan, gets the
image (pull by digest, or `docker load` from the shared directory) and refuses a different image
ID (exit 3), then runs the very stages of `xrun run` (runner/pipeline.py run_in) with the local
backend. The statement it writes is unsigned (node.intoto.jsonl): no key reaches a compute node;
the submitter re-hashes the outputs and signs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import EnvironmentProblem, IntegrityError, UsageError, XrunError
from runner.rundir import RunDir, rfc3339, utc_now, write_json
from runner.runs.record import RunRecord, RunStatus, SchedulerState
from runner.wire import fields_to_wire, snake

JOB_FILE = "job.json"


@dataclass(frozen=True)
class ImageSource:
    """The image the node must run: its ID, its tag, and where to get it."""

    id: str  # sha256:… image ID: the node refuses any other
    tag: str  # xrun/<name>:<build digest prefix>
    reference: str | None = None  # REGISTRY/REPO@sha256:… when pushed (--registry)
    archive: str | None = None  # a `docker save` archive in the shared directory otherwise


@dataclass(frozen=True)
class NodeJob:
    """What the submitter hands to the node in job.json."""

    manifest: str  # absolute path on shared storage
    plan_digest: str
    image: ImageSource
    cache_dir: str
    seed: int | None = None
    allow_hardware_mismatch: bool = False
    signing_key: str | None = None  # the submitter's key path: left out of the code tree here too, never read

    def to_json(self) -> dict[str, Any]:
        """job.json (camelCase)."""
        return fields_to_wire(self)

    @classmethod
    def load(cls, path: Path) -> "NodeJob":
        """Read job.json; a usage error naming it when it is missing or malformed."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            values = {snake(k): v for k, v in data.items()}
            values["image"] = ImageSource(**{snake(k): v for k, v in values["image"].items()})
            return cls(**values)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UsageError(f"{path}: not a job file written by `xrun submit` ({exc})") from None

    def save(self, path: Path) -> None:
        """Write atomically."""
        write_json(path, self.to_json())


def node_run(run_dir: Path) -> Any:
    """Run the prepared run in run_dir on this node; the RunSummary (raises XrunError, recorded in run.json)."""
    from runner.backends.slurm import job_from_env, with_slurm_builder
    from runner.context import RunContext, RunOptions
    from runner.fetch import FetchOptions
    from runner.pipeline import NODE_STATEMENT, run_in
    from runner.stages import StageHooks
    from runner.engine.labels import runner_identity

    run_dir = run_dir.absolute()
    run = RunDir(run_dir.name, run_dir)
    record = RunRecord.load(run.record)
    if record is None:
        raise UsageError(f"{run.record}: no run record; `xrun node-run` runs a directory prepared by `xrun submit`")
    job = NodeJob.load(run_dir / JOB_FILE)
    slurm = job_from_env()
    record.status, record.runner, record.error = RunStatus.RUNNING, runner_identity(), None
    record.started_on = rfc3339(utc_now())
    if record.scheduler is not None:
        record.scheduler.state = SchedulerState.RUNNING
        record.scheduler.node = slurm.node if slurm else os.uname().nodename
    record.save(run.record)
    try:
        options = RunOptions(runs_dir=run_dir.parent, allow_hardware_mismatch=job.allow_hardware_mismatch,
                             seed=job.seed, cache_dir=Path(job.cache_dir), fetch=FetchOptions(quiet=True),
                             submitter_key=Path(job.signing_key) if job.signing_key else None)
        ctx = RunContext.create(Path(job.manifest), options)
        if ctx.plan.digest != job.plan_digest:
            raise IntegrityError(f"{job.manifest}: its plan is now {ctx.plan.digest[:12]}, not the submitted "
                                 f"{job.plan_digest[:12]} (the manifest, code or lockfile changed after `xrun "
                                 "submit`); submit again")
    except XrunError as exc:
        _failed(run, record, exc)
        raise
    except KeyboardInterrupt:
        _failed(run, record, XrunError("interrupted before the run started"), status=RunStatus.INTERRUPTED)
        raise
    record.host, record.hardware_mismatch = ctx.host.to_json(), list(ctx.hardware_mismatch)
    record.save(run.record)
    facts = (lambda f: with_slurm_builder(f, slurm, run.run_id, job.image.reference)) if slurm else None
    hooks = StageHooks(image=lambda c: ensure_image(c, job.image), facts=facts, attestation=NODE_STATEMENT)
    return run_in(ctx, run, record, hooks)


def _failed(run: RunDir, record: RunRecord, exc: XrunError, status: RunStatus = RunStatus.FAILED) -> None:
    record.status, record.error = status, exc.message
    record.finished_on = rfc3339(utc_now())
    record.save(run.record)


def ensure_image(ctx: Any, source: ImageSource) -> Any:
    """The submitted image on this node's engine, by ID: pulled by digest or loaded; any other image is refused."""
    import docker.errors

    from runner.build.image import cached_image

    client = ctx.client
    where = source.reference or source.tag
    try:
        if source.reference:
            _pull(client, source.reference)
            image = client.images.get(source.reference)
            if image.id == source.id:  # the plan's tag, so the image's build labels are found as for a local run
                repo, _, tag = source.tag.rpartition(":")
                client.api.tag(image.id, repo, tag, force=False)
        else:
            try:
                image = client.images.get(source.tag)
            except docker.errors.ImageNotFound:
                _load(client, Path(str(source.archive)))
                image = client.images.get(source.tag)
    except docker.errors.ImageNotFound:
        raise EnvironmentProblem(f"the image {where} is not on this node and could not be loaded") from None
    if image.id != source.id:
        raise IntegrityError(f"the image {where} on this node is {image.id}, not the submitted {source.id}: "
                             "refusing to run a different image (remove or re-tag it, or submit again)")
    built = cached_image(client, ctx.plan, ctx.cache)
    if built is None or built.id != source.id:
        raise IntegrityError(f"the image {source.id} does not carry the labels of this plan's build; submit again")
    return built


def _pull(client: Any, reference: str) -> None:
    import docker.errors

    try:
        client.images.get(reference)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(reference)
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"cannot pull {reference} on this node: {exc.explanation or exc}") from None


def _load(client: Any, archive: Path) -> None:
    try:
        with open(archive, "rb") as f:
            client.images.load(f)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{archive}: the image archive is not on this node; is the shared directory "
                                 "mounted here?") from None
