"""The typed results the run stages hand on: what a run reports, what its provenance is described from, and
what a caller of the pipeline (a cluster node) changes in the stages.

They live apart from runner/pipeline.py so that the modules the pipeline calls (provenance.py) and its
callers (the node side) can name them without importing the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runner.attest.statement import ProvenanceFacts
from runner.build.image import BuiltImage
from runner.context import RunContext
from runner.engine.execute import Execution
from runner.fetch.interface import FetchedData
from runner.outputs import Outputs
from runner.rundir import RunDir
from runner.runs.record import RunStatus
from runner.wire import fields_to_wire


@dataclass(frozen=True)
class RunSummary:
    """What `xrun run` reports."""

    run_id: str
    run_dir: Path
    status: RunStatus
    image_id: str
    plan_digest: str
    outputs: dict[str, str]
    metrics: dict[str, dict[str, float]]
    attestation: Path | None
    bundle: Path | None
    signed: bool
    keyid: str | None
    tracking: dict[str, Any] = field(default_factory=dict)  # tracker → its state (runner/trackers)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return fields_to_wire(self)


@dataclass(frozen=True)
class CompletedRun:
    """The typed results of every stage of one run: what the provenance is described from."""

    run: RunDir
    fetched: tuple[FetchedData, ...]
    image: BuiltImage
    execution: Execution
    outputs: Outputs


@dataclass(frozen=True)
class StageHooks:
    """What a backend's node side changes in the stages (runner/backends/slurm.py); the defaults are `xrun run`'s."""

    image: Callable[[RunContext], BuiltImage] | None = None  # default: build (or find) the plan's image
    facts: Callable[[ProvenanceFacts], ProvenanceFacts] | None = None  # e.g. the cluster's builder id
    attestation: str | None = None  # file name of the statement in the run dir (default provenance.intoto.jsonl)
