"""Send finished runs to the trackers asked for, after the attestation; record the outcome in run.json.

Nothing here raises into the run: a tracker that fails (server down, refused, client missing) costs a
one-line warning and leaves the run `pending` for `xrun runs sync`, which sends it later exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UsageError
from runner.redact import REDACTED, redact
from runner.rundir import NODE_STATEMENT
from runner.runs.record import RunRecord, RunStatus
from runner.trackers.interface import LOGGED, PENDING, Tracker, TrackerError, TrackingState, tracked_run
from runner.wire import fields_to_wire

if TYPE_CHECKING:
    from runner.context import ProgressSink, RunContext
    from runner.manifest import TrackingSpec

ENV_URI = "MLFLOW_TRACKING_URI"
MLFLOW = "mlflow"


@dataclass(frozen=True)
class Destination:
    """Where a run goes: the MLflow tracking URI and experiment name."""

    uri: str
    experiment: str


def resolve_destination(flag_uri: str | None, spec: TrackingSpec | None, default_experiment: str,
                        environ: Mapping[str, str] = os.environ) -> Destination | None:
    """--mlflow URI, else $MLFLOW_TRACKING_URI, else the manifest's tracking.mlflow.uri; None: tracking is off.

    The experiment is the manifest's tracking.mlflow.experiment, else the experiment's name.
    """
    uri = flag_uri or environ.get(ENV_URI) or (spec.uri if spec else None)
    if not uri:
        return None
    return Destination(uri=uri, experiment=spec.experiment if spec else default_experiment)


def make_tracker(destination: Destination) -> Tracker:
    """The tracker for a destination (imports the MLflow client only now)."""
    from runner.trackers.mlflow import MlflowTracker

    return MlflowTracker(destination.uri, destination.experiment)


def track_run(run_dir: Path, destination: Destination, progress: ProgressSink, *,
              verified: bool | None = None) -> TrackingState:
    """Log one finished run; the state (logged or pending, with the error) is saved in its run.json."""
    # The record keeps where the run went, never a password in that URL (sync takes it from the environment).
    state = TrackingState(state=PENDING, uri=redact(destination.uri), experiment=destination.experiment)
    try:
        state.external_id = make_tracker(destination).log_run(tracked_run(run_dir, verified=verified))
        state.state = LOGGED
    except TrackerError as exc:
        state.error = str(exc)
    except Exception as exc:  # a bug of ours in a tracker must not cost the run either
        state.error = f"internal error: {type(exc).__name__}: {exc}"
    except KeyboardInterrupt:  # the run is done and attested; only the logging was cut short
        state.error = "interrupted"
    if state.error:  # a server's message may quote its URL, password included
        state.error = redact(state.error)
    if state.state != LOGGED:
        progress.warn(f"the run was not logged to MLflow ({state.error}); it is kept as pending: "
                      f"`xrun runs sync {run_dir.name}` sends it later")
    _save_state(run_dir, state)
    return state


def after_run(ctx: RunContext, run_dir: Path) -> dict[str, Any]:
    """The pipeline's hook after the attestation: log the run where asked; `{tracker: state}` for run.json."""
    manifest = ctx.plan.manifest
    destination = resolve_destination(ctx.options.mlflow, manifest.mlflow, manifest.name)
    if destination is None:
        if manifest.mlflow is not None:
            ctx.progress.warn(f"{manifest.file}: tracking.mlflow names no server: pass --mlflow URI or set "
                              f"{ENV_URI} (the run was not logged)")
        return {}
    try:
        verified = _self_verified(run_dir, ctx) if ctx.signer is not None else False
    except Exception:  # the tag is a convenience; the run and its logging go on without it
        verified = None
    return {MLFLOW: track_run(run_dir, destination, ctx.progress, verified=verified).to_json()}


def submitted_tracking(flag_uri: str | None, spec: TrackingSpec | None, name: str,
                       progress: ProgressSink) -> dict[str, Any]:
    """run.json's `tracking` for a run submitted to a cluster: where it goes once collected (pending until then)."""
    destination = resolve_destination(flag_uri, spec, name)
    if destination is None:
        if spec is not None:
            progress.warn(f"tracking.mlflow names no server: pass --mlflow URI or set {ENV_URI} (the runs will not "
                          "be logged)")
        return {}
    # run.json sits on shared storage and goes to MLflow as an artifact: never a password in that URL; collect
    # takes the whole one from the environment or the manifest, as `runs sync` does.
    return {MLFLOW: TrackingState(state=PENDING, uri=redact(destination.uri),
                                  experiment=destination.experiment).to_json()}


