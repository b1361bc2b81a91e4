"""`xrun submit` and the commands around it: the submitting side of cluster runs and seed sweeps.

Submitting does what `xrun run` does up to the run stage, on this host: validate, plan, fetch and
verify the data into the shared cache, build the image (an unchanged plan builds nothing), and make
the image reachable from the nodes (pushed by digest to --registry, or saved once into the shared
directory). Then it prepares one run directory per seed and hands them to the scheduler as one job
(or one job array). `collect` re-hashes a finished run's outputs, checks them against the node's
unsigned statement and signs it here: the key never reaches a node.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.backends.node import JOB_FILE, ImageSource, NodeJob
from runner.context import RunContext, RunOptions, with_seed
from runner.errors import EnvironmentProblem, IntegrityError, UsageError, XrunError
from runner.rundir import RunDir, new_run_id, rfc3339, utc_now, write_atomic, write_json
from runner.runs.record import RunRecord, RunStatus, SchedulerInfo, SchedulerState
from runner.wire import fields_to_wire

BACKENDS = ("local", "slurm", "kubernetes")
MAX_SEEDS = 10_000
POLL_S = 0.25  # the first poll of the scheduler; then 1.5× longer each time, up to POLL_MAX_S
POLL_MAX_S = 5.0


@dataclass(frozen=True)
class SubmitOptions:
    """How to submit: the backend, where things live for the nodes, what to pass to the scheduler."""

    run: RunOptions
    backend: str = "slurm"
    seeds: tuple[int, ...] = ()
    shared_dir: Path | None = None
    registry: str | None = None  # HOST[:PORT]/REPO
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()
    parallel: int = 1  # local sweeps
    wait: bool = False
    render: Path | None = None  # kubernetes: write the manifests here


@dataclass(frozen=True)
class SubmittedRun:
    """One run of a submission."""

    run_id: str
    run_dir: Path
    seed: int | None
    job: str | None  # JOB or JOB_INDEX
    state: str  # scheduler state, or the run's status for local runs
    attestation: Path | None = None
    error: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    """What `xrun submit` reports."""

    backend: str
    sweep: str | None
    job_id: str | None
    image_id: str
    image_reference: str | None
    script: Path | None
    runs: tuple[SubmittedRun, ...]
    rendered: tuple[Path, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return fields_to_wire(self)


def parse_seeds(text: str) -> tuple[int, ...]:
    """'1-10', '1,5,9' or a mix ('1-3,7') → the seeds in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part.lstrip("-")[1:] or (part.count("-") == 1 and not part.startswith("-")):
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UsageError(f"--seeds {text!r}: give a range like 1-10 or a list like 1,5,9 (integers)") from None
        if len(seeds) > MAX_SEEDS:
            raise UsageError(f"--seeds {text!r}: more than {MAX_SEEDS} seeds")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds {text!r}: seeds are non-negative integers")
    return tuple(dict.fromkeys(seeds))


# --- submit ----------------------------------------------------------------------------------------


def submit(manifest: Path, options: SubmitOptions) -> SubmitResult:
    """Submit the experiment (one run, or one per seed) to the chosen backend."""
    if options.backend not in BACKENDS:
        raise UsageError(f"--backend {options.backend!r}: choose one of {', '.join(BACKENDS)}")
    if options.backend == "local":
        return _submit_local(manifest, options)
    if options.backend == "kubernetes":
        from runner.backends.kubernetes import submit_kubernetes

        return submit_kubernetes(manifest, options)
    return _submit_slurm(manifest, options)


def shared_cache(options: SubmitOptions) -> Path:
    """The cache the nodes read: <shared-dir>/cache, else XRUN_CACHE_DIR (which must be on shared storage)."""
    if options.shared_dir is not None:
        root = options.shared_dir.absolute()
        _check_writable(root, "--shared-dir")
        return root / "cache"
    env = os.environ.get("XRUN_CACHE_DIR")
    if not env:
        raise UsageError("give --shared-dir DIR (a directory every node mounts at the same path), or set "
                         "XRUN_CACHE_DIR to a cache on shared storage")
    _check_writable(Path(env).absolute(), "XRUN_CACHE_DIR")
    return Path(env).absolute()


