"""Run history: list, show and diff the run directories (the directories are the truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.reproduce import diff_fields
from runner.watchdog import reap_orphans


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    record: dict[str, Any]
    plan: dict[str, Any]

    @property
    def duration_s(self) -> float | None:
        start, end = self.record.get("startedOn"), self.record.get("finishedOn")
        if not start or not end:
            return None
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()

    def to_json(self) -> dict[str, Any]:
        """Summary row for `runs ls --json`."""
        return {"run_id": self.run_id, "run_dir": str(self.path), "name": self.record.get("name"),
                "status": self.record.get("status"), "startedOn": self.record.get("startedOn"),
                "durationSeconds": self.duration_s, "planDigest": self.record.get("planDigest"),
                "outputs": self.record.get("outputs", {}), "metrics": self.record.get("metrics", {}),
                "attested": (self.path / "provenance.intoto.jsonl").exists()}


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run directory under runs_dir, oldest first; runs whose runner died are marked failed first."""
    if not runs_dir.is_dir():
        return []
    reap_orphans(runs_dir)
    runs = []
    for path in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        record = _load(path / "run.json")
        if record is None:
            continue
        runs.append(RunInfo(path.name, path, record, _load(path / "plan.json") or {}))
    return runs


def find_run(runs_dir: Path, ref: str) -> RunInfo:
    """A run by id, unique id prefix, path, or 'latest'."""
    direct = Path(ref)
    if (direct / "run.json").is_file():
        return RunInfo(direct.name, direct, _load(direct / "run.json") or {}, _load(direct / "plan.json") or {})
    runs = list_runs(runs_dir)
    if ref == "latest" and runs:
        return runs[-1]
    matches = [r for r in runs if r.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no run {ref!r} under {runs_dir}; `xrun runs ls` lists them")
    raise UsageError(f"{ref!r} matches {len(matches)} runs under {runs_dir}; give more of the run id")


def diff_runs(a: RunInfo, b: RunInfo) -> dict[str, Any]:
    """Manifest fields, plan fields, inputs, outputs and metrics that differ between two runs."""
    ma, mb = _manifest(a), _manifest(b)
    outputs = {}
    for path in sorted(set(a.record.get("outputs", {})) | set(b.record.get("outputs", {}))):
        da, db = a.record.get("outputs", {}).get(path), b.record.get("outputs", {}).get(path)
        if da != db:
            outputs[path] = {"a": da, "b": db}
    metrics = {}
    for path in sorted(set(a.record.get("metrics", {})) | set(b.record.get("metrics", {}))):
        va, vb = a.record.get("metrics", {}).get(path, {}), b.record.get("metrics", {}).get(path, {})
        for key in sorted(set(va) | set(vb)):
            if va.get(key) != vb.get(key):
                metrics[f"{path}:{key}"] = {"a": va.get(key), "b": vb.get(key)}
    return {
        "a": a.run_id, "b": b.run_id,
        "manifest": diff_fields(ma, mb),
        "plan": diff_fields(a.plan, b.plan),
        "outputs": outputs,
        "metrics": metrics,
        "host": diff_fields(a.record.get("host"), b.record.get("host")),
    }


def _manifest(run: RunInfo) -> Any:
    import yaml

    try:
        return yaml.safe_load((run.path / "manifest.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
