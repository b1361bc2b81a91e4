"""`xrun cache ls|verify|gc`: the content-addressed cache."""

from __future__ import annotations

import argparse

from runner.errors import EXIT_INTEGRITY
from runner.fetch import Cache, gc_cache, keep_for_manifest, list_cache, verify_cache
from runner.manifest import load_manifest
from runner.report import text
from runner.report.json import render
from runner.report.views import CacheCheck, CacheCollection, CacheListing


def ls(args: argparse.Namespace) -> int:
    """List the entries, most recently used first."""
    from runner.build.depslayer import list_records

    cache = Cache.default()
    entries = list_cache(cache)
    layers = list_records(cache)
    print(render(CacheListing(cache.root, entries, layers)) if args.json
          else text.cache_entries(cache.root, entries, layers))
    return 0


def verify(args: argparse.Namespace) -> int:
    """Re-hash every entry; exit 3 when one is corrupt."""
    results = verify_cache(Cache.default(), remove_bad=args.remove_bad)
    ok = all(r.ok for r in results)
    print(render(CacheCheck(ok, results)) if args.json else text.cache_verified(results))
    return 0 if ok else EXIT_INTEGRITY


def gc(args: argparse.Namespace) -> int:
    """Remove entries unused for --older-than, except what the --keep manifests need."""
    keep: set[tuple[str, str]] = set()
    for path in args.keep:
        keep |= keep_for_manifest(load_manifest(path))
    removed = gc_cache(Cache.default(), keep=keep, older_than_s=args.older_than, dry_run=args.dry_run)
    print(render(CacheCollection(args.dry_run, removed)) if args.json else text.cache_collected(removed, args.dry_run))
    return 0