def _check_writable(path: Path, what: str) -> None:
    """EnvironmentProblem unless a file can be created in path (made when missing); leaves nothing behind."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".xrun-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EnvironmentProblem(f"{what} {path}: not writable ({exc.strerror}); give a shared directory this user "
                                 "can write") from None


def check_registry(registry: str) -> str:
    """HOST[:PORT] of --registry HOST[:PORT]/REPO; EnvironmentProblem when nothing answers there."""
    host, _, repo = registry.partition("/")
    if not repo or not host:
        raise UsageError(f"--registry {registry!r}: give HOST[:PORT]/REPO, e.g. registry.example:5000/team/xrun")
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
    try:
        with socket.create_connection((name, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"--registry {registry}: cannot reach {host} ({exc}); check the address, or leave "
                                 "--registry out to ship the image through the shared directory") from None
    return host


def _prepare(manifest: Path, options: SubmitOptions) -> tuple[RunContext, Path]:
    """Context (hardware not checked here: the nodes have it), data fetched and verified into the shared cache."""
    from runner.fetch import fetch_data

    cache_dir = shared_cache(options)
    run_options = dataclasses.replace(options.run, allow_hardware_mismatch=True, cache_dir=cache_dir, seed=None)
    ctx = RunContext.create(manifest, run_options)
    # Verified as `xrun run` verifies: fingerprints, or every byte re-hashed with --verify-data.
    fetch_data(ctx.plan, ctx.cache, ctx.options.fetch)
    return ctx, cache_dir


def distribute_image(ctx: RunContext, built: Any, options: SubmitOptions, cache_dir: Path) -> ImageSource:
    """Push the image by digest to --registry, or save it once into the shared directory."""
    if options.registry:
        return ImageSource(id=built.id, tag=built.tag, reference=_push(ctx.client, built, options.registry))
    images = cache_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    archive = images / f"{built.id.split(':', 1)[1]}.tar"
    if not archive.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".partial", dir=images)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in ctx.client.images.get(built.id).save(named=built.tag):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, archive)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return ImageSource(id=built.id, tag=built.tag, archive=str(archive))


def _push(client: Any, built: Any, registry: str) -> str:
    """Push under REGISTRY/REPO:<build tag> and return REGISTRY/REPO@<the pushed manifest digest>."""
    check_registry(registry)
    tag = built.tag.rpartition(":")[2]
    client.api.tag(built.id, registry, tag, force=True)
    digest = None
    try:
        for event in client.api.push(registry, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise EnvironmentProblem(f"--registry {registry}: the push failed: {event['error']}")
            digest = (event.get("aux") or {}).get("Digest") or digest
    except EnvironmentProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - the engine's error, in one line
        raise EnvironmentProblem(f"--registry {registry}: the push failed: {exc}") from None
    finally:
        try:
            client.api.remove_image(f"{registry}:{tag}", noprune=True)
        except Exception:  # noqa: BLE001 - only a name
            pass
    if digest is None:
        raise EnvironmentProblem(f"--registry {registry}: the registry reported no digest for the pushed image")
    return f"{registry}@{digest}"


def _member_plan(plan: Any, seed: int | None) -> Any:
    """The plan with seeds.global replaced (same build digest: no rebuild per seed)."""
    from runner.plan import run_env

    if seed is None:
        return plan
    manifest = with_seed(plan.manifest, seed)
    return dataclasses.replace(plan, manifest=manifest, seed=seed, env=run_env(manifest))


def _prepare_runs(ctx: RunContext, seeds: Sequence[int | None], image: ImageSource, cache_dir: Path,
                  scheduler: SchedulerInfo, allow_mismatch: bool, *, sweep: bool) -> list[RunDir]:
    """One run directory per seed: manifest copy, plan, job.json, run.json ('submitted').

    A sweep's members are <sweep id>-<array index>, so Slurm's %a finds each member's log folder.
    """
    from runner.codetree import signing_key_path

    base = new_run_id()
    runs: list[RunDir] = []
    key = signing_key_path(ctx.options.key)
    try:
        for index, seed in enumerate(seeds):
            plan = _member_plan(ctx.plan, seed)
            run_id = f"{base}-{index}" if sweep else base
            run = RunDir(run_id, ctx.runs_dir / run_id)
            try:
                (run.path / "logs").mkdir(parents=True)
                run.outputs.mkdir()
            except OSError as exc:
                raise UsageError(f"{ctx.runs_dir}: cannot create the run directory ({exc.strerror}); choose "
                                 "another with --runs-dir (on shared storage)") from None
            runs.append(run)
            write_atomic(run.path / "manifest.yaml", plan.manifest.text)
            write_json(run.path / "plan.json", plan.to_json())
            NodeJob(manifest=str(plan.manifest.file), plan_digest=plan.digest, image=image, cache_dir=str(cache_dir),
                    seed=seed, allow_hardware_mismatch=allow_mismatch,
                    signing_key=str(key.absolute()) if key else None).save(run.path / JOB_FILE)
            member = dataclasses.replace(scheduler, seed=seed, array_index=index if sweep else None,
                                         sweep=base if sweep else None)
            RunRecord(run_id=run_id, name=plan.manifest.name, status=RunStatus.SUBMITTED,
                      manifest=str(plan.manifest.file), manifest_sha256=plan.manifest.sha256, plan_digest=plan.digest, started_on=rfc3339(utc_now()),
                      hardware_class=plan.hardware.name, image_id=image.id, scheduler=member).save(run.record)
    except BaseException:
        _remove(runs)
        raise
    return runs


def _remove(runs: Sequence[RunDir]) -> None:
    """Nothing half-written: the run directories of a submission that did not happen go."""
    for run in runs:
        shutil.rmtree(run.path, ignore_errors=True)


def _submit_slurm(manifest: Path, options: SubmitOptions) -> SubmitResult:
    from runner.backends import slurm
    from runner.build.image import build_image

    slurm.require_tools()
    if options.partition:
        slurm.check_partition(options.partition)
    if options.registry:
        check_registry(options.registry)
    cluster = slurm.cluster_name()
    ctx, cache_dir = _prepare(manifest, options)
    built = build_image(ctx.plan, ctx.cache, ctx.client, quiet=ctx.options.quiet)
    image = distribute_image(ctx, built, options, cache_dir)
    seeds: list[int | None] = list(options.seeds) or [None]
    sweep = bool(options.seeds)
    scheduler = SchedulerInfo(backend="slurm", state=SchedulerState.PENDING, cluster=cluster or None)
    runs = _prepare_runs(ctx, seeds, image, cache_dir, scheduler, options.run.allow_hardware_mismatch, sweep=sweep)
    try:
        first = runs[0]
        log = (str(first.path.parent / f"{first.run_id.rsplit('-', 1)[0]}-%a" / "logs" / "slurm.log") if sweep
               else str(first.path / "logs" / "slurm.log"))
        spec = slurm.ScriptSpec(
            job_name=f"xrun-{ctx.plan.manifest.name}", log=log, hardware=ctx.plan.hardware,
            timeout_s=ctx.plan.timeout_s, run_dirs=tuple(r.path for r in runs),
            xrun=(sys.executable, "-m", "runner.cli"), array=sweep, partition=options.partition,
            account=options.account, qos=options.qos, extra=options.sbatch_args)
        script = (first.path.parent / f".{first.run_id}.sbatch") if sweep else first.path / "job.sbatch"
        write_atomic(script, slurm.render_script(spec).encode(), mode=0o755)
        # Held until run.json names the job: the node must never start before the submitter's last write.
        job_id = slurm.sbatch(script, hold=True)
    except BaseException:
        _remove(runs)
        if sweep:
            (runs[0].path.parent / f".{runs[0].run_id}.sbatch").unlink(missing_ok=True)
        raise
    if sweep:
        final_script = runs[0].path / "job.sbatch"
        os.replace(script, final_script)
        script = final_script
    for run in runs:
        record = RunRecord.load(run.record)
        assert record is not None and record.scheduler is not None
        record.scheduler.job_id = job_id
        record.save(run.record)
    if not _holds(options.sbatch_args):
        slurm.release(job_id)
    result_runs = tuple(SubmittedRun(run_id=r.run_id, run_dir=r.path, seed=s, job=job_id if not sweep else
                                     f"{job_id}_{i}", state="pending") for i, (r, s) in enumerate(zip(runs, seeds)))
    result = SubmitResult(backend="slurm", sweep=runs[0].run_id.rsplit("-", 1)[0] if sweep else None, job_id=job_id,
                          image_id=image.id, image_reference=image.reference, script=script, runs=result_runs)
    if options.wait:
        finished = tuple(wait_run(r.run_dir, key=options.run.key, key_password=options.run.key_password)
                         for r in result_runs)
        result = dataclasses.replace(result, runs=finished)
    return result


def _holds(sbatch_args: Sequence[str]) -> bool:
    """Whether the user asked Slurm to hold the job (--sbatch-arg=--hold): then it stays held for them."""
    return any(a in ("--hold", "-H") for a in sbatch_args)


def _submit_local(manifest: Path, options: SubmitOptions) -> SubmitResult:
    """A seed sweep (or one run) on this host: in sequence, or --parallel N at once."""
    from runner.pipeline import run_experiment

    seeds: list[int | None] = list(options.seeds) or [None]
    sweep = new_run_id() if options.seeds else None

    def one(index: int, seed: int | None) -> SubmittedRun:
        scheduler = SchedulerInfo(backend="local", state=SchedulerState.RUNNING, sweep=sweep, array_index=index,
                                  seed=seed)
        run_options = dataclasses.replace(options.run, seed=seed, scheduler=scheduler if sweep else None)
        try:
            summary = run_experiment(manifest, run_options)
        except XrunError as exc:
            if len(seeds) == 1:
                raise
            return SubmittedRun(run_id="", run_dir=Path(), seed=seed, job=None, state="failed", error=exc.message)
        return SubmittedRun(run_id=summary.run_id, run_dir=summary.run_dir, seed=seed, job=None,
                            state="succeeded", attestation=summary.attestation)

    if options.parallel > 1 and len(seeds) > 1:
        with ThreadPoolExecutor(max_workers=options.parallel) as pool:
            done = list(pool.map(lambda pair: one(*pair), enumerate(seeds)))
    else:
        done = [one(i, s) for i, s in enumerate(seeds)]
    image_id = ""
    for r in done:
        record = RunRecord.load(r.run_dir / "run.json") if r.run_id else None
        image_id = image_id or (record.image_id if record and record.image_id else "")
    return SubmitResult(backend="local", sweep=sweep, job_id=None, image_id=image_id, image_reference=None,
                        script=None, runs=tuple(done))


# --- state, collect, wait, cancel ----------------------------------------------------------------


def refresh(run_dir: Path) -> RunRecord | None:
    """run.json with the scheduler's current word on its job written in (cluster runs); None when unreadable."""
    from runner.backends import slurm

    record = RunRecord.load(run_dir / "run.json")
    if record is None or record.scheduler is None or record.scheduler.backend != "slurm":
        return record
    sched = record.scheduler
    if sched.final or not sched.job_id or shutil.which("squeue") is None:
        return record
    try:
        states = slurm.job_states([sched.job_id])
    except XrunError:
        return record
    state = states.get(sched.job_ref or "")
    if state is None:
        return record
    if not state.state.final:
        # The node owns run.json while its job runs: the state is only reported, never written, here.
        sched.state, sched.node, sched.reason = state.state, state.node or sched.node, state.reason
        return record
    # The job is over, so the node's last write is on disk: read it again, then add the scheduler's word.
    record = RunRecord.load(run_dir / "run.json") or record
    sched = record.scheduler or sched
    record.scheduler = sched
    sched.state, sched.node, sched.reason = state.state, state.node or sched.node, state.reason
    _settle(record, state.slurm_state)
    record.save(run_dir / "run.json")
    return record


