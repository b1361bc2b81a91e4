"""`xrun runs ls|show|diff|sync`: the run history, and MLflow logging that a down server missed."""

from __future__ import annotations

import argparse
import dataclasses

from runner.cli.options import runs_dir
from runner.progress import StderrProgress
from runner.report import text
from runner.report.json import render
from runner.report.views import RunView
from runner.runs.store import diff_runs, find_run, list_runs
from runner.backends import refresh
from runner.trackers.track import sync_runs


def ls(args: argparse.Namespace) -> int:
    """List the runs, newest last; a cluster run's state is asked of its scheduler."""
    folder = runs_dir(args)
    runs = [dataclasses.replace(r, record=refresh(r.path) or r.record) for r in list_runs(folder)]
    print(render(runs) if args.json else text.runs_list(runs, folder))
    return 0


def show(args: argparse.Namespace) -> int:
    """One run's record."""
    run = find_run(runs_dir(args), args.run[0])
    print(render(RunView(run.path, run.record, run.plan.raw)) if args.json else text.run_details(run))
    return 0


def diff(args: argparse.Namespace) -> int:
    """Two runs side by side: the fields, outputs and metrics that differ."""
    a, b = (find_run(runs_dir(args), ref) for ref in args.run)
    differences = diff_runs(a, b)
    print(render(differences) if args.json else text.runs_diff(a, b, differences))
    return 0


def sync(args: argparse.Namespace) -> int:
    """Send the given runs (default: the pending ones) to MLflow; exit 4 when one is still pending."""
    folder = runs_dir(args)
    runs = [find_run(folder, ref) for ref in args.run] if args.run else list_runs(folder)
    results = sync_runs([r.path for r in runs], explicit=bool(args.run), flag_uri=args.mlflow, keys=args.trust,
                        progress=StderrProgress(args.json))
    print(render(results) if args.json else text.synced(results))
    return 0 if all(r.state != "pending" for r in results) else 4
