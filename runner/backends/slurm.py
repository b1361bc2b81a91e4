"""The Slurm backend: the job script, sbatch/squeue/scancel, and what a job tells its node-side xrun.

Submitting (runner/submit.py) renders templates/slurm.sbatch and calls `sbatch`; on the node the
script execs `xrun node-run RUN_DIR` (runner/backends/node.py), the local backend's code path on the
frozen plan. Slurm's own tools are the only interface: no daemon of ours, no scheduler of ours.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from runner.backends.interface import Backend, Execution
from runner.errors import EnvironmentProblem, UsageError
from runner.hardware import HardwareClass
from runner.resources import resource_dir
from runner.runs.record import SchedulerState

if TYPE_CHECKING:
    from runner.attest.statement import ProvenanceFacts
    from runner.build.image import BuiltImage
    from runner.context import RunContext
    from runner.fetch import FetchedData
    from runner.rundir import RunDir

BUILDER_ID_PREFIX = "https://xrun.dev/builders/slurm/v1/"
# Slurm's time limit is the run's timeout plus room for loading the image, fetching from the shared
# cache and hashing the outputs: xrun's own timeout fires first and says so.
TIME_MARGIN_S = 300
DEFAULT_TIME_MIN = 24 * 60  # a run without run.timeout
TOOL_TIMEOUT_S = 60

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


class SlurmBackend(Backend):
    """Slurm runs go through `xrun submit`: a job on a node that runs the local backend there."""

    name = "slurm"

    def execute(self, ctx: RunContext, run: RunDir, image: BuiltImage, fetched: Sequence[FetchedData],
                labels: dict[str, str]) -> Execution:
        """Not a synchronous stage: say how to use it."""
        raise UsageError("the slurm backend runs through `xrun submit MANIFEST --backend slurm`; "
                         "`xrun run` runs on this host (backend local)")


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
    import dataclasses

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


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0].removeprefix("sbatch: error: ") if lines else ""