def _settle(record: RunRecord, slurm_state: str) -> None:
    """A finished job whose run did not succeed: say why in the record (the node may never have started)."""
    sched = record.scheduler
    assert sched is not None
    if record.status == RunStatus.SUCCEEDED and sched.state == SchedulerState.COMPLETED:
        return
    reasons = {SchedulerState.CANCELLED: "the job was cancelled (scancel)",
               SchedulerState.TIMED_OUT: "the job reached its Slurm time limit (--time) and was stopped",
               SchedulerState.FAILED: f"the job failed ({slurm_state})"}
    if sched.state in (SchedulerState.CANCELLED, SchedulerState.TIMED_OUT) or record.status.unfinished:
        record.status = RunStatus.INTERRUPTED if sched.state == SchedulerState.CANCELLED else RunStatus.FAILED
        node_error = f": {record.error}" if record.error and sched.state == SchedulerState.FAILED else ""
        record.error = reasons.get(sched.state, f"the job ended {slurm_state}") + node_error
        record.finished_on = record.finished_on or rfc3339(utc_now())
        record.attestation = None


def collect(run_dir: Path, *, key: Path | None, key_password: bytes | None = None,
            tsa: str | None = None) -> SubmittedRun:
    """Re-hash a finished run's outputs, check them against the node's statement, and sign it here."""
    from runner.attest import load_signer, read_attestation, write_attestation
    from runner.attest.statement import statement_problems
    from runner.codetree import signing_key_path
    from runner.context import timestamp_authority
    from runner.manifest import OutputSpec
    from runner.outputs import collect_outputs
    from runner.pipeline import NODE_STATEMENT

    record = refresh(run_dir)
    if record is None:
        raise UsageError(f"{run_dir}: no run.json; give a run directory or id")
    run = RunDir(run_dir.name, run_dir)
    sched = record.scheduler
    job = sched.job_ref if sched else None
    if sched is not None and not sched.final and record.status.unfinished:
        raise UsageError(f"run {run.run_id} is still {sched.state}; `xrun wait {run.run_id}` waits for it")
    if run.attestation.exists():
        return SubmittedRun(run.run_id, run.path, sched.seed if sched else None, job, _state(record),
                            attestation=run.attestation)
    node_statement = run.path / NODE_STATEMENT
    if record.status != RunStatus.SUCCEEDED or not node_statement.exists():
        return SubmittedRun(run.run_id, run.path, sched.seed if sched else None, job, _state(record),
                            error=record.error or "the node wrote no statement")
    key_path = signing_key_path(key)
    signer = load_signer(key_path, key_password) if key_path else None
    tsa_url = timestamp_authority(tsa, signer is not None)
    statement = json.loads(read_attestation(node_statement).envelopes[0].payload)
    problems = statement_problems(statement)
    if problems:
        raise IntegrityError(f"{node_statement}: the node's statement is malformed: {problems[0]}; not signed")
    plan = json.loads((run.path / "plan.json").read_text(encoding="utf-8"))
    specs = tuple(OutputSpec(o["path"], o.get("metrics", False), o.get("tolerance") or {}) for o in plan["outputs"])
    outputs = collect_outputs(specs, run.outputs)
    claimed = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    if claimed != outputs.digests():
        differ = sorted(k for k in set(claimed) | set(outputs.digests()) if claimed.get(k) != outputs.digests().get(k))
        raise IntegrityError(f"{run.outputs}: the outputs on shared storage differ from the node's statement "
                             f"({', '.join(differ[:3])}); not signed")
    internal = statement["predicate"]["buildDefinition"].get("internalParameters") or {}
    if internal.get("planDigest") != record.plan_digest:
        raise IntegrityError(f"{node_statement}: the statement is for plan {str(internal.get('planDigest'))[:12]}, but "
                             f"this run was submitted with plan {record.plan_digest[:12]}; not signed")
    recorded_job = internal.get("scheduler") or {}
    if sched is not None and sched.job_id and recorded_job.get("jobId") not in (None, sched.job_id):
        raise IntegrityError(f"{node_statement}: the statement is for job {recorded_job.get('jobId')}, but this run "
                             f"was submitted as job {sched.job_id}; not signed")
    written = write_attestation(statement, signer, run.attestation, run.bundle, tsa_url=tsa_url)
    record.attestation, record.signed = run.attestation.name, written.signed
    record.save(run.record)
    return SubmittedRun(run.run_id, run.path, sched.seed if sched else None, job, _state(record),
                        attestation=run.attestation)


