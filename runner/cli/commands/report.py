"""`xrun report`: one self-contained HTML page about runs."""

from __future__ import annotations

import argparse

from runner.cli.options import runs_dir
from runner.report import text
from runner.report.html import write_report
from runner.report.json import render


def report(args: argparse.Namespace) -> int:
    """Write the page; print what was written."""
    written = write_report(runs_dir(args), args.run, args.sweep, args.out, keys=args.trust,
                           experiments=tuple(args.experiment))
    print(render(written) if args.json else text.report_written(written))
    return 0
