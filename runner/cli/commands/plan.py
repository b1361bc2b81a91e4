"""`xrun validate` and `xrun plan`: read a manifest, run nothing."""

from __future__ import annotations

import argparse

from runner.cli.messages import print_error, warn
from runner.errors import XrunError
from runner.manifest import load_manifest
from runner.plan import resolve_plan
from runner.report import text
from runner.report.json import render
from runner.report.views import PlanView, Validation


def validate(args: argparse.Namespace) -> int:
    """Validate each manifest; the first failure's exit code (2 for an invalid manifest)."""
    results: list[Validation] = []
    failed: XrunError | None = None
    for path in args.manifest:
        try:
            m = load_manifest(path)
            results.append(Validation(path, True, [], name=m.name, sha256=m.sha256))
        except XrunError as exc:
            failed = failed or exc
            results.append(Validation(path, False, exc.lines or [exc.message]))
            if not args.json:
                print_error(exc.message, exc.lines)
    if args.json:
        print(render(results if len(results) > 1 else results[0]))
    elif any(r.valid for r in results):
        print(text.validated(results))
    return failed.exit_code if failed else 0


def plan(args: argparse.Namespace) -> int:
    """Resolve the manifest into the pinned plan and print it."""
    resolved = resolve_plan(load_manifest(args.manifest))
    data, code_tree = resolved.to_json(), resolved.code.summary()
    warning = code_tree.warning()
    if warning:
        warn(warning)
    if args.json:
        print(render(PlanView(resolved.digest, resolved.build_digest, data, code_tree)))
    else:
        print(text.plan_summary(data, resolved.digest, code_tree))
    return 0
