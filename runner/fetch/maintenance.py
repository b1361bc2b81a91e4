"""Cache maintenance for `xrun cache ls|verify|gc`: list entries, re-hash them, remove unused ones."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.fetch.archive import check_tree, remove_tree
from runner.fetch.cache import Cache, CacheEntry, file_fingerprint, hash_file, walk_tree
from runner.fetch.digests import normalize_digests, primary
from runner.wire import fields_to_wire

if TYPE_CHECKING:
    from runner.manifest import Manifest
    from runner.plan import Plan


@dataclass(frozen=True)
class VerifyResult:
    """One entry re-hashed: ok, or what is wrong with it (and whether it was removed)."""

    entry: CacheEntry
    ok: bool
    problems: tuple[str, ...] = ()
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {**self.entry.to_json(), "ok": self.ok, "problems": list(self.problems), "removed": self.removed}


@dataclass(frozen=True)
class Removed:
    """What gc removed (or would remove with dry_run): an entry, or a stale partial download."""

    kind: str  # "blob" | "tree" | "partial"
    path: Path
    size: int
    digest: str | None
    last_used: float

    def to_json(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return fields_to_wire(self)


def list_cache(cache: Cache) -> list[CacheEntry]:
    """Every blob and tree, most recently used first."""
    return sorted(cache.entries(), key=lambda e: (-e.last_used, e.kind, e.digest))


def verify_cache(cache: Cache, *, remove_bad: bool = False, workers: int | None = None) -> list[VerifyResult]:
    """Re-hash every entry (for auditors); with remove_bad, delete the ones that fail.

    An entry that hashes right gets a fresh fingerprint, so runs trust it again without re-hashing.
    """
    entries = list(cache.entries())
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib releases the GIL
        results = list(pool.map(lambda e: _verify_one(cache, e), entries))
    if not remove_bad:
        return results
    out = []
    for result in results:
        if not result.ok:
            _remove_entry(cache, result.entry)
            result = VerifyResult(result.entry, False, result.problems, removed=True)
        out.append(result)
    return out


def _verify_one(cache: Cache, entry: CacheEntry) -> VerifyResult:
    try:
        if entry.kind == "blob":
            before = file_fingerprint(os.stat(entry.path))
            actual = hash_file(entry.path, entry.algorithm)
            if actual != entry.hexdigest:
                cache.drop_fingerprint(entry.algorithm, entry.hexdigest, "blob")
                return VerifyResult(entry, False, (f"content hashes to {entry.algorithm}:{actual}",))
            # Blessed only when nothing changed while it was read.
            if file_fingerprint(os.stat(entry.path)) == before:
                cache.write_fingerprint(entry.algorithm, entry.hexdigest, "blob", before)
            return VerifyResult(entry, True)
        before = cache.tree_fingerprint(entry.algorithm, entry.hexdigest)
        problems = check_tree(cache, entry.algorithm, entry.hexdigest, hash_file)
        if problems:
            cache.drop_fingerprint(entry.algorithm, entry.hexdigest, "tree")
        elif cache.tree_fingerprint(entry.algorithm, entry.hexdigest) == before:
            cache.write_fingerprint(entry.algorithm, entry.hexdigest, "tree", before)
        return VerifyResult(entry, not problems, tuple(problems))
    except OSError as exc:
        return VerifyResult(entry, False, (f"unreadable: {exc.strerror or exc}",))


def gc_cache(cache: Cache, *, keep: set[tuple[str, str]], older_than_s: float, dry_run: bool = False,
             now: float | None = None) -> list[Removed]:
    """Remove entries not in `keep` that no run used for older_than_s seconds, and stale partials."""
    now = time.time() if now is None else now
    removed: list[Removed] = []
    for entry in list(cache.entries()):
        if (entry.algorithm, entry.hexdigest) in keep or now - entry.last_used < older_than_s:
            continue
        if dry_run:
            removed.append(Removed(entry.kind, entry.path, entry.size, entry.digest, entry.last_used))
            continue
        with cache.lock(entry.algorithm, entry.hexdigest, entry.kind) as held:
            # A run may have used it since we listed: its marker moved forward.
            used = cache.last_used(entry.algorithm, entry.hexdigest)
            if used is not None and now - used < older_than_s:
                continue
            _remove_entry(cache, entry)
            held.unlink()
        removed.append(Removed(entry.kind, entry.path, entry.size, entry.digest, entry.last_used))
    for path in cache.leftovers():
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if now - st.st_mtime < older_than_s:
            continue
        try:
            size = st.st_size if not path.is_dir() else tree_size(path)
            if not dry_run:
                remove_tree(path)
        except OSError:
            # Another user's 0700 folder in a shared cache, or one removed while we walk it: not ours to mend.
            continue
        removed.append(Removed("partial", path, size, None, st.st_mtime))
    for path, gone in cache.work_dirs():
        # A build killed with SIGKILL left its folder: gone now when its process on this host is;
        # another host's (a shared cache) only by age.
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not gone and now - st.st_mtime < older_than_s:
            continue
        try:
            size = tree_size(path) if path.is_dir() else st.st_size
            if not dry_run:
                remove_tree(path)
        except OSError:
            continue  # as above: unreadable or already gone
        removed.append(Removed("partial", path, size, None, st.st_mtime))
    if not dry_run:
        _drop_orphan_markers(cache)
    return removed


def tree_size(path: Path) -> int:
    """Bytes of the regular files under a folder (symlinks not followed)."""
    return sum(s.st_size for _, s in walk_tree(path) if stat.S_ISREG(s.st_mode))


def _remove_entry(cache: Cache, entry: CacheEntry) -> None:
    cache.drop_fingerprint(entry.algorithm, entry.hexdigest, entry.kind)
    if entry.kind == "tree":
        cache.drop_fingerprint(entry.algorithm, entry.hexdigest, "dataset")  # a dataset tree's summary
    if entry.kind == "blob":
        remove_tree(entry.path)
    else:
        remove_tree(entry.path)
        try:
            os.unlink(cache.tree_listing_path(entry.algorithm, entry.hexdigest))
        except FileNotFoundError:
            pass


def _drop_orphan_markers(cache: Cache) -> None:
    """Usage markers and fingerprints of entries that no longer exist (neither blob nor tree)."""
    base = cache.root / "used"
    for marker in base.glob("*/*/*") if base.is_dir() else ():
        algorithm, hexdigest = marker.parent.parent.name, marker.name
        if cache.lookup(algorithm, hexdigest) is None and cache.lookup_tree(algorithm, hexdigest) is None:
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
    state = cache.root / "state"
    for record in state.glob("*/*/*") if state.is_dir() else ():
        algorithm, (hexdigest, _, kind) = record.parent.parent.name, record.name.partition(".")
        present = (cache.lookup(algorithm, hexdigest) if kind == "blob"
                   else cache.lookup_tree(algorithm, hexdigest) if kind == "tree" else None)
        if present is None:
            try:
                os.unlink(record)  # also an interrupted write's temporary file (its name starts with '.')
            except FileNotFoundError:
                pass


def keep_for_manifest(manifest: "Manifest") -> set[tuple[str, str]]:
    """Cache keys a manifest needs: each data item's digest and every hash its lockfile allows."""
    keep = {primary(normalize_digests(item.digests)) for item in manifest.data if item.digests}
    if manifest.image.lockfile is not None and manifest.image.lockfile.is_file():
        from runner.lockfiles import load_lockfile

        lock = load_lockfile(manifest.image.lockfile, manifest.image.lockfile_format)
        keep |= set(_package_keys(p.hashes for p in lock.packages))
    return keep


def keep_for_plan(plan: "Plan") -> set[tuple[str, str]]:
    """Cache keys a resolved plan needs (data items and locked packages)."""
    keep = {primary(normalize_digests(p.item.digests)) for p in plan.data if p.item.digests}
    if plan.lockfile is not None:
        keep |= set(_package_keys(p.hashes for p in plan.lockfile.packages))
    return keep


def _package_keys(hash_lists: Iterable[Iterable[str]]) -> Iterable[tuple[str, str]]:
    for hashes in hash_lists:
        for value in hashes:
            algorithm, _, hexdigest = value.partition(":")
            if hexdigest:
                yield algorithm.lower(), hexdigest.lower()
