"""`xrun reproduce`: re-run what an attestation records and compare the outputs."""

from __future__ import annotations

import argparse

from runner.attest.recorded import NOT_VERIFIED
from runner.cli.messages import warn
from runner.cli.options import run_options, split_keys
from runner.errors import EXIT_MISMATCH
from runner.report import text
from runner.report.json import render
from runner.reproduce import reproduce as reproduce_run


def reproduce(args: argparse.Namespace) -> int:
    """Verify, re-run and compare; exit 5 when the outputs differ beyond the tolerances."""
    trust, signing_key = split_keys(args, "the new run", "--signing-key", args.signing_key)
    if args.no_verify and not trust:
        warn(NOT_VERIFIED)
    report = reproduce_run(args.attestation, manifest=args.manifest, keys=trust, rtol=args.rtol, atol=args.atol,
                           options=run_options(args, signing_key), code=args.code, verify=not args.no_verify)
    print(render(report) if args.json else text.reproduction(report))
    return 0 if report.reproduced else EXIT_MISMATCH
