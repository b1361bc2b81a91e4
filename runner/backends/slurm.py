"""The Slurm backend: the job script, sbatch/squeue/scancel, what a job tells its node, collecting its runs.

`xrun submit --backend slurm` (runner/submit.py) prepares the shared cache and the image, then
`SlurmBackend.submit` writes one run directory per seed, renders templates/slurm.sbatch and calls
`sbatch`; on the node the script execs `xrun node-run RUN_DIR` (runner/node.py), the pipeline on
the frozen plan. `SlurmHandle` asks the scheduler about a run, cancels it, and collects it: the
node's statement checked (runner/collect.py) and signed on the submitting side. Slurm's own tools
are the only interface: no daemon of ours, no scheduler of ours.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from runner.backends.interface import (JOB_FILE, Backend, Distribution, Handle, NodeJob, Prepared, SubmitOptions,
                                       SubmitResult, SubmittedRun, run_state)
from runner.build.distribute import check_registry
from runner.codetree import signing_key_path
from runner.errors import EnvironmentProblem, IntegrityError, UsageError, XrunError
from runner.hardware import HardwareClass
from runner.resources import resource_dir
from runner.progress import StderrProgress
from runner.rundir import RunDir, discard_run_dir, new_run_id, rfc3339, utc_now, write_atomic, write_json
from runner.runs.record import RunRecord, RunStatus, SchedulerInfo, SchedulerState
from runner.trackers.track import submitted_tracking, track_collected

if TYPE_CHECKING:
    from runner.attest.keys import Signer
    from runner.attest.statement import ProvenanceFacts
    from runner.context import RunContext

BUILDER_ID_PREFIX = "https://xrun.dev/builders/slurm/v1/"
# Slurm's time limit is the run's timeout plus room for loading the image, fetching from the shared
# cache and hashing the outputs: xrun's own timeout fires first and says so.
TIME_MARGIN_S = 300
DEFAULT_TIME_MIN = 24 * 60  # a run without run.timeout
TOOL_TIMEOUT_S = 60
# A job still RUNNING this long after its node finished the run is a ghost (e.g. its slurmstepd was killed).
GHOST_GRACE_S = 30

# Slurm's job states (squeue %T / sacct State) → xrun's scheduler states (runner/runs/record.py).
STATE_MAP: dict[str, SchedulerState] = {
    "PENDING": SchedulerState.PENDING, "CONFIGURING": SchedulerState.PENDING, "REQUEUED": SchedulerState.PENDING,
    "REQUEUE_HOLD": SchedulerState.PENDING, "REQUEUE_FED": SchedulerState.PENDING,
    "RESV_DEL_HOLD": SchedulerState.PENDING, "SUSPENDED": SchedulerState.RUNNING, "STOPPED": SchedulerState.RUNNING,
    "RUNNING": SchedulerState.RUNNING, "COMPLETING": SchedulerState.RUNNING, "SIGNALING": SchedulerState.RUNNING,
    "STAGE_OUT": SchedulerState.RUNNING, "RESIZING": SchedulerState.RUNNING, "COMPLETED": SchedulerState.COMPLETED,
    "CANCELLED": SchedulerState.CANCELLED, "TIMEOUT": SchedulerState.TIMED_OUT,
    "DEADLINE": SchedulerState.TIMED_OUT, "FAILED": SchedulerState.FAILED, "NODE_FAIL": SchedulerState.FAILED,
    "BOOT_FAIL": SchedulerState.FAILED, "OUT_OF_MEMORY": SchedulerState.FAILED, "PREEMPTED": SchedulerState.FAILED,
    "SPECIAL_EXIT": SchedulerState.FAILED, "REVOKED": SchedulerState.CANCELLED,
}


@dataclass(frozen=True)
class JobState:
    """What the scheduler says of one job (or array member)."""

    ref: str  # JOB or JOB_INDEX
    state: SchedulerState
    slurm_state: str  # Slurm's own word
    node: str | None
    reason: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", SchedulerState(str(self.state)))


@dataclass(frozen=True)
class SlurmJob:
    """The job as its node sees it (Slurm's SLURM_* variables), recorded in the attestation."""

    cluster: str
    job_id: str  # the array's job id for a member
    array_index: int | None
    node: str
    partition: str
    version: str

    @property
    def ref(self) -> str:
        """JOB or JOB_INDEX."""
        return self.job_id if self.array_index is None else f"{self.job_id}_{self.array_index}"

    def builder_id(self) -> str:
        """https://xrun.dev/builders/slurm/v1/<cluster>: xrun's Slurm backend on that cluster."""
        from urllib.parse import quote

        return BUILDER_ID_PREFIX + quote(self.cluster.lower() or "unknown", safe="")

    def to_json(self) -> dict[str, object]:
        """internalParameters.scheduler."""
        return {"backend": "slurm", "cluster": self.cluster, "jobId": self.job_id, "arrayIndex": self.array_index,
                "node": self.node, "partition": self.partition, "slurmVersion": self.version}


def job_from_env(environ: Mapping[str, str] = os.environ) -> SlurmJob | None:
    """The Slurm job this process runs in; None outside Slurm."""
    if "SLURM_JOB_ID" not in environ:
        return None
    array_job = environ.get("SLURM_ARRAY_JOB_ID")
    index = environ.get("SLURM_ARRAY_TASK_ID")
    return SlurmJob(
        cluster=environ.get("SLURM_CLUSTER_NAME", ""), job_id=array_job or environ["SLURM_JOB_ID"],
        array_index=int(index) if array_job and index and index.isdigit() else None,
        node=environ.get("SLURMD_NODENAME") or environ.get("SLURM_NODELIST", ""),
        partition=environ.get("SLURM_JOB_PARTITION", ""), version=slurm_version() or "unknown",
    )


def with_slurm_builder(facts: ProvenanceFacts, job: SlurmJob, run_id: str,
                       image_reference: str | None = None) -> ProvenanceFacts:
    """The node's facts with the Slurm builder: its id, Slurm as a builder dependency, the job in the invocation
    and internalParameters.scheduler (with the REPO@sha256 the node pulled, when it pulled)."""
    from runner.attest.statement import ResourceDescriptor
    from runner.provenance import purl

    slurm = ResourceDescriptor(name="slurm", uri=purl("generic", "slurm", job.version),
                               annotations={"cluster": job.cluster, "node": job.node, "partition": job.partition})
    return dataclasses.replace(
        facts, builder_id=job.builder_id(), builder_dependencies=(*facts.builder_dependencies, slurm),
        invocation_id=f"{run_id}/slurm/{job.cluster or 'unknown'}/{job.ref}",
        internal={**facts.internal, "scheduler": {**job.to_json(), "imageReference": image_reference}},
    )


# --- the submitting side -------------------------------------------------------------------------


def require_tools(environ: Mapping[str, str] = os.environ) -> None:
    """EnvironmentProblem (exit 4) unless Slurm's client tools are on PATH."""
    missing = [t for t in ("sbatch", "squeue", "scancel", "scontrol") if shutil.which(t, path=environ.get("PATH")) is None]
    if missing:
        raise EnvironmentProblem(f"{', '.join(missing)} not found on PATH: `xrun submit --backend slurm` runs on a "
                                 "Slurm login node (install Slurm's client tools, or use --backend local)")


def _tool(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{args[0]} not found on PATH: install Slurm's client tools") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"`{' '.join(args)}` did not answer within {TOOL_TIMEOUT_S}s: is slurmctld up?") from None


def check_partition(partition: str) -> None:
    """UsageError (exit 2) naming the partition unless the controller knows it."""
    out = _tool(["scontrol", "show", "partition", partition])
    if out.returncode != 0:
        known = _tool(["sinfo", "-h", "-o", "%R"]).stdout.split()
        raise UsageError(f"--partition {partition}: no such Slurm partition"
                         + (f"; known: {', '.join(sorted(set(known)))}" if known else ""))


def cluster_name() -> str:
    """ClusterName from the controller's configuration ('' when it does not say)."""
    out = _tool(["scontrol", "show", "config"])
    if out.returncode != 0:
        raise EnvironmentProblem(f"scontrol cannot reach the Slurm controller: {_first_line(out.stderr)}")
    match = re.search(r"^ClusterName\s*=\s*(\S+)", out.stdout, re.M)
    return match.group(1) if match else ""


def slurm_version() -> str | None:
    """'22.05.8' from `sinfo --version`; None when it cannot tell."""
    try:
        out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.stdout.split()
    return words[-1] if out.returncode == 0 and words else None


@dataclass(frozen=True)
class ScriptSpec:
    """Everything the job script says."""

    job_name: str
    log: str  # --output (with %a for an array)
    hardware: HardwareClass
    timeout_s: int | None
    run_dirs: tuple[Path, ...]
    xrun: tuple[str, ...]  # the command that runs xrun on the node
    array: bool = False
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra: tuple[str, ...] = ()  # --sbatch-arg values, one #SBATCH line each


def time_limit(timeout_s: int | None) -> str:
    """--time in minutes: run.timeout plus the margin, rounded up."""
    if timeout_s is None:
        return str(DEFAULT_TIME_MIN)
    return str(math.ceil((timeout_s + TIME_MARGIN_S) / 60))


GPU_GRES_VARIABLE = "XRUN_SLURM_GPU_GRES"


def gres(hardware: HardwareClass, environ: Mapping[str, str] = os.environ) -> str | None:
    """--gres=NAME[:TYPE]:N: the class's GPU count; NAME[:TYPE] is XRUN_SLURM_GPU_GRES (the cluster's gres.conf
    name, e.g. `gpu:a100_80g` or `gpu`), else gpu:<the class's GPU model, lowercased>, or gpu for any model."""
    if not hardware.gpus:
        return None
    name = environ.get(GPU_GRES_VARIABLE, "").strip()
    if name and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", name):
        raise UsageError(f"{GPU_GRES_VARIABLE}={name!r}: give the cluster's GPU GRES as NAME or NAME:TYPE "
                         "(gres.conf's Name and Type, e.g. gpu:a100_80g)")
    if not name:
        name = "gpu" + (f":{hardware.gpu_model.lower()}" if hardware.gpu_model else "")
    return f"{name}:{hardware.gpus}"


def render_script(spec: ScriptSpec) -> str:
    """templates/slurm.sbatch filled in."""
    directives = []
    if spec.array:
        directives.append(f"--array=0-{len(spec.run_dirs) - 1}")
    if spec.hardware.gpus:
        directives.append(f"--gres={gres(spec.hardware)}")
    for name, value in (("partition", spec.partition), ("account", spec.account), ("qos", spec.qos)):
        if value:
            directives.append(f"--{name}={value}")
    for extra in spec.extra:
        if "\n" in extra or not extra.startswith("-"):
            raise UsageError(f"--sbatch-arg {extra!r}: give one sbatch option such as --constraint=a100")
        directives.append(extra)
    template = Template((resource_dir("templates") / "slurm.sbatch").read_text(encoding="utf-8"))
    return template.substitute(
        job_name=_safe(spec.job_name), log=_safe(spec.log), cpus=spec.hardware.cpus,
        mem=f"{spec.hardware.memory_gib}G", time=time_limit(spec.timeout_s),
        directives="\n".join(f"#SBATCH {d}" for d in directives),
        run_dirs=" ".join(shlex.quote(str(p)) for p in spec.run_dirs), xrun=shlex.join(spec.xrun),
    )


def _safe(value: str) -> str:
    if any(c.isspace() for c in value):
        raise UsageError(f"{value!r}: Slurm's #SBATCH lines cannot hold whitespace here; use paths without spaces")
    return value


def sbatch(script: Path, *, hold: bool = False) -> str:
    """Submit the script (held: it waits for `release`); the job id. UsageError with sbatch's words when refused."""
    out = _tool(["sbatch", "--parsable", *(["--hold"] if hold else []), str(script)])
    if out.returncode != 0:
        raise UsageError(f"sbatch refused the job: {_first_line(out.stderr) or 'no reason given'}; nothing was submitted")
    return out.stdout.strip().split(";", 1)[0]


def cancel(ref: str) -> None:
    """scancel JOB or JOB_INDEX."""
    out = _tool(["scancel", ref])
    if out.returncode != 0:
        raise EnvironmentProblem(f"scancel {ref} failed: {_first_line(out.stderr)}")


def release(ref: str) -> None:
    """scontrol release JOB (a job submitted held)."""
    out = _tool(["scontrol", "release", ref])
    if out.returncode != 0:
        raise EnvironmentProblem(f"scontrol release {ref} failed: {_first_line(out.stderr)}; the job stays held "
                                 f"(release it with `scontrol release {ref}`, or `xrun cancel`)")


def job_states(job_ids: Sequence[str]) -> dict[str, JobState]:
    """The state of every job and array member Slurm still knows, by JOB or JOB_INDEX."""
    if not job_ids:
        return {}
    ids = ",".join(sorted(set(job_ids)))
    found: dict[str, JobState] = {}
    out = _tool(["squeue", "-h", "-t", "all", "-r", "-j", ids, "-o", "%i|%T|%N|%r"])
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 4:
                ref, slurm_state, node, reason = parts
                found[ref] = JobState(ref, STATE_MAP.get(slurm_state, SchedulerState.RUNNING), slurm_state,
                                      node or None, None if reason in ("None", "") else reason)
    missing = [j for j in set(job_ids) if not any(r == j or r.startswith(f"{j}_") for r in found)]
    if missing:
        # Jobs the controller has forgotten (MinJobAge): the accounting database, when the site has one.
        out = _tool(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State,NodeList"])
        if out.returncode == 0:
            for line in out.stdout.splitlines():
                parts = line.split("|")
                if len(parts) == 3:
                    word = parts[1].split()[0] if parts[1] else ""
                    found[parts[0]] = JobState(parts[0], STATE_MAP.get(word, SchedulerState.RUNNING), word,
                                               parts[2] or None, None)
    return found


@dataclass(frozen=True)
class JobDetail:
    """What `scontrol show job` says of one job or array member (the controller's memory, no accounting needed)."""

    state: JobState
    exit_code: str | None  # "0:0": the batch script's exit status and the signal that ended it


def job_detail(ref: str) -> JobDetail | None:
    """`scontrol show job -o REF`; None when the controller no longer knows the job (MinJobAge passed)."""
    out = _tool(["scontrol", "show", "job", "-o", ref])
    if out.returncode != 0:
        said = (out.stderr + out.stdout).lower()
        if "invalid job id" in said or "not found" in said:  # 'Job 33_0 not found': an array member it never split
            return None
        raise EnvironmentProblem(f"scontrol show job {ref}: {_first_line(out.stderr) or 'no answer'}")
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    word = fields.get("JobState", "")
    node = fields.get("NodeList") or fields.get("BatchHost")
    return JobDetail(JobState(ref, STATE_MAP.get(word, SchedulerState.RUNNING), word, None if node in (None, "(null)") else node,
                              None if fields.get("Reason") in (None, "None") else fields.get("Reason")),
                     exit_code=fields.get("ExitCode"))


def scheduler_disagreements(record: RunRecord, statement: Mapping[str, Any],
                            detail: JobDetail | None) -> list[str]:
    """Where Slurm's word on a finished run differs from the node's statement: state, exit code, node."""
    sched = record.scheduler
    if sched is None:
        return []
    ref = sched.job_ref or "?"
    notes = []
    if sched.state != SchedulerState.COMPLETED:
        word = detail.state.slurm_state if detail else sched.state
        notes.append(f"Slurm shows job {ref} {word} while the node's statement says the run finished (a task Slurm "
                     "lost track of, or a job that ended after the run)")
    if detail is not None and detail.exit_code not in (None, "0:0") and sched.state == SchedulerState.COMPLETED:
        notes.append(f"Slurm recorded exit code {detail.exit_code} for job {ref}, the node's run succeeded")
    claimed = ((statement.get("predicate", {}).get("buildDefinition", {}).get("internalParameters") or {})
               .get("scheduler") or {}).get("node")
    slurm_node = detail.state.node if detail else sched.node
    if claimed and slurm_node and claimed != slurm_node:
        notes.append(f"the node's statement says it ran on {claimed}, Slurm placed job {ref} on {slurm_node}")
    return notes


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0].removeprefix("sbatch: error: ") if lines else ""


# --- the backend: submit, and a handle on each run -----------------------------------------------


class SlurmBackend(Backend):
    """One job (or one job array per seed sweep) whose node runs xrun on the frozen plan."""

    name = "slurm"
    distribution = Distribution.SHARED

    def check(self, options: SubmitOptions) -> None:
        """Slurm's tools, the partition and the registry, before anything is built or written."""
        require_tools()
        if options.partition:
            check_partition(options.partition)
        if options.registry:
            check_registry(options.registry)

    def submit(self, prepared: Prepared) -> SubmitResult:
        """Write the run directories, sbatch them held, name the job in each run.json, then release it."""
        ctx, image, cache_dir, options = prepared.ctx, prepared.image, prepared.cache_dir, prepared.options
        assert ctx is not None and image is not None and cache_dir is not None
        cluster = cluster_name()
        seeds: list[int | None] = list(options.seeds) or [None]
        sweep = bool(options.seeds)
        scheduler = SchedulerInfo(backend=self.name, state=SchedulerState.PENDING, cluster=cluster or None)
        key = signing_key_path(options.run.key)
        job = NodeJob(manifest=str(ctx.plan.manifest.file), plan_digest="", image=image, cache_dir=str(cache_dir),
                      allow_hardware_mismatch=options.run.allow_hardware_mismatch,
                      signing_key=str(key.absolute()) if key else None)
        tracking = submitted_tracking(options.run.mlflow, ctx.plan.manifest.mlflow, ctx.plan.manifest.name,
                                      ctx.progress)
        runs = prepare_runs(ctx, seeds, job, scheduler, tracking, sweep=sweep)
        first = runs[0]
        sweep_id = first.run_id.rsplit("-", 1)[0] if sweep else None
        script = (first.path.parent / f".{first.run_id}.sbatch") if sweep else first.path / "job.sbatch"
        try:
            log = (str(first.path.parent / f"{sweep_id}-%a" / "logs" / "slurm.log") if sweep
                   else str(first.path / "logs" / "slurm.log"))
            spec = ScriptSpec(
                job_name=f"xrun-{ctx.plan.manifest.name}", log=log, hardware=ctx.plan.hardware,
                timeout_s=ctx.plan.timeout_s, run_dirs=tuple(r.path for r in runs),
                xrun=(sys.executable, "-m", "runner.cli"), array=sweep, partition=options.partition,
                account=options.account, qos=options.qos, extra=options.sbatch_args)
            write_atomic(script, render_script(spec).encode(), mode=0o755)
            # Held until run.json names the job: the node must never start before the submitter's last write.
            job_id = sbatch(script, hold=True)
        except BaseException:
            remove_runs(runs)
            script.unlink(missing_ok=True)
            raise
        if sweep:
            final_script = first.path / "job.sbatch"
            os.replace(script, final_script)
            script = final_script
        for run in runs:
            record = RunRecord.load(run.record)
            assert record is not None and record.scheduler is not None
            record.scheduler.job_id = job_id
            record.save(run.record)
        if not _holds(options.sbatch_args):
            release(job_id)
        members = tuple(SubmittedRun(run_id=r.run_id, run_dir=r.path, seed=s, job=f"{job_id}_{i}" if sweep else job_id,
                                     state=SchedulerState.PENDING) for i, (r, s) in enumerate(zip(runs, seeds)))
        return SubmitResult(backend=self.name, sweep=sweep_id, job_id=job_id, image_id=image.id,
                            image_reference=image.reference, script=script, runs=members, seeds=options.seeds)

    def attach(self, run_dir: Path) -> Handle:
        """A run of a Slurm job: the scheduler's word on it, scancel, collect."""
        return SlurmHandle(run_dir)


def prepare_runs(ctx: RunContext, seeds: Sequence[int | None], job: NodeJob, scheduler: SchedulerInfo,
                 tracking: dict[str, Any], *, sweep: bool) -> list[RunDir]:
    """One run directory per seed: manifest copy, plan, job.json, run.json ('submitted', with where to track it).

    A sweep's members are <sweep id>-<array index>, so Slurm's %a finds each member's log folder.
    """
    base = new_run_id()
    runs: list[RunDir] = []
    try:
        for index, seed in enumerate(seeds):
            plan = ctx.plan.with_seed(seed)
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
            dataclasses.replace(job, plan_digest=plan.digest, seed=seed).save(run.path / JOB_FILE)
            member = dataclasses.replace(scheduler, seed=seed, array_index=index if sweep else None,
                                         sweep=base if sweep else None)
            RunRecord(run_id=run_id, name=plan.manifest.name, status=RunStatus.SUBMITTED, manifest=str(plan.manifest.file),
                      manifest_sha256=plan.manifest.sha256, plan_digest=plan.digest, started_on=rfc3339(utc_now()),
                      hardware_class=plan.hardware.name, image_id=job.image.id, scheduler=member,
                      tracking=tracking).save(run.record)
    except BaseException:
        remove_runs(runs)
        raise
    return runs


def remove_runs(runs: Sequence[RunDir]) -> None:
    """Nothing half-written: the run directories of a submission that did not happen go."""
    for run in runs:
        discard_run_dir(run)


def _holds(sbatch_args: Sequence[str]) -> bool:
    """Whether the user asked Slurm to hold the job (--sbatch-arg=--hold): then it stays held for them."""
    return any(a in ("--hold", "-H") for a in sbatch_args)


class SlurmHandle(Handle):
    """One run of a Slurm job (a whole job, or one member of an array)."""

    def state(self) -> RunRecord:
        """run.json with the scheduler's word; written only once the job is over (the node owns it before)."""
        return self.states([self])[0]

    @classmethod
    def states(cls, handles: Sequence[Handle]) -> list[RunRecord]:
        """Every run's record with the scheduler's word, from one squeue (and sacct) call for all their jobs."""
        records = [h.record() for h in handles]
        jobs = [r.scheduler.job_id for r in records if r.scheduler and not r.scheduler.final and r.scheduler.job_id]
        if not jobs or shutil.which("squeue") is None:
            return records
        try:
            states = job_states(jobs)
        except XrunError:
            return records
        return [h.apply(r, states) if isinstance(h, SlurmHandle) else r for h, r in zip(handles, records)]

    def apply(self, record: RunRecord, states: Mapping[str, JobState]) -> RunRecord:
        """The record with the scheduler's word on its job; saved when the job is over."""
        sched = record.scheduler
        if sched is None or sched.final or not sched.job_id:
            return record
        # A whole array cancelled before Slurm split it into tasks is one record under the array's id (no JOB_INDEX).
        state = states.get(sched.job_ref or "") or states.get(sched.job_id)
        if state is None:
            return self._forgotten(record)
        if not state.state.final:
            # The node owns run.json while its job runs: the state is only reported, never written, here.
            sched.state, sched.node, sched.reason = state.state, state.node or sched.node, state.reason
            return record
        # The job is over, so the node's last write is on disk: read it again, then add the scheduler's word.
        record = self.record()
        sched = record.scheduler or sched
        record.scheduler = sched
        sched.state, sched.node, sched.reason = state.state, state.node or sched.node, state.reason
        _settle(record, state.slurm_state)
        record.save(self.run_dir / "run.json")
        return record

    def finished(self, record: RunRecord) -> bool:
        """Slurm is done with the job, or the node finished the run GHOST_GRACE_S ago while Slurm still shows it
        running (a task Slurm lost track of: collect names the disagreement)."""
        if super().finished(record):
            return True
        running = record.scheduler is not None and record.scheduler.state == SchedulerState.RUNNING  # not requeued
        if not running or record.status not in (RunStatus.SUCCEEDED, RunStatus.FAILED) or not record.finished_on:
            return False
        from runner.attest.statement import parse_rfc3339

        try:
            ended = parse_rfc3339(record.finished_on)
        except ValueError:
            return False  # an unreadable end time: not known to be a ghost, so Slurm's word is awaited
        return (utc_now() - ended).total_seconds() > GHOST_GRACE_S

    def _forgotten(self, record: RunRecord) -> RunRecord:
        """A job neither squeue nor sacct knows (no accounting, MinJobAge passed): settled from the node's record,
        so a run does not stay 'running' for ever."""
        sched = record.scheduler
        assert sched is not None and sched.job_ref is not None
        try:
            if job_detail(sched.job_ref) is not None:
                return record  # the controller still knows it: squeue was only slow to answer
        except XrunError:
            return record
        record = self.record()  # the node's last write
        sched = record.scheduler or sched
        record.scheduler = sched
        if record.status == RunStatus.SUCCEEDED:
            sched.state = SchedulerState.COMPLETED
        elif record.status in (RunStatus.FAILED, RunStatus.INTERRUPTED):
            sched.state = SchedulerState.FAILED if record.status == RunStatus.FAILED else SchedulerState.CANCELLED
        else:
            sched.state = SchedulerState.FAILED
            record.status = RunStatus.FAILED
            record.error = (f"job {sched.job_ref} ended while the run was {record.status} on the node (Slurm no "
                            "longer knows the job and keeps no accounting)")
            record.finished_on = record.finished_on or rfc3339(utc_now())
        sched.reason = "Slurm no longer knows the job (no accounting): the state is the node's record"
        record.save(self.run_dir / "run.json")
        return record

    def cancel(self) -> RunRecord:
        """scancel the run's job (this one member of an array) and return the record."""
        record = self.state()
        if record.scheduler is None or record.scheduler.final:
            return record
        require_tools()
        cancel(record.scheduler.job_ref or "")
        return record

    def collect(self, signer: Signer | None, tsa_url: str | None = None) -> SubmittedRun:
        """Check the node's statement against the outputs, the plan and the image submitted, and sign it here."""
        from runner.attest import write_attestation
        from runner.collect import disagreements, load_submitted, mark_node_report, read_node_statement
        from runner.outputs import collect_outputs

        record = self.state()
        run = RunDir(self.run_dir.name, self.run_dir)
        sched = record.scheduler
        seed, job = (sched.seed, sched.job_ref) if sched else (None, None)
        if not self.finished(record):
            raise UsageError(f"run {run.run_id} is still {run_state(record)}; `xrun wait {run.run_id}` waits for it")
        if run.attestation.exists():
            return SubmittedRun(run.run_id, run.path, seed, job, run_state(record), attestation=run.attestation)
        if record.status != RunStatus.SUCCEEDED or not run.node_statement.exists():
            return SubmittedRun(run.run_id, run.path, seed, job, run_state(record),
                                error=record.error or "the node wrote no statement")
        statement = read_node_statement(run.node_statement)
        node_job = NodeJob.load(run.path / JOB_FILE)
        submitted = load_submitted(run, record, Path(node_job.cache_dir), node_job.image.id)
        outputs = collect_outputs(submitted.plan.outputs, run.outputs)
        claimed = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        if claimed != outputs.digests():
            differ = sorted(k for k in set(claimed) | set(outputs.digests())
                            if claimed.get(k) != outputs.digests().get(k))
            raise IntegrityError(f"{run.outputs}: the outputs on shared storage differ from the node's statement "
                                 f"({', '.join(differ[:3])}); not signed")
        problems = disagreements(statement, submitted)
        if problems:
            raise IntegrityError(f"{run.node_statement}: the node's statement disagrees with what was submitted: "
                                 f"{problems[0]}; not signed")
        # The scheduler's word, fresh from the controller: a disagreement is named in the record and the
        # attestation (the statement itself passed every check above).
        try:
            detail = job_detail(job) if job else None
        except XrunError:
            detail = None
        notes = scheduler_disagreements(record, statement, detail)
        progress = StderrProgress()
        for note in notes:
            progress.warn(f"run {run.run_id}: {note}; signed with the disagreement recorded")
        written = write_attestation(mark_node_report(statement, notes), signer, run.attestation, run.bundle,
                                    tsa_url=tsa_url)
        if sched is not None and notes:
            sched.disagreement = "; ".join(notes)
        record.attestation, record.signed = run.attestation.name, written.signed
        record.save(run.record)
        # After the attestation, as for a local run; a tracker that fails leaves the run pending for `runs sync`.
        track_collected(run.path, progress, verified=signer is not None)
        return SubmittedRun(run.run_id, run.path, seed, job, run_state(record), attestation=run.attestation)


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