def track_collected(run_dir: Path, progress: ProgressSink, *, verified: bool) -> TrackingState | None:
    """Log a cluster run just signed by `xrun collect` where its submission asked; once (a logged run is left)."""
    record = RunRecord.load(run_dir / "run.json")
    known = record.tracking.get(MLFLOW) if record is not None else None
    if record is None or not isinstance(known, dict):
        return None
    state = TrackingState.from_json(known)
    if state.state != PENDING or not state.uri:
        return state
    destination = _destination_for(run_dir, record, state, None, os.environ)
    if destination is None:  # the saved URL was redacted and nothing here says it whole
        progress.warn(f"run {record.run_id} was not logged to MLflow: its server's URL needs credentials; set "
                      f"{ENV_URI} and `xrun runs sync {record.run_id}` sends it")
        return state
    return track_run(run_dir, destination, progress, verified=verified)


def _self_verified(run_dir: Path, ctx: RunContext) -> bool:
    """Whether the attestation on disk verifies with the key that signed it (its bytes are intact)."""
    from datetime import datetime, timezone

    from runner.attest.verify import read_attestation, verify_envelope

    assert ctx.signer is not None
    try:
        envelope = read_attestation(run_dir / "provenance.intoto.jsonl").envelopes[0]
    except (ValueError, OSError):
        return False
    result = verify_envelope(envelope, [ctx.signer.verifier()], None, datetime.now(timezone.utc))
    return all(c.ok for c in result.checks)


def _save_state(run_dir: Path, state: TrackingState) -> None:
    record = RunRecord.load(run_dir / "run.json")
    if record is None:
        return
    record.tracking = {**record.tracking, MLFLOW: state.to_json()}
    record.save(run_dir / "run.json")


# --- xrun runs sync ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    """What `xrun runs sync` did with one run."""

    run_id: str
    state: str  # logged, pending (failed again) or skipped (nothing to send)
    mlflow_run_id: str | None
    uri: str | None
    experiment: str | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `--json` row."""
        return fields_to_wire(self)


def sync_runs(run_dirs: list[Path], *, explicit: bool, flag_uri: str | None, keys: list[Path],
              progress: ProgressSink, environ: Mapping[str, str] = os.environ) -> list[SyncResult]:
    """Send runs to MLflow: the given ones (explicit), else every run left pending; logged ones are found, not resent."""
    results = []
    for run_dir in run_dirs:
        record = RunRecord.load(run_dir / "run.json")
        if record is None:
            continue
        known = record.tracking.get(MLFLOW)
        state = TrackingState.from_json(known) if isinstance(known, dict) else None
        if not explicit and (state is None or state.state != PENDING):
            continue
        if record.attestation == NODE_STATEMENT:  # a cluster run not collected yet: signed (and logged) by collect
            if explicit:
                results.append(SyncResult(record.run_id, "skipped", None, None, None,
                                          f"the run is not collected yet; `xrun collect {record.run_id}` signs and "
                                          "logs it"))
            continue
        if record.status not in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            if explicit:
                results.append(SyncResult(record.run_id, "skipped", None, None, None,
                                          f"the run is {record.status}; only finished runs are sent"))
            continue
        destination = _destination_for(run_dir, record, state, flag_uri, environ)
        if destination is None:
            raise UsageError(f"run {record.run_id}: no MLflow server to send it to; pass --mlflow URI or set {ENV_URI}")
        verified = _verified_with(run_dir, record, keys) if keys else None
        done = track_run(run_dir, destination, progress, verified=verified)
        results.append(SyncResult(record.run_id, done.state, done.external_id, redact(destination.uri),
                                  destination.experiment, done.error))
    return results


def _destination_for(run_dir: Path, record: RunRecord, state: TrackingState | None, flag_uri: str | None,
                     environ: Mapping[str, str]) -> Destination | None:
    """--mlflow, else where the run was meant to go, else $MLFLOW_TRACKING_URI or its manifest's block."""
    spec = _manifest_spec(run_dir)
    experiment = state.experiment if state and state.experiment else (spec.experiment if spec else record.name)
    # A saved URL whose credentials were redacted is of no use: the environment or manifest says it whole.
    saved = state.uri if state and state.uri and REDACTED not in state.uri else None
    uri = flag_uri or saved
    if uri:
        return Destination(uri, experiment)
    found = resolve_destination(None, spec, record.name, environ)
    return Destination(found.uri, experiment) if found else None


def _manifest_spec(run_dir: Path) -> TrackingSpec | None:
    """tracking.mlflow of the manifest copy in the run directory (None when absent or unreadable)."""
    import yaml

    from runner.manifest import TrackingSpec

    try:
        raw = yaml.safe_load((run_dir / "manifest.yaml").read_text(encoding="utf-8"))
        block = raw["tracking"]["mlflow"]
        return TrackingSpec(experiment=str(block["experiment"]), uri=block.get("uri"))
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _verified_with(run_dir: Path, record: RunRecord, keys: list[Path]) -> bool:
    from runner.attest import verify_attestation

    if not record.attestation or not (run_dir / record.attestation).is_file():
        return False
    return verify_attestation(run_dir / record.attestation, keys, []).ok
