"""The node side of a cluster run: `xrun node-run RUN_DIR`, the pipeline on the submitted, frozen plan.

A caller of the pipeline, not a backend. The submitter (runner/submit.py, runner/backends/slurm.py)
prepared RUN_DIR on shared storage: the manifest copy, plan.json, run.json and job.json (the
manifest's path, the seed, the plan digest, the image by ID and where to get it, the shared cache).
Here xrun re-plans the manifest and refuses a different plan (the code folder is hashed by the first
member that runs on this node; the next ones reuse its tree: _code_file), gets the image (pull by
digest, or `docker load` from the shared directory, once per node) and refuses a different image
ID (exit 3), then runs the very stages of `xrun run` (runner/pipeline.py run_in) on this node's
engine. The statement it writes is unsigned (node.intoto.jsonl): no key reaches a compute node;
the submitter re-hashes the outputs and signs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from runner.backends.interface import JOB_FILE, NodeJob
from runner.backends.slurm import job_from_env, with_slurm_builder
from runner.build.distribute import ImageSource
from runner.build.image import BuiltImage, cached_image
from runner.context import RunContext, RunOptions
from runner.errors import EnvironmentProblem, IntegrityError, UsageError, XrunError
from runner.fetch import FetchOptions
from runner.engine.labels import runner_identity
from runner.hashing import FileDigest
from runner.pipeline import run_in
from runner.plan import CodeTree, PlanRecord
from runner.rundir import RunDir, rfc3339, utc_now, write_json
from runner.runs.record import RunRecord, RunStatus, SchedulerState
from runner.stages import RunSummary, StageHooks


def node_run(run_dir: Path) -> RunSummary:
    """Run the prepared run in run_dir on this node; the RunSummary (raises XrunError, recorded in run.json)."""
    run_dir = run_dir.absolute()
    run = RunDir(run_dir.name, run_dir)
    record = RunRecord.load(run.record)
    if record is None:
        raise UsageError(f"{run.record}: no run record; `xrun node-run` runs a directory prepared by `xrun submit`")
    job = NodeJob.load(run_dir / JOB_FILE)
    slurm = job_from_env()
    if record.status != RunStatus.SUBMITTED:  # the scheduler requeued the job: this directory saw an attempt already
        _new_attempt(run, record)
    record.status, record.runner, record.error = RunStatus.RUNNING, runner_identity(), None
    record.started_on = rfc3339(utc_now())
    if record.scheduler is not None:
        record.scheduler.state = SchedulerState.RUNNING
        record.scheduler.node = slurm.node if slurm else os.uname().nodename
    record.save(run.record)
    code_file = _code_file(job, run)
    try:
        options = RunOptions(runs_dir=run_dir.parent, allow_hardware_mismatch=job.allow_hardware_mismatch,
                             seed=job.seed, cache_dir=Path(job.cache_dir), fetch=FetchOptions(quiet=True),
                             submitter_key=Path(job.signing_key) if job.signing_key else None,
                             code=_known_code(code_file))
        ctx = RunContext.create(Path(job.manifest), options)
        if ctx.plan.digest != job.plan_digest:
            raise IntegrityError(f"{job.manifest}: its plan is now {ctx.plan.digest[:12]}, not the submitted "
                                 f"{job.plan_digest[:12]} (the manifest, code or lockfile changed after `xrun "
                                 "submit`); submit again")
        if options.code is None:
            _remember_code(code_file, ctx.plan.code)
    except XrunError as exc:
        _failed(run, record, exc)
        raise
    except KeyboardInterrupt:
        _failed(run, record, XrunError("interrupted before the run started"), status=RunStatus.INTERRUPTED)
        raise
    record.host, record.hardware_mismatch = ctx.host.to_json(), list(ctx.hardware_mismatch)
    record.save(run.record)
    facts = (lambda f: with_slurm_builder(f, slurm, run.run_id, job.image.reference)) if slurm else None
    hooks = StageHooks(image=lambda c: ensure_image(c, job.image), facts=facts, attestation=run.node_statement.name)
    return run_in(ctx, run, record, hooks)


def _code_file(job: NodeJob, run: RunDir) -> Path | None:
    """Where this node keeps the code tree of the submitted plan, hashed by the first member that ran here.

    The image holds the code and its ID is checked, so the code folder is hashed once per node (to refuse
    a checkout changed after `xrun submit` early), not once per member: a 200-member sweep of a large
    repository on shared storage would read it 200 times. In the user's own folder of the node's
    temporary directory; None (hash here) when that folder is not safely ours.
    """
    folder = _user_tmp()
    if folder is None:
        return None
    try:
        code = PlanRecord.read(run.path / "plan.json").raw["code"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    key = hashlib.sha256(f"{job.manifest}\0{code.get('digest')}".encode()).hexdigest()[:32]
    return folder / f"code-{key}.json"


def _user_tmp() -> Path | None:
    """This user's private folder in the node's temporary directory (made 0700); None when it is not safely ours."""
    # Shared by every user of the node: a folder another user made (or may write) is never trusted.
    folder = Path(tempfile.gettempdir()) / f"xrun-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def _known_code(path: Path | None) -> CodeTree | None:
    """The code tree an earlier member of this node hashed; None when there is none or it does not read."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CodeTree(root=Path(data["root"]), digest=data["digest"],
                        files=tuple(FileDigest(str(p), str(h), int(n), int(m)) for p, h, n, m in data["files"]),
                        git_commit=data["gitCommit"], git_dirty=data["gitDirty"], source=data["source"],
                        left_out=tuple(data["leftOut"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_code(path: Path | None, code: CodeTree) -> None:
    if path is None:
        return
    try:
        write_json(path, {"root": str(code.root), "digest": code.digest, "gitCommit": code.git_commit,
                          "gitDirty": code.git_dirty, "source": code.source, "leftOut": list(code.left_out),
                          "files": [[f.path, f.sha256, f.size, f.mode] for f in code.files]})
    except OSError:
        pass  # the next member hashes the folder itself


def _new_attempt(run: RunDir, record: RunRecord) -> None:
    """Keep the earlier attempt in the record and start clean: its outputs and statement never mix with this one's."""
    node = record.scheduler.node if record.scheduler is not None else None
    record.attempts.append({"attempt": len(record.attempts) + 1, "status": record.status, "node": node,
                            "startedOn": record.started_on, "finishedOn": record.finished_on,
                            "exitCode": record.exit_code, "error": record.error})
    for path in (run.node_statement, run.attestation, run.bundle):
        path.unlink(missing_ok=True)
    shutil.rmtree(run.outputs, ignore_errors=True)
    run.outputs.mkdir()
    record.outputs, record.metrics, record.metric_steps, record.attestation = {}, {}, {}, None
    record.exit_code = record.finished_on = record.container_started_on = record.container_status = None
    record.log_sha256 = None


def _failed(run: RunDir, record: RunRecord, exc: XrunError, status: RunStatus = RunStatus.FAILED) -> None:
    record.status, record.error = status, exc.message
    record.finished_on = rfc3339(utc_now())
    record.save(run.record)


def ensure_image(ctx: RunContext, source: ImageSource) -> BuiltImage:
    """The submitted image on this node's engine, by ID: pulled by digest or loaded; any other image is refused."""
    import docker.errors

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
            image = _loaded_once(client, source)
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


def _loaded_once(client: Any, source: ImageSource) -> Any:
    """The image from the shared archive, loaded once per node: the members a node starts at once wait for the
    first one's `docker load` (a lock in the user's private temporary folder) instead of each loading it again."""
    import docker.errors

    try:
        return client.images.get(source.tag)
    except docker.errors.ImageNotFound:
        pass
    archive = Path(str(source.archive))
    lock = _open_load_lock(source.id)
    if lock is None:  # no private folder: loaded without the lock (at worst, members of this node load it twice)
        _load(client, archive)
        return client.images.get(source.tag)
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return client.images.get(source.tag)  # another member of this node loaded it meanwhile
        except docker.errors.ImageNotFound:
            _load(client, archive)
            return client.images.get(source.tag)


def _open_load_lock(image_id: str) -> BinaryIO | None:
    """The lock file of loading image_id, in this user's private folder; None when there is none to use."""
    # Not in the shared temporary directory itself: another user's lock file there cannot be opened.
    folder = _user_tmp()
    if folder is None:
        return None
    try:
        return open(folder / f"load-{image_id.split(':', 1)[-1][:32]}.lock", "a+b")
    except OSError:
        return None


def _load(client: Any, archive: Path) -> None:
    """`docker load` of the shared archive; EnvironmentProblem naming it when it cannot be read or loaded."""
    import docker.errors

    try:
        with open(archive, "rb") as f:
            client.images.load(f)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{archive}: the image archive is not on this node; is the shared directory "
                                 "mounted here?") from None
    except docker.errors.APIError as exc:  # before OSError: it is one (requests' HTTPError)
        raise EnvironmentProblem(f"{archive}: the engine refused to load the image archive "
                                 f"({exc.explanation or exc}); check the node's disk space, or submit again") from None
    except OSError as exc:
        raise EnvironmentProblem(f"{archive}: cannot read the image archive on this node ({exc.strerror or exc}); "
                                 "check the shared directory's permissions, or submit again") from None
