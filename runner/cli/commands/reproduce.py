"""`xrun reproduce`: re-run what an attestation records and compare the outputs."""

from __future__ import annotations

import argparse

from runner.cli.options import run_options
from runner.errors import EXIT_MISMATCH
from runner.report import text
from runner.report.json import render
from runner.reproduce import reproduce as reproduce_run


def reproduce(args: argparse.Namespace) -> int:
    """Verify, re-run and compare; exit 5 when the outputs differ beyond the tolerances."""
    report = reproduce_run(args.attestation, manifest=args.manifest, keys=args.keys, rtol=args.rtol, atol=args.atol,
                           options=run_options(args, args.signing_key), code=args.code)
    print(render(report) if args.json else text.reproduction(report))
    return 0 if report.reproduced else EXIT_MISMATCH