def _state(record: RunRecord) -> str:
    if record.scheduler is not None and record.scheduler.backend != "local":
        return record.scheduler.state
    return record.status


def wait_run(run_dir: Path, *, key: Path | None, key_password: bytes | None = None,
             poll_s: float = POLL_S, tsa: str | None = None) -> SubmittedRun:
    """Block until the scheduler is done with the run's job, then collect it (sign when a key is given)."""
    # Short jobs are seen finished soon; long ones do not poll the controller more than every POLL_MAX_S.
    while True:
        record = refresh(run_dir)
        if record is None:
            raise UsageError(f"{run_dir}: no run.json")
        sched = record.scheduler
        if sched is None or sched.final or (sched.backend == "local"):
            return collect(run_dir, key=key, key_password=key_password, tsa=tsa)
        time.sleep(poll_s)
        poll_s = min(poll_s * 1.5, POLL_MAX_S)


def cancel_run(run_dir: Path) -> RunRecord:
    """scancel the run's job (this one member of an array) and record it."""
    from runner.backends import slurm

    record = refresh(run_dir)
    if record is None or record.scheduler is None or record.scheduler.backend != "slurm":
        raise UsageError(f"{run_dir}: not a Slurm run; a local run stops with Ctrl-C")
    if record.scheduler.final:
        return record
    slurm.require_tools()
    slurm.cancel(record.scheduler.job_ref or "")
    return record


