"""Run history: list, show and diff the run directories (the directories are the truth)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.engine.watchdog import reap_orphans
from runner.errors import UsageError
from runner.plan import PlanRecord
from runner.reproduce import diff_fields
from runner.rundir import PLAN_FILE
from runner.runs.record import RunRecord


@dataclass(frozen=True)
class RunInfo:
    """One run directory: its id, path, typed record and plan (empty when plan.json is unreadable)."""

    run_id: str
    path: Path
    record: RunRecord
    plan: PlanRecord

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (None while unfinished)."""
        start, end = self.record.started_on, self.record.finished_on
        if not start or not end:
            return None
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()

    @property
    def attested(self) -> bool:
        """Whether the run's attestation exists."""
        return (self.path / "provenance.intoto.jsonl").exists()

    def to_json(self) -> dict[str, Any]:
        """Summary row for `runs ls --json`."""
        r = self.record
        return {"runId": self.run_id, "runDir": str(self.path), "name": r.name or None, "status": r.status,
                "startedOn": r.started_on or None, "durationSeconds": self.duration_s,
                "planDigest": r.plan_digest or None, "outputs": r.outputs, "metrics": r.metrics,
                "attested": self.attested,
                "scheduler": r.scheduler.to_json() if r.scheduler is not None else None}


def load_run(path: Path) -> RunInfo | None:
    """The run in one directory, or None when it holds no readable run.json."""
    record = RunRecord.load(path / "run.json")
    if record is None:
        return None
    return RunInfo(path.name, path, record, PlanRecord.load(path / PLAN_FILE) or PlanRecord({}))


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run directory under runs_dir, oldest first; runs whose runner died are marked failed first."""
    if not runs_dir.is_dir():
        return []
    reap_orphans(runs_dir)
    runs = [load_run(path) for path in sorted(p for p in runs_dir.iterdir() if p.is_dir())]
    return [r for r in runs if r is not None]


def find_run(runs_dir: Path, ref: str) -> RunInfo:
    """A run by id (an exact id before any prefix: `<sweep>-1` is not `<sweep>-10`), unique id prefix, path, or
    'latest'."""
    direct = load_run(Path(ref)) if (Path(ref) / "run.json").is_file() else None
    if direct is not None:
        return direct
    runs = list_runs(runs_dir)
    if ref == "latest" and runs:
        return runs[-1]
    matches = [r for r in runs if r.run_id == ref] or [r for r in runs if r.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no run {ref!r} under {runs_dir}; `xrun runs ls` lists them")
    raise UsageError(f"{ref!r} matches {len(matches)} runs under {runs_dir}; give more of the run id")


def find_runs(runs_dir: Path, ref: str) -> list[RunInfo]:
    """One run, or every member of a seed sweep (by array index), named by id, sweep id, unique prefix of either,
    path or 'latest'; exact ids match before prefixes."""
    direct = load_run(Path(ref)) if (Path(ref) / "run.json").is_file() else None
    if direct is not None:
        return [direct]
    runs = list_runs(runs_dir)
    if ref == "latest" and runs:
        return [runs[-1]]
    exact = [r for r in runs if r.run_id == ref]
    if exact:
        return exact
    sweeps: dict[str, list[RunInfo]] = {}
    for run in runs:
        if run.record.scheduler is not None and run.record.scheduler.sweep:
            sweeps.setdefault(run.record.scheduler.sweep, []).append(run)
    if ref in sweeps:
        return _by_index(sweeps[ref])
    matches = [r for r in runs if r.run_id.startswith(ref)]
    named = [s for s in sweeps if s.startswith(ref)]
    if len(named) == 1 and all(r in sweeps[named[0]] for r in matches):
        return _by_index(sweeps[named[0]])  # a prefix of one sweep's id: the sweep
    if len(matches) == 1 and not named:
        return matches
    if not matches and not named:
        raise UsageError(f"no run or sweep {ref!r} under {runs_dir}; `xrun runs ls` lists them")
    raise UsageError(f"{ref!r} matches {len(matches)} runs and {len(named)} sweeps under {runs_dir}; give more of "
                     "the id")


def _by_index(members: list[RunInfo]) -> list[RunInfo]:
    return sorted(members, key=lambda r: r.record.scheduler.array_index or 0 if r.record.scheduler else 0)


def diff_runs(a: RunInfo, b: RunInfo) -> dict[str, Any]:
    """Manifest fields, plan fields, inputs, outputs and metrics that differ between two runs."""
    ra, rb = a.record, b.record
    outputs = {}
    for path in sorted(set(ra.outputs) | set(rb.outputs)):
        da, db = ra.outputs.get(path), rb.outputs.get(path)
        if da != db:
            outputs[path] = {"a": da, "b": db}
    metrics = {}
    for path in sorted(set(ra.metrics) | set(rb.metrics)):
        va, vb = ra.metrics.get(path, {}), rb.metrics.get(path, {})
        for key in sorted(set(va) | set(vb)):
            if va.get(key) != vb.get(key):
                metrics[f"{path}:{key}"] = {"a": va.get(key), "b": vb.get(key)}
    return {
        "a": a.run_id, "b": b.run_id,
        "manifest": diff_fields(_manifest(a), _manifest(b)),
        "plan": diff_fields(a.plan.raw, b.plan.raw),
        "outputs": outputs,
        "metrics": metrics,
        "host": diff_fields(ra.host, rb.host),
    }


def _manifest(run: RunInfo) -> Any:
    import yaml

    try:
        return yaml.safe_load((run.path / "manifest.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
