"""Where runs go: the submission interface (interface.py) and one file per backend, registered here.

`local` runs the pipeline on this host's Docker engine; `slurm` submits a job (or a job array per
seed sweep) whose node runs xrun on the frozen plan (runner/node.py); `kubernetes` renders Jobs.
Nothing outside this package chooses code by a backend's name: it asks the registry.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from runner.backends.interface import Backend, Handle
from runner.errors import UsageError
from runner.runs.record import RunRecord

__all__ = ["BACKENDS", "attach", "get_backend", "refresh"]

# name → the module and class: a backend's module is imported when it is used, so a compute node's
# `xrun node-run` does not load the Kubernetes renderer (YAML) or the local runner.
BACKENDS: dict[str, tuple[str, str]] = {"slurm": ("runner.backends.slurm", "SlurmBackend"),
                                        "kubernetes": ("runner.backends.kubernetes", "KubernetesBackend"),
                                        "local": ("runner.backends.local", "LocalBackend")}


def get_backend(name: str) -> Backend:
    """The backend called `name`; a usage error listing the known ones otherwise."""
    if name not in BACKENDS:
        raise UsageError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    backend: type[Backend] = getattr(importlib.import_module(module), cls)
    return backend()


def attach(run_dir: Path) -> Handle:
    """The handle on the run in run_dir, from the backend its run.json names (local when none)."""
    record = RunRecord.load(run_dir / "run.json")
    if record is None:
        raise UsageError(f"{run_dir}: no run.json; give a run directory or id")
    name = record.scheduler.backend if record.scheduler is not None else "local"
    return get_backend(name if name in BACKENDS else "local").attach(run_dir)


def refresh(run_dir: Path) -> RunRecord | None:
    """run.json with the scheduler's current word on its job written in; None when unreadable."""
    try:
        return attach(run_dir).state()
    except UsageError:
        return None