# --- sweeps ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSummary:
    """One metric key across a sweep's succeeded members."""

    key: str  # FILE:KEY
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    min: float
    max: float


@dataclass(frozen=True)
class FailedMember:
    run_id: str
    seed: int | None
    state: str
    error: str | None


@dataclass(frozen=True)
class SweepSummary:
    """`xrun runs summary SWEEP`."""

    sweep: str
    members: int
    succeeded: int
    unfinished: int  # pending or running: not in the statistics yet
    seeds: tuple[int, ...]
    metrics: tuple[MetricSummary, ...]
    failed: tuple[FailedMember, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return fields_to_wire(self)


def sweep_members(runs_dir: Path, sweep: str) -> list[tuple[Path, RunRecord]]:
    """The runs of one sweep (id or unique id prefix), by array index."""
    found: dict[str, list[tuple[Path, RunRecord]]] = {}
    if runs_dir.is_dir():
        for path in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            record = refresh(path)
            if record is not None and record.scheduler is not None and record.scheduler.sweep:
                if record.scheduler.sweep.startswith(sweep):
                    found.setdefault(record.scheduler.sweep, []).append((path, record))
    if not found:
        raise UsageError(f"no seed sweep {sweep!r} under {runs_dir}; `xrun runs ls` shows sweep ids")
    if len(found) > 1:
        raise UsageError(f"{sweep!r} matches {len(found)} sweeps under {runs_dir}; give more of the sweep id")
    members = next(iter(found.values()))
    return sorted(members, key=lambda m: m[1].scheduler.array_index or 0)  # type: ignore[union-attr]


def summarize_sweep(runs_dir: Path, sweep: str) -> SweepSummary:
    """Mean, std, min, max and n per metric key across the sweep's succeeded members; failed members listed."""
    members = sweep_members(runs_dir, sweep)
    values: dict[str, list[float]] = {}
    failed: list[FailedMember] = []
    succeeded = unfinished = 0
    for path, record in members:
        sched = record.scheduler
        assert sched is not None
        if record.status.unfinished and not sched.final:
            unfinished += 1
            continue
        if record.status != RunStatus.SUCCEEDED or sched.state in (SchedulerState.FAILED, SchedulerState.CANCELLED,
                                                                    SchedulerState.TIMED_OUT):
            failed.append(FailedMember(record.run_id, sched.seed, _state(record), record.error))
            continue
        succeeded += 1
        for file, metrics in sorted(record.metrics.items()):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    values.setdefault(f"{file}:{key}", []).append(float(value))
    rows = tuple(MetricSummary(key=k, n=len(v), mean=statistics.fmean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0,
                               min=min(v), max=max(v)) for k, v in sorted(values.items()))
    sweep_id = members[0][1].scheduler.sweep  # type: ignore[union-attr]
    seeds = tuple(r.scheduler.seed for _, r in members if r.scheduler and r.scheduler.seed is not None)
    return SweepSummary(sweep=str(sweep_id), members=len(members), succeeded=succeeded, unfinished=unfinished,
                        seeds=seeds, metrics=rows, failed=tuple(failed))


def stream_log(run_dir: Path, out: Any, *, follow: bool, poll_s: float = 1.0) -> None:
    """Write the run's scheduler log (logs/slurm.log, else logs/run.log) to out; with follow, until the job ends."""
    logs = [run_dir / "logs" / "slurm.log", run_dir / "logs" / "run.log"]
    position = 0
    while True:
        path = next((p for p in logs if p.exists()), None)
        if path is not None:
            with open(path, "rb") as f:
                f.seek(position)
                chunk = f.read()
                position += len(chunk)
            out.write(chunk.decode("utf-8", errors="replace"))
            out.flush()
        if not follow:
            if path is None:
                raise UsageError(f"{run_dir}: no log yet (the job has not started)")
            return
        record = refresh(run_dir)
        sched = record.scheduler if record else None
        if record is None or sched is None or sched.final or not record.status.unfinished:
            if sched is None or sched.final or record is None:
                if path is not None:
                    with open(path, "rb") as f:
                        f.seek(position)
                        out.write(f.read().decode("utf-8", errors="replace"))
                return
        time.sleep(poll_s)
