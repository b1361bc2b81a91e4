"""The data stage: every data item of a plan fetched, verified and (when asked) unpacked, in parallel.

`fetch_blobs` is the same machinery without the plan, for the image stage's wheels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import FetchError, IntegrityError
from runner.fetch.archive import recheck_tree, unpack_tree
from runner.fetch.cache import Blob, Cache
from runner.fetch.digests import primary
from runner.fetch.download import check_request, fetch_blob
from runner.fetch.interface import FetchedData, FetchOptions
from runner.fetch.pool import JobContext, run_jobs

if TYPE_CHECKING:  # the plan module does not need us; keep the import one-way at runtime too
    from runner.plan import Plan, PlannedData


@dataclass(frozen=True)
class BlobRequest:
    """One thing to fetch with fetch_blobs: a name for messages, where, and its digests."""

    name: str
    uri: str
    digests: dict[str, str] = field(hash=False)
    kind: str = "file"  # what it is, in messages: "wheel", "data item"


def fetch_blobs(cache: Cache, requests: Sequence[BlobRequest], *, base_dir: Path | None = None,
                options: FetchOptions = FetchOptions()) -> list[Blob]:
    """fetch_blob for many requests in the bounded pool; results in request order."""
    def job(request: BlobRequest) -> Any:
        return lambda ctx: _blob(cache, request.uri, request.digests, request.name, base_dir, options, ctx,
                                 request.kind)

    return run_jobs([job(r) for r in requests], options)


def fetch_data(plan: Plan, cache: Cache, options: FetchOptions = FetchOptions()) -> list[FetchedData]:
    """Fetch every data item of the plan (bounded parallelism); results in manifest order."""
    root = plan.manifest.root

    def job(planned: PlannedData) -> Any:
        return lambda ctx: _fetch_item(planned, root, cache, options, ctx)

    return run_jobs([job(p) for p in plan.data], options)


def _blob(cache: Cache, uri: str, digests: dict[str, str], name: str, base_dir: Path | None,
          options: FetchOptions, ctx: JobContext, kind: str = "data item") -> Blob:
    return fetch_blob(cache, uri, digests, name=name, base_dir=base_dir, options=options, fetchers=ctx.fetchers,
                      reporter=ctx.reporter, cancel=ctx.cancel, kind=kind)


def _fetch_item(planned: PlannedData, root: Path, cache: Cache, options: FetchOptions,
                ctx: JobContext) -> FetchedData:
    item = planned.item
    if item.source is not None:
        from runner.fetch.sources import source_for
        from runner.fetch.sources.tree import fetch_dataset

        return fetch_dataset(planned, source_for(item, root), root, cache, options, ctx)
    tampered: Path | None = None
    if item.unpack:
        ready, tampered = _ready_tree(planned, root, cache, options, ctx)
        if ready is not None:
            return ready
    try:
        blob = _blob(cache, item.uri, item.digests, item.name, root, options, ctx)
    except FetchError as exc:
        if tampered is None:
            raise
        raise IntegrityError(f"data item '{item.name}': the unpacked cache entry {tampered} was modified on disk "
                             f"and removed, and its archive cannot be fetched again: {exc.message}") from None
    host_path, cache_hit = blob.path, not blob.fetched
    if item.unpack:
        tree = unpack_tree(cache, blob, name=item.name, uri=item.uri)
        host_path = tree.path
        cache_hit = cache_hit and not tree.unpacked
    return FetchedData(name=item.name, uri=item.uri, algorithm=blob.algorithm, hexdigest=blob.hexdigest,
                       host_path=host_path, container_path=planned.container_path, size=blob.size,
                       unpacked=item.unpack, cache_hit=cache_hit)


def _ready_tree(planned: PlannedData, root: Path, cache: Cache, options: FetchOptions,
                ctx: JobContext) -> tuple[FetchedData | None, Path | None]:
    """An archive already unpacked needs no blob: the tree alone serves the run (gc may drop the blob).

    Only while its fingerprint vouches for every member (else, or with verify, it is re-hashed).
    Returns the item when the tree serves, else None and the tree's path when it was removed as changed.
    """
    item = planned.item
    expected, _ = check_request(item.uri, item.digests, name=item.name, base_dir=root)
    algorithm, hexdigest = primary(expected)
    tree = cache.lookup_tree(algorithm, hexdigest)
    if tree is None:
        return None, None
    if options.verify or not cache.tree_trusted(algorithm, hexdigest):
        problems = recheck_tree(cache, algorithm, hexdigest, verify=options.verify)
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            ctx.reporter.warn(f"cache entry for data item '{item.name}' ({algorithm}:{hexdigest[:12]}…) was modified "
                              f"on disk ({tree}: {problems[0]}{more}); removed, unpacking it again")
            return None, tree
        if cache.lookup_tree(algorithm, hexdigest) is None:
            return None, None  # another process removed it meanwhile
    blob = cache.lookup(algorithm, hexdigest)
    if blob is not None:
        size = blob.size
    else:
        listing = cache.read_tree_listing(algorithm, hexdigest) or {}
        size = int(listing.get("archiveSize", 0))
    cache.mark_used(algorithm, hexdigest)
    return FetchedData(name=item.name, uri=item.uri, algorithm=algorithm, hexdigest=hexdigest, host_path=tree,
                       container_path=planned.container_path, size=size, unpacked=True, cache_hit=True), None


def changed_since_fetch(cache: Cache, fetched: Sequence[FetchedData]) -> list[str]:
    """Items whose cache entry no longer matches its fingerprint: for a check right after the run.

    The fetch stage proves each entry is the verified bytes before the run; a write while the
    container ran would go unseen by it. One stat per blob (per member for a tree) closes that gap.
    """
    changed = []
    for item in fetched:
        if item.is_tree:
            trusted = cache.tree_trusted(item.algorithm, item.hexdigest)
        else:
            probe = cache.probe(item.algorithm, item.hexdigest)
            trusted = probe is not None and probe.trusted and probe.blob.path == item.host_path
        if not trusted:
            changed.append(item.name)
    return changed
