"""Seed sweeps as a thing: the members of one sweep, found by id, and their statistics (`xrun runs summary`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.runs.record import RunRecord, RunStatus, SchedulerState
from runner.wire import fields_to_wire


@dataclass(frozen=True)
class MetricSummary:
    """One metric key across a sweep's succeeded members."""

    key: str  # FILE:KEY
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    min: float
    max: float

    @classmethod
    def of(cls, key: str, values: Sequence[float]) -> MetricSummary:
        """n, mean, sample std (0 for one value), min and max of one metric's values (at least one)."""
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(key=key, n=len(values), mean=statistics.fmean(values), std=std, min=min(values), max=max(values))


@dataclass(frozen=True)
class FailedMember:
    """A member that ended without succeeding, and why."""

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
    """The runs of one sweep (its id, a unique prefix, or one member's id), by array index, with the scheduler's
    current word."""
    from runner.backends import refresh
    from runner.runs.store import find_runs

    runs = find_runs(runs_dir, sweep)
    sched = runs[0].record.scheduler
    if sched is None or not sched.sweep:
        raise UsageError(f"{sweep!r} is a run, not a seed sweep; `xrun runs ls` shows sweep ids")
    if len(runs) == 1:  # one member named: its sweep
        runs = find_runs(runs_dir, sched.sweep)
    return [(r.path, refresh(r.path) or r.record) for r in runs]


def summarize_sweep(runs_dir: Path, sweep: str) -> SweepSummary:
    """Mean, std, min, max and n per metric key across the sweep's succeeded members; failed members listed."""
    from runner.backends.interface import run_state

    members = sweep_members(runs_dir, sweep)
    values: dict[str, list[float]] = {}
    failed: list[FailedMember] = []
    succeeded = unfinished = 0
    for _, record in members:
        sched = record.scheduler
        assert sched is not None
        if record.status.unfinished and not sched.final:
            unfinished += 1
            continue
        if record.status != RunStatus.SUCCEEDED or sched.state in (SchedulerState.FAILED, SchedulerState.CANCELLED,
                                                                    SchedulerState.TIMED_OUT):
            failed.append(FailedMember(record.run_id, sched.seed, run_state(record), record.error))
            continue
        succeeded += 1
        for file, metrics in sorted(record.metrics.items()):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    values.setdefault(f"{file}:{key}", []).append(float(value))
    rows = tuple(MetricSummary.of(k, v) for k, v in sorted(values.items()))
    sweep_id = members[0][1].scheduler.sweep  # type: ignore[union-attr]
    seeds = tuple(r.scheduler.seed for _, r in members if r.scheduler and r.scheduler.seed is not None)
    return SweepSummary(sweep=str(sweep_id), members=len(members), succeeded=succeeded, unfinished=unfinished,
                        seeds=seeds, metrics=rows, failed=tuple(failed))
