"""Fetch data and wheels into the content-addressed cache, verified while streaming.

The public API (the CLI, the pipeline and the image stage code against these names only):

- `fetch_blob(cache, uri, digests, *, name, base_dir=None, options=FetchOptions()) -> Blob`
- `fetch_blobs(cache, requests: list[BlobRequest], *, base_dir=None, options=FetchOptions()) -> list[Blob]`
  (the same for many blobs in the bounded pool, e.g. wheels)
- `fetch_data(plan, cache, options=FetchOptions()) -> list[FetchedData]`
- `list_cache(cache) -> list[CacheEntry]`, `verify_cache(cache, *, remove_bad=False) -> list[VerifyResult]`,
  `gc_cache(cache, *, keep, older_than_s, dry_run=False) -> list[Removed]`
- `keep_for_manifest(manifest)` / `keep_for_plan(plan)`: the cache keys gc must keep
- `Cancelled`: raised by fetch_blob(cancel=event) once the event is set (the partial file is kept)
- `changed_since_fetch(cache, fetched) -> list[str]`: items whose entry changed after the fetch
  stage vouched for it (one stat each; meant for right after the run)

A cache entry is used only while its stat equals the fingerprint recorded when it was verified;
otherwise it is re-hashed, and removed and fetched again when it changed (`FetchOptions.verify`,
`--verify-data`, `XRUN_VERIFY_DATA=1`: re-hash every entry used).
"""

from runner.fetch.cache import Blob, Cache, CacheEntry
from runner.fetch.download import Cancelled, fetch_blob
from runner.fetch.interface import FetchedData, FetchOptions
from runner.fetch.maintenance import (Removed, VerifyResult, gc_cache, keep_for_manifest, keep_for_plan, list_cache,
                                      verify_cache)
from runner.fetch.stage import BlobRequest, changed_since_fetch, fetch_blobs, fetch_data

__all__ = ["Blob", "BlobRequest", "Cache", "CacheEntry", "Cancelled", "FetchOptions", "FetchedData", "Removed",
           "VerifyResult", "changed_since_fetch", "fetch_blob", "fetch_blobs", "fetch_data", "gc_cache",
           "keep_for_manifest", "keep_for_plan", "list_cache", "verify_cache"]
