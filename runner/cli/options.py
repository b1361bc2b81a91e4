"""Parsed arguments → the library's option objects, shared by the command modules."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from runner.attest.keys import is_public_key_file, key_password
from runner.cli.args import public_key_as_trust
from runner.cli.messages import warn
from runner.context import RunOptions
from runner.fetch import FetchOptions
from runner.fetch.interface import verify_requested
from runner.errors import UsageError
from runner.rundir import default_runs_dir


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


def split_keys(args: argparse.Namespace, signs: str, old_flag: str | None = None,
               old_value: Path | None = None) -> tuple[list[Path], Path | None]:
    """--trust, and --key sorted by what the file holds: a public key is trusted (the old meaning), a private one signs."""
    trust, signing = list(args.trust), []
    for path in args.key_files:
        if is_public_key_file(path):
            warn(public_key_as_trust(path))
            trust.append(path)
        else:
            signing.append(path)
    if old_value is not None:
        warn(f"{old_flag} {old_value}: write --key {old_value} (the signing key's one name)")
        signing.append(old_value)
    if len(signing) > 1:
        raise UsageError(f"{len(signing)} signing keys given ({', '.join(map(str, signing))}); {signs} is signed "
                         "with one: give one private key with --key KEY")
    return trust, signing[0] if signing else None
