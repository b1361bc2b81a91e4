"""The backend interface: a submission, and a handle on each run it made.

Shaped like MLflow Projects' `AbstractBackend.run() → SubmittedRun` and Nextflow's `TaskHandler`:
`Backend.submit(prepared) → SubmitResult` hands the prepared experiment to where it runs, and
`Backend.attach(run_dir) → Handle` gives what can be done with one run afterwards (state, wait,
cancel, logs, collect). Everything scheduler-specific lives in its backend's file; this module owns
the types that cross the boundary and imports no backend.
"""

from __future__ import annotations

import abc
import enum
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from runner.build.distribute import ImageSource
from runner.context import RunOptions
from runner.errors import UsageError
from runner.rundir import write_json
from runner.runs.record import RunRecord, RunStatus, SchedulerState
from runner.wire import fields_to_wire, snake

if TYPE_CHECKING:
    from runner.attest.keys import Signer
    from runner.context import RunContext

JOB_FILE = "job.json"
POLL_S = 0.25  # the first poll of the scheduler; then 1.5× longer each time, up to POLL_MAX_S
POLL_MAX_S = 5.0


class Distribution(enum.Enum):
    """What `xrun submit` prepares on this host before the backend takes over."""

    NONE = "none"  # the backend runs the whole pipeline itself (local)
    SHARED = "shared"  # data verified into a shared cache; the image pushed to --registry or saved there (slurm)
    REGISTRY = "registry"  # the image pushed by digest to --registry; the cluster stages the data (kubernetes)


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
class Prepared:
    """What `xrun submit` made before the backend takes over (nothing for Distribution.NONE)."""

    manifest: Path
    options: SubmitOptions
    ctx: RunContext | None = None  # resolved on this host (hardware not checked: the nodes have it)
    image: ImageSource | None = None  # built here, reachable from the nodes
    cache_dir: Path | None = None  # the shared cache the nodes read (Distribution.SHARED)


@dataclass(frozen=True)
class SubmittedRun:
    """One run of a submission."""

    run_id: str
    run_dir: Path
    seed: int | None
    job: str | None  # JOB or JOB_INDEX
    state: RunStatus | SchedulerState  # the scheduler's state for a cluster run, else the run's status
    attestation: Path | None = None
    error: str | None = None
    refused: bool = False  # collect found the node's statement untrustworthy (exit 3): nothing was signed


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
    seeds: tuple[int, ...] = ()  # a sweep's seeds (for rendered Jobs, the only word on its members)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return fields_to_wire(self)


@dataclass(frozen=True)
class NodeJob:
    """What the submitter hands to the node in job.json (runner/node.py reads it)."""

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


def run_state(record: RunRecord) -> RunStatus | SchedulerState:
    """The word `submit`/`wait`/`collect` report: the scheduler's state for a cluster run, else the run's status."""
    if record.scheduler is not None and record.scheduler.backend != "local":
        return record.scheduler.state
    return record.status


class Handle(abc.ABC):
    """One submitted run, found again by its directory: its state, and what can be done with it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def record(self) -> RunRecord:
        """run.json as it is on disk; UsageError when there is none."""
        record = RunRecord.load(self.run_dir / "run.json")
        if record is None:
            raise UsageError(f"{self.run_dir}: no run.json; give a run directory or id")
        return record

    def state(self) -> RunRecord:
        """run.json with the scheduler's current word in it (a backend without a scheduler: as on disk)."""
        return self.record()

    @classmethod
    def states(cls, handles: Sequence[Handle]) -> list[RunRecord]:
        """The current record of each run (a scheduler is asked once for all of them where it can be)."""
        return [h.state() for h in handles]

    def finished(self, record: RunRecord) -> bool:
        """Whether nothing more will happen to the run (the scheduler is done with it)."""
        sched = record.scheduler
        return sched is None or sched.backend == "local" or sched.final

    def wait(self, poll_s: float = POLL_S) -> RunRecord:
        """Block until the run is finished; its record."""
        # Short jobs are seen finished soon; long ones do not poll the controller more than every POLL_MAX_S.
        while True:
            record = self.state()
            if self.finished(record):
                return record
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, POLL_MAX_S)

    @abc.abstractmethod
    def cancel(self) -> RunRecord:
        """Ask the scheduler to stop the run; its record (UsageError where the backend cannot)."""

    @abc.abstractmethod
    def collect(self, signer: Signer | None, tsa_url: str | None = None) -> SubmittedRun:
        """The finished run's attestation: checked and signed here for a node's statement; how it ended otherwise."""

    def logs(self, out: IO[str], *, follow: bool, poll_s: float = 1.0) -> None:
        """Write the run's log (logs/slurm.log, else logs/run.log) to out; with follow, until the run is finished."""
        logs = [self.run_dir / "logs" / "slurm.log", self.run_dir / "logs" / "run.log"]
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
                    raise UsageError(f"{self.run_dir}: no log yet (the job has not started)")
                return
            if self.finished(self.state()):
                if path is not None:
                    with open(path, "rb") as f:
                        f.seek(position)
                        out.write(f.read().decode("utf-8", errors="replace"))
                return
            time.sleep(poll_s)


class Backend(abc.ABC):
    """Where runs go: submits a prepared experiment, and attaches to the runs it made."""

    name: ClassVar[str]
    distribution: ClassVar[Distribution]

    def check(self, options: SubmitOptions) -> None:
        """Refuse options this backend cannot use, before any work is done (nothing is written)."""

    @abc.abstractmethod
    def submit(self, prepared: Prepared) -> SubmitResult:
        """Hand the prepared experiment (one run, or one per seed) to the backend."""

    @abc.abstractmethod
    def attach(self, run_dir: Path) -> Handle:
        """The handle on a run this backend made."""
