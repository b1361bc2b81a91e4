"""`xrun build` and `xrun rebuild`: the hermetic image, built from a manifest or from an attestation."""

from __future__ import annotations

import argparse
import sys

from runner.attest.recorded import NOT_VERIFIED
from runner.build.export import parse_repository, publish
from runner.build.image import build_image
from runner.build.rebuild import rebuild as rebuild_image
from runner.build.rebuild import render_text
from runner.cli.messages import warn
from runner.cli.options import fetch_options
from runner.engine.client import docker_client
from runner.errors import EXIT_INTEGRITY
from runner.fetch import Cache
from runner.manifest import load_manifest
from runner.plan import resolve_plan
from runner.report import text
from runner.report.json import render


def build(args: argparse.Namespace) -> int:
    """Build (or find) the image; --oci-layout and --push publish it by digest."""
    if args.push:
        parse_repository(args.push)  # a bad target is exit 2 before anything is built
    plan = resolve_plan(load_manifest(args.manifest))
    cache, client = Cache.default(), docker_client()
    image = build_image(plan, cache, client, quiet=args.quiet or args.json, fetch=fetch_options(args))
    out = publish(image, client, cache, plan.build_digest, oci_layout=args.oci_layout, push=args.push)
    if args.json:
        print(render(out))
    else:
        image_id, notes = text.built(out)
        print(image_id)
        print(notes, file=sys.stderr)
    return 0


def rebuild(args: argparse.Namespace) -> int:
    """Rebuild the image an attestation records and compare; exit 3 when it differs."""
    if args.no_verify and not args.trust:
        warn(NOT_VERIFIED)
    report = rebuild_image(args.attestation, code=args.code, keys=args.trust, quiet=args.quiet or args.json,
                           verify=not args.no_verify)
    print(render(report) if args.json else render_text(report))
    return 0 if report.identical else EXIT_INTEGRITY
