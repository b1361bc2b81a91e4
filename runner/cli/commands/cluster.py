"""Cluster runs: `xrun submit`, `node-run`, `collect`, `wait`, `cancel`, `logs` and `runs summary`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.attest.keys import key_password
from runner.backends.node import node_run as run_on_node
from runner.cli.options import run_options, runs_dir
from runner.report import text
from runner.report.json import render
from runner.runs.store import find_run
from runner.submit import (SubmitOptions, SubmittedRun, cancel_run, collect as collect_run, parse_seeds, stream_log,
                           submit as submit_runs, summarize_sweep, wait_run)


def submit(args: argparse.Namespace) -> int:
    """Submit the experiment (or a seed sweep) to the backend; exit 1 when a run that was waited for failed."""
    options = SubmitOptions(
        run=run_options(args, args.key), backend=args.backend, seeds=parse_seeds(args.seeds) if args.seeds else (),
        shared_dir=args.shared_dir, registry=args.registry, partition=args.partition, account=args.account,
        qos=args.qos, sbatch_args=tuple(args.sbatch_args), parallel=max(1, args.parallel), wait=args.wait,
        render=args.render)
    result = submit_runs(Path(args.manifest), options)
    print(render(result) if args.json else text.submitted(result))
    failed = [r for r in result.runs if r.state not in ("pending", "succeeded", "completed")]
    return 1 if failed and (args.wait or args.backend == "local") else 0


def node_run(args: argparse.Namespace) -> int:
    """Run a directory prepared by `xrun submit` (on a compute node); the submitter signs."""
    summary = run_on_node(args.run_dir)
    print(text.node_ran(summary), file=sys.stderr)
    return 0


def _cluster_run(args: argparse.Namespace) -> Path:
    return find_run(runs_dir(args), args.run).path


def _print_collected(args: argparse.Namespace, result: SubmittedRun) -> int:
    print(render(result) if args.json else text.collected(result))
    return 0 if result.attestation else 1


def collect(args: argparse.Namespace) -> int:
    """Check a finished cluster run's outputs against the node's statement and sign it here."""
    return _print_collected(args, collect_run(_cluster_run(args), key=args.key, key_password=key_password()))


def wait(args: argparse.Namespace) -> int:
    """Wait for the job to end, then collect it."""
    return _print_collected(args, wait_run(_cluster_run(args), key=args.key, key_password=key_password()))


def cancel(args: argparse.Namespace) -> int:
    """Ask the scheduler to cancel the run's job."""
    print(text.cancelled(cancel_run(_cluster_run(args))))
    return 0


def logs(args: argparse.Namespace) -> int:
    """Print (or follow, -f) the run's job log."""
    stream_log(_cluster_run(args), sys.stdout, follow=args.follow)
    return 0


def summary(args: argparse.Namespace) -> int:
    """Per-metric statistics across a seed sweep; exit 1 when a member failed."""
    sweep = summarize_sweep(runs_dir(args), args.run[0])
    print(render(sweep) if args.json else text.sweep_summary(sweep))
    return 1 if sweep.failed else 0
