"""Parsed arguments → the library's option objects, shared by the command modules."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from runner.context import RunOptions
from runner.fetch import FetchOptions
from runner.fetch.interface import verify_requested
from runner.rundir import default_runs_dir


def key_password() -> bytes | None:
    """$XRUN_KEY_PASSWORD, the password of an encrypted signing key (never a flag: it would show in `ps`)."""
    password = os.environ.get("XRUN_KEY_PASSWORD")
    return password.encode() if password else None


def verify_data(args: argparse.Namespace) -> bool:
    """--verify-data, or XRUN_VERIFY_DATA=1 (the CI setting)."""
    return bool(args.verify_data) or verify_requested(os.environ)


def fetch_options(args: argparse.Namespace) -> FetchOptions:
    """--quiet/--json and --verify-data as fetch options."""
    return FetchOptions(quiet=args.quiet or args.json, verify=verify_data(args))


def run_options(args: argparse.Namespace, signing_key: Path | None) -> RunOptions:
    """The options of `run`, `submit` and `reproduce` (args.parents: shared.run_options)."""
    return RunOptions(runs_dir=args.runs_dir, key=signing_key, key_password=key_password(),
                      allow_hardware_mismatch=args.allow_hardware_mismatch, quiet=args.quiet or args.json,
                      fetch=fetch_options(args), mlflow=args.mlflow, tsa=getattr(args, "tsa", None))


def runs_dir(args: argparse.Namespace) -> Path:
    """--runs-dir, else <--manifest's folder>/.xrun/runs."""
    return args.runs_dir or default_runs_dir(args.manifest.absolute().parent)
