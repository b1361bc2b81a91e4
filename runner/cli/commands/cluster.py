"""Cluster runs: `xrun submit`, `collect`, `wait`, `cancel`, `logs` and `runs summary` (`node-run`: node.py).

Every command after `submit` takes RUN or SWEEP: one run, or every member of a seed sweep, in one process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.attest.password import key_password
from runner.backends import attach
from runner.cli.options import run_options, runs_dir
from runner.errors import EXIT_INTEGRITY
from runner.report import text
from runner.report.json import render
from runner.runs.record import RunStatus, SchedulerState
from runner.runs.store import find_runs
from runner.runs.sweep import summarize_sweep
from runner.submit import (SubmitOptions, SubmittedRun, cancel_runs, collect_runs, parse_seeds, submit as submit_runs,
                           wait_runs)


def submit(args: argparse.Namespace) -> int:
    """Submit the experiment (or a seed sweep) to the backend; exit 1 when a run that ended failed (3: refused)."""
    options = SubmitOptions(
        run=run_options(args, args.key), backend=args.backend, seeds=parse_seeds(args.seeds) if args.seeds else (),
        shared_dir=args.shared_dir, registry=args.registry, partition=args.partition, account=args.account,
        qos=args.qos, sbatch_args=tuple(args.sbatch_args), parallel=max(1, args.parallel), wait=args.wait,
        render=args.render)
    result = submit_runs(Path(args.manifest), options)
    print(render(result) if args.json else text.submitted(result))
    if args.wait:  # every run was collected: the exit code of `xrun wait`
        return _exit_code(result.runs)
    # Without --wait a cluster's runs are pending: only runs that ended can have failed.
    fine = (SchedulerState.PENDING, RunStatus.SUCCEEDED, SchedulerState.COMPLETED)
    failed = [r for r in result.runs if r.state not in fine]
    return 1 if failed else 0


def _cluster_runs(args: argparse.Namespace) -> list[Path]:
    """RUN or SWEEP: one run directory, or every member of the sweep by array index (exact ids before prefixes)."""
    return [r.path for r in find_runs(runs_dir(args), args.run)]


def _print_collected(args: argparse.Namespace, results: list[SubmittedRun]) -> int:
    if args.json:
        print(render(results[0]) if len(results) == 1 else render(results))
    else:
        print("\n".join(text.collected(r) for r in results))
    return _exit_code(results)


def _exit_code(results: Sequence[SubmittedRun]) -> int:
    """3 when a member's statement was refused, 1 when a run has no attestation (it failed), else 0."""
    if any(r.refused for r in results):
        return EXIT_INTEGRITY
    return 0 if all(r.attestation for r in results) else 1


def collect(args: argparse.Namespace) -> int:
    """Check finished cluster runs' outputs and dependencies against the nodes' statements and sign them here."""
    return _print_collected(args, collect_runs(_cluster_runs(args), key=args.key, key_password=key_password()))


def wait(args: argparse.Namespace) -> int:
    """Wait for the jobs to end, then collect them."""
    return _print_collected(args, wait_runs(_cluster_runs(args), key=args.key, key_password=key_password()))


def cancel(args: argparse.Namespace) -> int:
    """Ask the scheduler to cancel the runs' jobs."""
    print("\n".join(text.cancelled(record) for record in cancel_runs(_cluster_runs(args))))
    return 0


def logs(args: argparse.Namespace) -> int:
    """Print (or follow, -f) each run's job log."""
    run_dirs = _cluster_runs(args)
    for run_dir in run_dirs:
        if len(run_dirs) > 1:
            print(f"==> {run_dir.name} <==", flush=True)
        attach(run_dir).logs(sys.stdout, follow=args.follow)
    return 0


def summary(args: argparse.Namespace) -> int:
    """Per-metric statistics across a seed sweep; exit 1 when a member failed."""
    sweep = summarize_sweep(runs_dir(args), args.run[0])
    print(render(sweep) if args.json else text.sweep_summary(sweep))
    return 1 if sweep.failed else 0
