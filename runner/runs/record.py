"""run.json: the typed record of one run, written by the pipeline and read back by every other command."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.wire import WireEnum, camel, fields_to_wire, snake


class RunStatus(WireEnum):
    """run.json's `status`: where the run is (a cluster run is submitted before it runs)."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def unfinished(self) -> bool:
        """Submitted or running: the run has not ended yet."""
        return self in (RunStatus.SUBMITTED, RunStatus.RUNNING)


class SchedulerState(WireEnum):
    """What a cluster's scheduler says of a run's job (runner/backends/slurm.py maps Slurm's states to these)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"

    @property
    def final(self) -> bool:
        """Whether the scheduler has finished with the job."""
        return self in (SchedulerState.COMPLETED, SchedulerState.FAILED, SchedulerState.CANCELLED,
                        SchedulerState.TIMED_OUT)


class ContainerStatus(WireEnum):
    """How the training container ended (run.json's `containerStatus`, runner/engine/execute.py)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed-out"
    INTERRUPTED = "interrupted"


@dataclass
class SchedulerInfo:
    """Where a submitted run's job is: backend, cluster, job id, array index, its state, its sweep."""

    backend: str  # "slurm", "kubernetes", or "local" for a local seed sweep
    state: SchedulerState
    job_id: str | None = None  # the scheduler's id of the job (the array's id for a sweep member)
    array_index: int | None = None  # the member's index in a job array / seed sweep
    cluster: str | None = None
    node: str | None = None
    sweep: str | None = None  # the sweep id shared by every member of one seed sweep
    seed: int | None = None  # the seed this member runs with (overrides seeds.global)
    reason: str | None = None  # what the scheduler said about a pending or failed job
    # Where the scheduler's word and the node's statement differ (a ghost task, another node): named, then signed.
    disagreement: str | None = None

    def __post_init__(self) -> None:
        self.state = SchedulerState(str(self.state))  # a plain string from an untyped caller or the file

    @property
    def job_ref(self) -> str | None:
        """The id Slurm's tools accept for this one member: JOB or JOB_INDEX."""
        if self.job_id is None:
            return None
        return self.job_id if self.array_index is None else f"{self.job_id}_{self.array_index}"

    @property
    def final(self) -> bool:
        """Whether the scheduler has finished with the job."""
        return self.state.final

    def to_json(self) -> dict[str, Any]:
        """camelCase, unset fields left out."""
        return fields_to_wire(self, omit_none=True)

    @classmethod
    def from_json(cls, data: Any) -> "SchedulerInfo | None":
        """Read back; None when absent or not an object."""
        if not isinstance(data, dict):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {snake(k): v for k, v in data.items() if snake(k) in known}
        values.setdefault("backend", "")
        values.setdefault("state", "")
        return cls(**values)


@dataclass
class RunRecord:
    """What happened in one run; the file is rewritten atomically at each change of state."""

    run_id: str
    name: str
    status: RunStatus
    manifest: str  # the manifest file as given (absolute)
    manifest_sha256: str
    plan_digest: str
    started_on: str  # RFC 3339
    host: dict[str, Any] = field(default_factory=dict)
    hardware_class: str = ""
    hardware_mismatch: list[str] = field(default_factory=list)
    runner: str | None = None  # host:pid:start of the xrun process (runner/engine/labels.py)
    image_id: str | None = None
    exit_code: int | None = None
    container_started_on: str | None = None
    finished_on: str | None = None
    log_sha256: str | None = None
    container_status: ContainerStatus | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # path under /outputs → sha256
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # metrics file → key → value
    metric_steps: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # file → key → [[step, v]…]
    attestation: str | None = None  # its file name in the run directory once signed/written
    signed: bool | None = None
    error: str | None = None
    # tracker name → its state (runner/trackers TrackingState); written after the attestation, never attested
    tracking: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler: SchedulerInfo | None = None  # cluster runs and seed sweeps only
    # Earlier attempts of a requeued cluster job, oldest first ({attempt, status, startedOn, finishedOn, node, …});
    # only the last attempt's outputs and attestation remain.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer xrun, kept as they were

    def __post_init__(self) -> None:
        # The states as their types whatever the caller passed (the file, or an untyped caller's string).
        self.status = RunStatus(str(self.status))
        if self.container_status is not None:
            self.container_status = ContainerStatus(str(self.container_status))

    def to_json(self) -> dict[str, Any]:
        """The run.json object (camelCase; unset fields left out)."""
        data = fields_to_wire(self, omit_none=True)
        for optional in ("metricSteps", "tracking", "attempts"):  # absent unless used: older readers see what they knew
            if not data.get(optional):
                data.pop(optional, None)
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.to_json()
        extra = data.pop("extra", {})
        return {**extra, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunRecord":
        """Read a run.json object; unknown keys are kept in `extra`."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            name = snake(key)
            if name in known and camel(name) == key:
                values[name] = value
            else:
                extra[key] = value
        if "scheduler" in values:
            values["scheduler"] = SchedulerInfo.from_json(values["scheduler"])
        for required in ("run_id", "name", "status", "manifest", "manifest_sha256", "plan_digest", "started_on"):
            values.setdefault(required, "")
        return cls(**values, extra=extra)

    @classmethod
    def load(cls, path: Path) -> "RunRecord | None":
        """The record at path, or None when it is missing or not a JSON object."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls.from_json(data) if isinstance(data, dict) else None

    def save(self, path: Path) -> None:
        """Write atomically (readers see the old record or the new one)."""
        from runner.rundir import write_json

        write_json(path, self.to_json())
