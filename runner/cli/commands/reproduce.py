"""`xrun reproduce`: re-run what an attestation records and compare the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.attest.keys import is_public_key_file
from runner.attest.recorded import NOT_VERIFIED
from runner.cli.messages import warn
from runner.cli.options import run_options
from runner.errors import EXIT_MISMATCH, UsageError
from runner.report import text
from runner.report.json import render
from runner.reproduce import reproduce as reproduce_run


def reproduce(args: argparse.Namespace) -> int:
    """Verify, re-run and compare; exit 5 when the outputs differ beyond the tolerances."""
    trust, signing_key = split_keys(args)
    if args.no_verify and not trust:
        warn(NOT_VERIFIED)
    report = reproduce_run(args.attestation, manifest=args.manifest, keys=trust, rtol=args.rtol, atol=args.atol,
                           options=run_options(args, signing_key), code=args.code, verify=not args.no_verify)
    print(render(report) if args.json else text.reproduction(report))
    return 0 if report.reproduced else EXIT_MISMATCH


def split_keys(args: argparse.Namespace) -> tuple[list[Path], Path | None]:
    """--trust, and --key sorted by what the file holds: a public key is trusted (the old meaning), a private one signs."""
    trust, signing = list(args.trust), []
    for path in args.key_files:
        if is_public_key_file(path):
            warn(f"--key {path}: a public key; taken as --trust {path} (reproduce verifies with --trust PUB and "
                 "signs the new run with --key KEY)")
            trust.append(path)
        else:
            signing.append(path)
    if args.signing_key is not None:
        warn(f"--signing-key {args.signing_key}: write --key {args.signing_key} (the signing key's one name)")
        signing.append(args.signing_key)
    if len(signing) > 1:
        raise UsageError(f"{len(signing)} signing keys given ({', '.join(map(str, signing))}); the new run is signed "
                         "with one: give one private key with --key KEY")
    return trust, signing[0] if signing else None
