"""`xrun run`: the whole pipeline for one manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.cli.options import run_options
from runner.pipeline import run_experiment
from runner.report import text
from runner.report.json import render


def run(args: argparse.Namespace) -> int:
    """Plan, fetch, build, run and attest; print the run summary."""
    summary = run_experiment(Path(args.manifest), run_options(args, args.key))
    print(render(summary) if args.json else text.run_summary(summary))
    return 0
