"""`xrun schema` and `xrun hardware`: what ships with xrun, and this host."""

from __future__ import annotations

import argparse
import sys

from runner import hardware as hw
from runner.errors import UsageError
from runner.report import text
from runner.report.json import render
from runner.report.views import HardwareView
from runner.resources import resource_dir

SCHEMAS = {"experiment": "experiment.schema.json", "policy": "policy.schema.json",
           "statement": "statement.schema.json", "hardware-classes": "hardware-classes.json"}


def schema(args: argparse.Namespace) -> int:
    """Print one of the JSON Schemas (or the hardware catalog) shipped with xrun."""
    if args.name not in SCHEMAS:
        raise UsageError(f"unknown schema {args.name!r}; choose one of: {', '.join(SCHEMAS)}")
    sys.stdout.write((resource_dir("schemas") / SCHEMAS[args.name]).read_text(encoding="utf-8"))
    return 0


def hardware(args: argparse.Namespace) -> int:
    """The hardware catalog, this host, and which classes it fits."""
    host = hw.detect_host()
    classes = hw.catalog()
    allocation = hw.allocated_gpus()  # inside a Slurm job: only the GPUs it was given count, as for a run
    view = HardwareView(classes, host, {n: not hw.shortfalls(c, host, allocation) for n, c in classes.items()})
    print(render(view) if args.json else text.hardware_catalog(view))
    return 0
