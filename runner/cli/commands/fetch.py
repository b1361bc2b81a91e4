"""`xrun fetch` and `xrun data digest`: data into the verified cache, and a folder's tree digest."""

from __future__ import annotations

import argparse
import dataclasses

from runner.cli.options import fetch_options
from runner.fetch import Cache, fetch_data
from runner.fetch.sources.listing import digest_directory, listing_json, write_listing
from runner.fetch.sources.render import digest_text
from runner.manifest import load_manifest
from runner.plan import resolve_plan
from runner.report import text
from runner.report.json import render


def fetch(args: argparse.Namespace) -> int:
    """Fetch and verify every data item of the manifest."""
    plan = resolve_plan(load_manifest(args.manifest))
    options = dataclasses.replace(fetch_options(args), retries=args.retries, parallel=args.parallel)
    items = fetch_data(plan, Cache.default(), options)
    print(render(items) if args.json else text.fetched(items))
    return 0


def data_digest(args: argparse.Namespace) -> int:
    """Hash a folder into its canonical listing and tree digest (--write: also DIR/.xrun-tree.json)."""
    files = digest_directory(args.dir)
    listing = write_listing(args.dir, files) if args.write else None
    print(render(listing_json(files)) if args.json else digest_text(files, listing))
    return 0
