"""The MLflow tracker: one xrun run → one MLflow run (params, metrics per step, tags, artifacts).

The members of a seed sweep are children (MLflow's `mlflow.parentRunId`) of one parent run per sweep,
tagged `xrun.sweep` and `xrun.role=sweep`, found by those tags before one is created.

It talks to the server through the MLflow client library (MlflowClient, from `pip install
'xrun[mlflow]'`). Exactly once: the MLflow run carries the tag `xrun.runId`; a run is looked up by
it before one is created, and it is marked `xrun.logged=true` only after everything was sent, so a
run cut off half-way is replaced on the next `xrun runs sync`, and a logged one is never sent twice.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from runner.runs.record import RunStatus
from runner.trackers.interface import SMALL_OUTPUT_BYTES, TrackedRun, Tracker, TrackerError

RUN_ID_TAG, LOGGED_TAG = "xrun.runId", "xrun.logged"
SWEEP_TAG, ROLE_TAG, PARENT_TAG = "xrun.sweep", "xrun.role", "mlflow.parentRunId"  # MLflow's own nesting tag
# The client retries a refused connection with exponential backoff for minutes by default; a run
# waiting on a tracker that is down would be worse than the warning it gets instead.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                   # stdout is xrun's (`--json`); the client would print "View run … at: URL" there
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
BATCH = 500  # below MLflow's 1000 metrics per log_batch
_KEY_CHARS = re.compile(r"[^\w./\- ]")


class MlflowTracker(Tracker):
    """Logs runs to the MLflow tracking server (or store) at `uri`, into `experiment`."""

    name = "mlflow"

    def log_run(self, run: TrackedRun) -> str:
        """Create (or find) the MLflow run of this xrun run and send everything; return the MLflow run id."""
        for key, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackerError("MLflow tracking needs the MLflow client: pip install 'xrun[mlflow]'") from None
        client = MlflowClient(tracking_uri=self.uri)
        try:
            return self._log(client, run)
        except TrackerError:
            raise
        except Exception as exc:  # the client raises many kinds (MlflowException, requests, OSError)
            raise TrackerError(explain(self.uri, exc)) from None

    def _log(self, client: Any, run: TrackedRun) -> str:
        experiment_id = self._experiment_id(client)
        existing = self._find(client, experiment_id, run.run_id)
        if existing is not None and existing.data.tags.get(LOGGED_TAG) == "true":
            return str(existing.info.run_id)
        if existing is not None:  # cut off half-way last time: replace it rather than log twice
            client.delete_run(existing.info.run_id)
        tags = run.tags()
        if run.sweep:
            tags[PARENT_TAG] = self._sweep_parent(client, experiment_id, run.sweep, run.name)
        created = client.create_run(experiment_id, start_time=run.started_ms, tags=tags,
                                    run_name=f"{run.name}-{run.run_id}")
        mlflow_id = str(created.info.run_id)
        self._log_values(client, mlflow_id, run)
        self._log_files(client, mlflow_id, run)
        client.set_tag(mlflow_id, LOGGED_TAG, "true")
        client.set_terminated(mlflow_id, status="FINISHED" if run.status == RunStatus.SUCCEEDED else "FAILED",
                              end_time=run.finished_ms)
        return mlflow_id

    def _experiment_id(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise TrackerError(f"MLflow experiment {self.experiment!r} at {self.uri} is deleted; restore it "
                                   "(mlflow experiments restore) or name another in tracking.mlflow.experiment")
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(self.experiment))
        except Exception:  # created meanwhile by a concurrent run
            again = client.get_experiment_by_name(self.experiment)
            if again is None:
                raise
            return str(again.experiment_id)

    @staticmethod
    def _sweep_parent(client: Any, experiment_id: str, sweep: str, name: str) -> str:
        """The MLflow run that groups a sweep's members (tags xrun.sweep, xrun.role=sweep); created once."""
        query = f"tags.`{SWEEP_TAG}` = {_quoted(sweep)} and tags.`{ROLE_TAG}` = 'sweep'"

        def oldest() -> Any:
            found = client.search_runs([experiment_id], filter_string=query, max_results=10,
                                       order_by=["attributes.start_time ASC"])
            return found[0] if found else None

        parent = oldest()
        if parent is None:
            created = client.create_run(experiment_id, tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep", "xrun.name": name},
                                        run_name=f"{name}-sweep-{sweep}")
            client.set_terminated(created.info.run_id, status="FINISHED")
            # Two members that created one at once agree on the first; a search index that lags may not list
            # even ours yet, and then ours is the parent.
            parent = oldest() or created
            if parent.info.run_id != created.info.run_id:
                client.delete_run(created.info.run_id)
        return str(parent.info.run_id)

    @staticmethod
    def _find(client: Any, experiment_id: str, run_id: str) -> Any:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = {_quoted(run_id)}",
                                  max_results=5)
        logged = [r for r in runs if r.data.tags.get(LOGGED_TAG) == "true"]
        return (logged or list(runs) or [None])[0]

    @staticmethod
    def _log_values(client: Any, mlflow_id: str, run: TrackedRun) -> None:
        from mlflow.entities import Metric, Param

        stamp = run.finished_ms or int(time.time() * 1000)
        params = [Param(_key(k), v[:6000]) for k, v in run.params().items()]
        series = run.step_series()
        metrics = [Metric(_key(k), float(v), stamp, 0) for k, v in run.metric_names().items() if k not in series]
        for key, pairs in series.items():
            metrics += [Metric(_key(key), float(value), stamp, int(step)) for step, value in pairs]
        for start in range(0, max(len(params), 1), 100):
            client.log_batch(mlflow_id, params=params[start:start + 100])
        for start in range(0, len(metrics), BATCH):
            client.log_batch(mlflow_id, metrics=metrics[start:start + BATCH])

    @staticmethod
    def _log_files(client: Any, mlflow_id: str, run: TrackedRun) -> None:
        for path in (run.attestation, run.manifest, run.run_dir / "run.json"):
            if path is not None and path.is_file():
                client.log_artifact(mlflow_id, str(path), artifact_path="xrun")
        for output in run.outputs:
            if 0 <= output.size <= SMALL_OUTPUT_BYTES and output.file.is_file():
                folder = "/".join(["outputs", *output.path.split("/")[:-1]])
                client.log_artifact(mlflow_id, str(output.file), artifact_path=folder)


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and space)."""
    return _KEY_CHARS.sub("_", name)[:250] or "_"


def _quoted(value: str) -> str:
    """A value as a single-quoted string literal of MLflow's filter syntax (backslash and quote escaped)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


_UNREACHABLE = ("Max retries exceeded", "NewConnectionError", "Connection refused", "ConnectTimeout", "ReadTimeout",
                "Failed to resolve", "RemoteDisconnected")


def explain(uri: str, exc: BaseException) -> str:
    """One line: unreachable servers said plainly, anything else in the client's words (shortened)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if any(marker in text for marker in _UNREACHABLE):
        return f"cannot reach the MLflow server at {uri} (connection refused or timed out)"
    return f"MLflow at {uri}: {text if len(text) <= 240 else text[:237] + '…'}"
