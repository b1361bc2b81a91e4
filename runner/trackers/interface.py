"""Trackers: where a finished run is also logged (MLflow today), after its attestation is written.

A tracker receives a `TrackedRun` read back from the run directory (run.json, plan.json, the
attestation), so the run that just finished and a run sent later by `xrun runs sync` are logged by
the same code. A run never fails because a tracker did: every failure becomes one warning and a
`pending` state in run.json that `xrun runs sync` picks up. Trackers are never part of a digest.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import XrunError
from runner.runs.record import RunRecord, RunStatus
from runner.wire import fields_to_wire

SMALL_OUTPUT_BYTES = 1 << 20  # outputs up to this size are sent as artifacts; larger ones only by digest
LOGGED, PENDING = "logged", "pending"


class TrackerError(Exception):
    """A tracker could not log a run (server down, refused, misconfigured); the message is one line."""


@dataclass(frozen=True)
class OutputFile:
    """One attested output: its path under /outputs, digest, size and where it lies now."""

    path: str
    sha256: str
    size: int
    file: Path


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker logs about one finished run: identities, inputs, results and files."""

    run_id: str
    run_dir: Path
    name: str
    status: RunStatus
    seed: int | None
    hardware_class: str
    manifest_sha256: str
    plan_digest: str
    image_id: str | None
    data_digests: dict[str, str]  # data item name → "sha256:…" (or the strongest digest given)
    git_commit: str | None
    started_ms: int | None
    finished_ms: int | None
    metrics: dict[str, dict[str, float]]  # metrics file → key → final value
    metric_steps: dict[str, dict[str, list[list[float]]]]  # metrics file → key → [[step, value], …]
    signed: bool
    verified: bool | None  # None: not checked
    reproduces: str | None  # "sha256:…" of the attestation this run reproduced
    reproduces_run: str | None  # that attestation's run id, when it lies in the same runs directory
    attestation: Path | None
    manifest: Path | None
    outputs: tuple[OutputFile, ...]
    scheduler: dict[str, Any] = field(default_factory=dict)  # run.json's scheduler (cluster runs, seed sweeps)

    @property
    def sweep(self) -> str | None:
        """The seed sweep this run is a member of (its tracker groups the members under one parent run)."""
        value = self.scheduler.get("sweep")
        return value if isinstance(value, str) and value else None

    def params(self) -> dict[str, str]:
        """Flat string parameters (what every tracker can store)."""
        values: dict[str, Any] = {
            "seed": self.seed, "hardwareClass": self.hardware_class, "manifestDigest": f"sha256:{self.manifest_sha256}",
            "planDigest": f"sha256:{self.plan_digest}", "imageId": self.image_id, "gitCommit": self.git_commit,
            **{f"data.{name}": digest for name, digest in self.data_digests.items()},
        }
        return {k: str(v) for k, v in values.items() if v is not None and v != ""}

    def tags(self) -> dict[str, str]:
        """Tags that identify the run: xrun's run id (the key `runs sync` looks a run up by) and its state."""
        values: dict[str, Any] = {
            "xrun.runId": self.run_id, "xrun.name": self.name, "xrun.status": self.status,
            "xrun.signed": str(self.signed).lower(),
            "xrun.verified": None if self.verified is None else str(self.verified).lower(),
            "xrun.reproducedFrom": self.reproduces, "xrun.reproducedFromRun": self.reproduces_run,
            # Where it ran: the sweep, the seed, the scheduler's job and member, the node.
            "xrun.sweep": self.sweep, "xrun.seed": self.seed if self.sweep else None,
            **{f"xrun.{key}": self.scheduler.get(key) for key in ("backend", "jobId", "arrayIndex", "cluster", "node")},
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def metric_names(self) -> dict[str, float]:
        """Final values keyed `file/key` when several metrics files exist, else `key`."""
        return {self._metric_key(f, k): v for f, values in self.metrics.items() for k, v in values.items()}

    def step_series(self) -> dict[str, list[list[float]]]:
        """Per-step series keyed like metric_names()."""
        return {self._metric_key(f, k): s for f, series in self.metric_steps.items() for k, s in series.items()}

    def _metric_key(self, file: str, key: str) -> str:
        return key if len(self.metrics) <= 1 else f"{file}/{key}"


@dataclass
class TrackingState:
    """A tracker's state of one run, kept in run.json under `tracking.<tracker>`."""

    state: str  # LOGGED or PENDING
    uri: str
    experiment: str
    external_id: str | None = None  # the tracker's run id (MLflow run id)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """camelCase, unset fields left out."""
        return fields_to_wire(self, omit_none=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrackingState":
        """Read back what to_json wrote (unknown keys ignored)."""
        return cls(state=str(data.get("state", PENDING)), uri=str(data.get("uri", "")),
                   experiment=str(data.get("experiment", "")), external_id=data.get("externalId"),
                   error=data.get("error"))


class Tracker(abc.ABC):
    """Logs finished runs somewhere; one instance per destination (URI + experiment)."""

    name: str = ""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment

    @abc.abstractmethod
    def log_run(self, run: TrackedRun) -> str:
        """Log the run exactly once (look it up first); return the tracker's run id; raise TrackerError."""


def tracked_run(run_dir: Path, *, verified: bool | None = None) -> TrackedRun:
    """Read a finished run back from its directory (run.json, plan.json, the attestation)."""
    from runner.attest.recorded import RecordedRun
    from runner.plan import PlanRecord
    from runner.rundir import PLAN_FILE

    record = RunRecord.load(run_dir / "run.json")
    if record is None:
        raise TrackerError(f"{run_dir}: no readable run.json; not an xrun run directory")
    plan = PlanRecord.load(run_dir / PLAN_FILE) or PlanRecord({})
    attestation = run_dir / record.attestation if record.attestation else None
    recorded = None
    if attestation is not None and attestation.is_file():
        recorded = RecordedRun.from_statement(_statement(attestation))
    else:
        attestation = None
    link = (recorded.dependencies.get("attestation/reproduced") if recorded else None) or {}
    reproduces = link.get("digest", {}).get("sha256") if isinstance(link.get("digest"), dict) else None
    outputs = []
    for path, digest in sorted(record.outputs.items()):
        file = run_dir / "outputs" / path
        outputs.append(OutputFile(path, digest, file.stat().st_size if file.is_file() else -1, file))
    manifest = run_dir / "manifest.yaml"
    return TrackedRun(
        run_id=record.run_id, run_dir=run_dir, name=record.name, status=record.status,
        seed=plan.seed, hardware_class=record.hardware_class, manifest_sha256=record.manifest_sha256,
        plan_digest=record.plan_digest, image_id=record.image_id, data_digests=plan.data_digests,
        git_commit=plan.git_commit,
        started_ms=_millis(record.container_started_on or record.started_on), finished_ms=_millis(record.finished_on),
        metrics=record.metrics, metric_steps=record.metric_steps, signed=bool(record.signed), verified=verified,
        reproduces=f"sha256:{reproduces}" if reproduces else None,
        reproduces_run=_run_with_attestation(run_dir.parent, reproduces) if reproduces else None,
        attestation=attestation, manifest=manifest if manifest.is_file() else None, outputs=tuple(outputs),
        scheduler=record.scheduler.to_json() if record.scheduler is not None else {},
    )


def _statement(attestation: Path) -> dict[str, Any]:
    """The statement of the attestation's first envelope, unverified (verification is the caller's choice)."""
    from runner.attest.recorded import read_statement

    try:
        return read_statement(attestation)
    except XrunError:  # an unreadable attestation still leaves the run.json facts to log
        return {}


def _millis(stamp: str | None) -> int | None:
    from datetime import datetime, timezone

    if not stamp:
        return None
    try:
        return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp() * 1000)
    except ValueError:
        return None


def _run_with_attestation(runs_dir: Path, sha256: str) -> str | None:
    """The run id in runs_dir whose attestation has this digest (None when it lies elsewhere)."""
    import hashlib

    for candidate in sorted(runs_dir.glob("*/provenance.intoto.jsonl")):
        try:
            if hashlib.sha256(candidate.read_bytes()).hexdigest() == sha256:
                return candidate.parent.name
        except OSError:
            continue
    return None

