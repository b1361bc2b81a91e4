"""Fetch a source's files into the content-addressed cache and mount them as one read-only folder.

Every file is a blob keyed by its sha256 (identical files across datasets are stored once). A file
pinned only by DVC's md5 is fetched and verified by md5, then hashed with sha256 and re-keyed; a
small alias (state/md5/…/<md5>.sha256) remembers the sha256 so a warm run needs no read. The tree
is trees/sha256/<ab>/<tree digest>/: hard links to the blobs (copies where links are refused),
folders read-only, with the archive-style listing beside it, so `xrun cache verify`, the tree
fingerprint and `recheck_tree` treat it like an unpacked archive. Linking a blob changes its ctime,
so blob fingerprints are recorded after the tree is linked; a blob shared by a second dataset
later is re-hashed once by the first tree's next run (its members' ctime moved).

A local folder takes a bulk path (`_stage_folder`, `_commit_folder`): each file is read once,
hashed and written straight to its place in a temporary tree (no fsync per file), the tree digest
is checked against the pin, one syncfs makes all of it durable, and only then does each distinct
content become a blob (a hard link, under its entry lock) and the tree get renamed into place. Its
new blobs get no fingerprint file of their own (a file per blob cost more than the copy): they are
the tree's members, inode for inode, so the tree's fingerprint vouches for them; another user of
such a blob re-hashes it once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from runner.errors import FetchError, IntegrityError
from runner.fetch.archive import LISTING_VERSION, recheck_tree, remove_tree, sync_filesystem
from runner.fetch.cache import READ_ONLY_DIR, READ_ONLY_FILE, Blob, Cache, fsync_dir, hash_file
from runner.fetch.download import Cancelled, fetch_blob
from runner.fetch.interface import CHUNK, FetchedData, FetchOptions
from runner.fetch.pool import JobContext, ThreadFetchers
from runner.fetch.progress import DatasetProgress
from runner.fetch.sources.interface import ALIAS_KIND, DIR_ALIAS_KIND, DataSource, FileRequest, Resolved, SourceEnv
from runner.fetch.sources.listing import ListedFile, scan_directory, tree_digest

if TYPE_CHECKING:
    from runner.plan import PlannedData

T = TypeVar("T")
SUMMARY_KIND = "dataset"  # state/sha256/<ab>/<tree digest>.dataset: uri, size and file count
PROGRESS_BATCH = 256  # files copied per progress update (a label per file costs more than a small copy)


def fetch_dataset(planned: PlannedData, source: DataSource, root: Path, cache: Cache, options: FetchOptions,
                  ctx: JobContext) -> FetchedData:
    """The item's files verified in the cache and mounted as a tree (or one file): a stat per file when warm."""
    item = planned.item
    known = source.known_result(cache)
    if known is not None:
        ready = _ready(planned, source, known, cache, options, ctx)
        if ready is not None:
            return ready
    env = SourceEnv(cache, options, ctx.fetchers, ctx.reporter, ctx.cancel, root)
    resolved = source.resolve(env)
    total = sum(r.size or 0 for r in resolved.requests) or None
    count = len(resolved.requests)
    scanned = None
    if resolved.local_root is not None:
        scanned = scan_directory(resolved.local_root)
        count, total = len(scanned), sum(st.st_size for _, _, st in scanned) or None
    progress = DatasetProgress(ctx.reporter, item.name, count, total)
    try:
        if scanned is not None:
            staged = _stage_folder(cache, scanned, item.name, resolved.tree_digest, progress, ctx.cancel)
        else:
            blobs = _fetch_requests(cache, resolved.requests, item.name, root, options, progress, ctx, resolved.pin)
    finally:
        progress.close()
    if scanned is not None:
        return _finish_folder(planned, source, resolved, cache, staged)
    files = [ListedFile(rel, blob.size, blob.hexdigest) for rel, blob in blobs]
    fetched = any(blob.fetched for _, blob in blobs)
    if resolved.single_file:
        rel, blob = blobs[0]
        _check_pin(item.name, resolved, blob.hexdigest, files, what="file")
        if resolved.alias is not None:
            cache.write_fingerprint(*resolved.alias, ALIAS_KIND, blob.hexdigest)
        return FetchedData(name=item.name, uri=resolved.uri, algorithm="sha256", hexdigest=blob.hexdigest,
                           host_path=blob.path, container_path=planned.container_path, size=blob.size,
                           unpacked=False, cache_hit=not fetched, kind=source.kind)
    digest = tree_digest(files)
    _check_pin(item.name, resolved, digest, files, what="tree")
    path, made = materialize(cache, digest, blobs, description={"source": source.kind, "uri": resolved.uri})
    if resolved.alias is not None:
        cache.write_fingerprint(*resolved.alias, DIR_ALIAS_KIND, digest)
    cache.mark_used("sha256", digest)
    return FetchedData(name=item.name, uri=resolved.uri, algorithm="sha256", hexdigest=digest, host_path=path,
                       container_path=planned.container_path, size=sum(f.size for f in files), unpacked=False,
                       cache_hit=not fetched and not made, kind=source.kind, files=len(files))


def _ready(planned: PlannedData, source: DataSource, known: tuple[str, str], cache: Cache, options: FetchOptions,
           ctx: JobContext) -> FetchedData | None:
    """A tree (or blob) already in the cache serves the run while its fingerprint vouches for it."""
    item = planned.item
    kind, hexdigest = known
    if kind == "blob":
        probe = cache.probe("sha256", hexdigest)
        if probe is None or not ((probe.trusted and not options.verify) or cache.rehash_blob(probe.blob)):
            return None
        cache.mark_used("sha256", hexdigest)
        return FetchedData(name=item.name, uri=source.describe().get("uri", item.uri), algorithm="sha256",
                           hexdigest=hexdigest, host_path=probe.blob.path, container_path=planned.container_path,
                           size=probe.blob.size, unpacked=False, cache_hit=True, kind=source.kind)
    tree = cache.lookup_tree("sha256", hexdigest)
    if tree is None:
        return None
    if options.verify or not cache.tree_trusted("sha256", hexdigest):
        problems = recheck_tree(cache, "sha256", hexdigest, verify=options.verify)
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            ctx.reporter.warn(f"cache entry for data item '{item.name}' (sha256:{hexdigest[:12]}…) was modified on "
                              f"disk ({tree}: {problems[0]}{more}); removed, fetching it again")
            return None
        if cache.lookup_tree("sha256", hexdigest) is None:
            return None
    summary = _tree_summary(cache, hexdigest)
    cache.mark_used("sha256", hexdigest)
    return FetchedData(name=item.name, uri=summary.uri or item.uri, algorithm="sha256",
                       hexdigest=hexdigest, host_path=tree, container_path=planned.container_path,
                       size=summary.size, unpacked=False, cache_hit=True, kind=source.kind, files=summary.files)


@dataclass(frozen=True)
class _Summary:
    """What a warm run reports about a dataset tree, without parsing its listing of every file."""

    uri: str | None
    size: int
    files: int


def _tree_summary(cache: Cache, hexdigest: str) -> _Summary:
    """The tree's summary (state/…/<digest>.dataset), else counted from its listing."""
    try:
        with open(cache.state_path("sha256", hexdigest, SUMMARY_KIND), "rb") as f:
            doc = json.loads(f.read(1 << 16))
        return _Summary(str(doc["uri"]) if doc.get("uri") is not None else None, int(doc["size"]), int(doc["files"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    listing = cache.read_tree_listing("sha256", hexdigest) or {}
    files = listing.get("files", [])
    uri = listing.get("dataset", {}).get("uri")
    return _Summary(str(uri) if uri is not None else None, sum(int(f["size"]) for f in files), len(files))


def _write_summary(cache: Cache, hexdigest: str, uri: str, size: int, files: int) -> None:
    """Best effort, like a fingerprint: without it a warm run parses the listing instead."""
    path = cache.state_path("sha256", hexdigest, SUMMARY_KIND)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"uri": uri, "size": size, "files": files}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def dataset_listing(cache: Cache, hexdigest: str) -> list[ListedFile] | None:
    """The files of a dataset tree in the cache, from its listing (None when unreadable)."""
    listing = cache.read_tree_listing("sha256", hexdigest) or {}
    try:
        return [ListedFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in listing["files"]]
    except (KeyError, TypeError, ValueError):
        return None


def _check_pin(name: str, resolved: Resolved, actual: str, files: list[ListedFile], *, what: str) -> None:
    """The result must have the pinned digest; name the files that differ when a listing says what to expect."""
    if resolved.tree_digest is None or resolved.tree_digest == actual:
        return
    detail = ""
    if resolved.expected:
        want = {f.path: f for f in resolved.expected}
        got = {f.path: f for f in files}
        changed = sorted(p for p in want.keys() & got.keys() if want[p].sha256 != got[p].sha256)
        added, removed = sorted(got.keys() - want.keys()), sorted(want.keys() - got.keys())
        parts = [*(f"{p} changed" for p in changed), *(f"{p} added" for p in added),
                 *(f"{p} removed" for p in removed)]
        if parts:
            detail = f" ({'; '.join(parts[:5])}{f'; {len(parts) - 5} more' if len(parts) > 5 else ''})"
    raise IntegrityError(f"{name}: {resolved.uri}: {what} digest mismatch: expected sha256:{resolved.tree_digest}, "
                         f"got sha256:{actual}{detail}; the data changed: check it, and update the pin in {resolved.pin} "
                         "only if you trust the new content"
                         + (" (`xrun data digest DIR` prints it)" if resolved.pin == "the manifest" else ""))


# --- fetching the files -----------------------------------------------------------------------------


def _fetch_requests(cache: Cache, requests: Sequence[FileRequest], name: str, root: Path, options: FetchOptions,
                    progress: DatasetProgress, ctx: JobContext, pin: str) -> list[tuple[str, Blob]]:
    """Every request through the transports, in a bounded pool of its own (one Session per thread)."""
    fetchers = ThreadFetchers(options)

    def one(request: FileRequest) -> tuple[str, Blob]:
        if ctx.cancel.is_set():
            raise Cancelled()
        shown = f"{name}/{request.path}" if request.path else name
        if "sha256" in request.digests:
            blob = fetch_blob(cache, request.uri, request.digests, name=shown, base_dir=root, options=options,
                              fetchers=fetchers.get(), reporter=progress, cancel=ctx.cancel, kind="data file",
                              headers=request.headers, size=request.size, pin=pin)
        else:
            blob = _fetch_by_alias(cache, request, shown, root, options, fetchers.get(), progress, ctx.cancel, pin)
        return request.path, blob

    try:
        return _map(one, list(requests), options.parallel, ctx.cancel)
    finally:
        fetchers.close()


def _map(fn: Callable[[FileRequest], T], items: list[FileRequest], parallel: int,
         cancel: threading.Event) -> list[T]:
    if parallel <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(parallel, len(items)), thread_name_prefix="xrun-dataset") as pool:
        futures = [pool.submit(fn, i) for i in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            cancel.set()  # the others stop at their next chunk; their partial files stay for a resume
            raise


def _fetch_by_alias(cache: Cache, request: FileRequest, shown: str, root: Path, options: FetchOptions,
                    fetchers: object, progress: DatasetProgress, cancel: threading.Event, pin: str) -> Blob:
    """A file pinned by md5 only (DVC): verified by md5, stored by sha256, remembered by an alias."""
    algorithm, hexdigest = next(iter(request.digests.items()))
    known = cache.read_fingerprint(algorithm, hexdigest, ALIAS_KIND)
    if known is not None:
        probe = cache.probe("sha256", known)
        if probe is not None and ((probe.trusted and not options.verify) or cache.rehash_blob(probe.blob)):
            cache.mark_used("sha256", known)
            progress.file_done()
            return probe.blob
    blob = fetch_blob(cache, request.uri, request.digests, name=shown, base_dir=root, options=options,
                      fetchers=fetchers, reporter=progress, cancel=cancel, kind="data file",  # type: ignore[arg-type]
                      headers=request.headers, size=request.size, pin=pin)
    sha = hash_file(blob.path, "sha256")
    adopted = _adopt(cache, blob, sha)
    cache.write_fingerprint(algorithm, hexdigest, ALIAS_KIND, sha)
    return Blob("sha256", sha, adopted, blob.size, fetched=blob.fetched)


def _adopt(cache: Cache, blob: Blob, sha: str) -> Path:
    """Make the md5-keyed blob the sha256 entry (a link, then the md5 entry goes)."""
    final = cache.blob_path("sha256", sha)
    with cache.lock("sha256", sha):
        probe = cache.probe("sha256", sha)
        if probe is None or not (probe.trusted or cache.rehash_blob(probe.blob)):
            if probe is not None:
                cache.remove_blob("sha256", sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{sha}.{os.getpid()}.{threading.get_ident()}.partial")
            try:
                os.link(blob.path, tmp)
            except OSError:
                shutil.copyfile(blob.path, tmp)
                os.chmod(tmp, READ_ONLY_FILE)
            os.replace(tmp, final)
            cache.record_blob("sha256", sha)
    with cache.lock(blob.algorithm, blob.hexdigest):
        cache.remove_blob(blob.algorithm, blob.hexdigest)
    return final


@dataclass
class _Staged:
    """A local folder copied into a temporary tree beside the cache's trees, each file hashed while copied."""

    work: Path  # trees/sha256/<ab>/.tmp-…: renamed into place once verified, removed otherwise
    files: list[ListedFile]
    first: dict[str, str]  # sha256 → the member holding that content first (the one that becomes its blob)
    later: list[tuple[str, str]]  # (member, sha256) of repeats: hard links to the first
    dirs: set[str]

    def discard(self) -> None:
        """Remove what is left of the temporary tree (nothing once it was renamed into place)."""
        remove_tree(self.work)


def _stage_folder(cache: Cache, scanned: list[tuple[str, Path, os.stat_result]], name: str, pin: str | None,
                  progress: DatasetProgress, cancel: threading.Event) -> _Staged:
    """Copy a local folder into a temporary tree in the cache, hashing each file once while it is copied.

    The digest of a local file is only known once it is read, so its bytes go straight to their
    place in the tree; identical files become hard links to the first. Nothing here is an entry yet.
    """
    parent = cache.root / "trees" / "sha256" / ((pin or "00")[:2])
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{pin or 'ingest'}-", dir=parent))
    except OSError as exc:
        raise _cache_write_error(cache, exc) from None
    staged = _Staged(work, [], {}, [], set())
    base = str(work)
    pending_files = pending_bytes = 0
    try:
        for rel, path, st in scanned:
            if cancel.is_set():
                raise Cancelled()
            folder = rel.rpartition("/")[0]
            if folder and folder not in staged.dirs:
                _make_dirs(base, folder, staged.dirs, cache)
            src, dst = os.fspath(path), f"{base}/{rel}"
            try:
                sha, size = _copy_hashing(src, dst, st.st_size, staged.first, base)
            except _ReadError as exc:
                raise FetchError(f"{name}: cannot read {path}: {exc.reason}; fix its permissions") from None
            except OSError as exc:
                raise _cache_write_error(cache, exc) from None
            if sha in staged.first:
                staged.later.append((rel, sha))
            else:
                staged.first[sha] = rel
            staged.files.append(ListedFile(rel, size, sha))
            pending_files += 1
            pending_bytes += size
            if pending_files >= PROGRESS_BATCH:
                progress.advance(pending_bytes)
                progress.files_done(pending_files)
                pending_files = pending_bytes = 0
        if pending_files:
            progress.advance(pending_bytes)
            progress.files_done(pending_files)
    except BaseException:
        staged.discard()
        raise
    return staged


class _ReadError(Exception):
    """The source file could not be read (as opposed to the cache not being writable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _make_dirs(base: str, folder: str, made: set[str], cache: Cache) -> None:
    try:
        os.makedirs(f"{base}/{folder}", exist_ok=True)
    except OSError as exc:
        raise _cache_write_error(cache, exc) from None
    parts = folder.split("/")
    made.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))


def _cache_write_error(cache: Cache, exc: OSError) -> FetchError:
    return FetchError(f"cannot write to the cache {cache.root}: {exc.strerror or exc}; free space or fix "
                      "permissions there, or set XRUN_CACHE_DIR")


def _copy_hashing(src: str, dst: str, size_hint: int, first: dict[str, str], base: str) -> tuple[str, int]:
    """Copy src to dst hashing the bytes read (the ones written); a repeat of earlier content becomes a link."""
    try:
        fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _ReadError(exc.strerror or str(exc)) from None
    try:
        try:
            # A read that returns less than asked for is at the end: a small file costs one read.
            ask = min(size_hint, CHUNK) + 1
            data = os.read(fd_in, ask)
        except OSError as exc:
            raise _ReadError(exc.strerror or str(exc)) from None
        if len(data) < ask:
            sha = hashlib.sha256(data).hexdigest()
            if sha in first:
                os.link(f"{base}/{first[sha]}", dst)
            else:
                _write_new(dst, (data,))
            return sha, len(data)
        return _copy_streaming(fd_in, data, dst, first, base)
    finally:
        os.close(fd_in)


def _copy_streaming(fd_in: int, head: bytes, dst: str, first: dict[str, str], base: str) -> tuple[str, int]:
    h = hashlib.sha256(head)
    size = len(head)

    def chunks() -> Iterator[bytes]:
        nonlocal size
        yield head
        while True:
            try:
                chunk = os.read(fd_in, CHUNK)
            except OSError as exc:
                raise _ReadError(exc.strerror or str(exc)) from None
            if not chunk:
                return
            h.update(chunk)
            size += len(chunk)
            yield chunk

    _write_new(dst, chunks())
    sha = h.hexdigest()
    if sha in first:
        os.unlink(dst)
        os.link(f"{base}/{first[sha]}", dst)
    return sha, size


def _write_new(dst: str, chunks: Iterable[bytes]) -> None:
    """Create dst read-only with these bytes; no fsync here (one syncfs covers the whole tree)."""
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, READ_ONLY_FILE)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd_out, view):]
        os.fchmod(fd_out, READ_ONLY_FILE)  # exactly 0444 whatever the umask
    finally:
        os.close(fd_out)


def _finish_folder(planned: PlannedData, source: DataSource, resolved: Resolved, cache: Cache,
                   staged: _Staged) -> FetchedData:
    """Check the staged folder against the pin, then make it the tree and its files blobs."""
    item = planned.item
    try:
        digest = tree_digest(staged.files)
        _check_pin(item.name, resolved, digest, staged.files, what="tree")
        path, made = _commit_folder(cache, digest, staged, {"source": source.kind, "uri": resolved.uri})
    finally:
        staged.discard()
    cache.mark_used("sha256", digest)
    return FetchedData(name=item.name, uri=resolved.uri, algorithm="sha256", hexdigest=digest, host_path=path,
                       container_path=planned.container_path, size=sum(f.size for f in staged.files),
                       unpacked=False, cache_hit=not made, kind=source.kind, files=len(staged.files))


def _commit_folder(cache: Cache, digest: str, staged: _Staged, description: dict[str, str]) -> tuple[Path, bool]:
    """One syncfs, then each new content becomes a blob (a hard link) and the tree is renamed into place.

    Nothing becomes visible before its bytes are durable: the sync comes before the first link into
    blobs/ and before the rename. A blob already in the cache is used instead of the new copy (after
    a re-hash when its fingerprint does not vouch for it), so identical files are stored once.
    """
    found = cache.lookup_tree("sha256", digest)
    if found is not None and (cache.tree_trusted("sha256", digest)
                              or not recheck_tree(cache, "sha256", digest, verify=False)):
        if cache.lookup_tree("sha256", digest) is not None:
            return found, False
    final = cache.tree_path("sha256", digest)
    work = staged.work
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with cache.lock("sha256", digest, "tree"):
            if cache.lookup_tree("sha256", digest) is not None:
                if cache.tree_trusted("sha256", digest):
                    return final, False  # another run made it meanwhile
                _drop_tree(cache, digest)  # untrusted, and ours is verified: replace it
            sync_filesystem(work)
            shared = _link_blobs(cache, staged)
            for rel in sorted(staged.dirs, key=lambda d: d.count("/"), reverse=True):
                os.chmod(work / rel, READ_ONLY_DIR)
            os.chmod(work, READ_ONLY_DIR)
            listing = {"version": LISTING_VERSION, "dataset": description,
                       "files": [{"path": f.path, "sha256": f.sha256, "size": f.size, "mode": 0o644}
                                 for f in staged.files],
                       "symlinks": [], "dirs": sorted(staged.dirs)}
            cache.write_tree_listing("sha256", digest, listing)
            os.rename(work, final)
            fsync_dir(final.parent)
            cache.record_tree("sha256", digest)
            _write_summary(cache, digest, description["uri"], sum(f.size for f in staged.files), len(staged.files))
            # Blobs that were already there got a link more (ctime moved): vouch for them as they are now.
            for sha in shared:
                cache.record_blob("sha256", sha)
    except OSError as exc:
        raise FetchError(f"cannot build the dataset tree in the cache {cache.root}: {exc.strerror or exc}; free "
                         "space or fix permissions there") from None
    return final, True


def _link_blobs(cache: Cache, staged: _Staged) -> list[str]:
    """Each distinct content of the staged tree becomes its blob (a hard link); returns blobs already present.

    The new blobs get no fingerprint of their own: they are the tree's members (same inode), which
    the tree's fingerprint covers. Another user of such a blob re-hashes it once, then fingerprints it.
    """
    shared: list[str] = []
    blobs = cache.root / "blobs" / "sha256"
    made: set[str] = set()
    work = str(staged.work)
    with cache.entry_locks() as locks:
        for sha, rel in staged.first.items():
            fan = sha[:2]
            target = f"{blobs}/{fan}/{sha}"
            with locks.hold("sha256", sha):
                if fan not in made:
                    os.makedirs(f"{blobs}/{fan}", exist_ok=True)
                    made.add(fan)
                try:
                    os.link(f"{work}/{rel}", target)
                    continue
                except FileExistsError:
                    pass
                if _use_existing(cache, staged, sha, rel):
                    shared.append(sha)
                else:
                    cache.remove_blob("sha256", sha)
                    os.link(f"{work}/{rel}", target)
    return shared


def _use_existing(cache: Cache, staged: _Staged, sha: str, rel: str) -> bool:
    """Point the members with this content at the blob already in the cache, if it still holds it."""
    probe = cache.probe("sha256", sha)
    if probe is None:
        raise FetchError(f"the cache entry {cache.blob_path('sha256', sha)} is not a regular file; remove it")
    if not (probe.trusted or cache.rehash_blob(probe.blob)):
        return False
    members = [rel, *(later for later, other in staged.later if other == sha)]
    for member in members:
        path = staged.work / member
        tmp = path.with_name(f".{path.name}.xrun-link")
        try:
            os.link(probe.blob.path, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EMLINK, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            return True  # it keeps its own verified copy: correct, only not shared
        os.replace(tmp, path)
    return True


def _drop_tree(cache: Cache, digest: str) -> None:
    cache.drop_fingerprint("sha256", digest, "tree")
    remove_tree(cache.tree_path("sha256", digest))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cache.tree_listing_path("sha256", digest))


# --- the tree ---------------------------------------------------------------------------------------


def materialize(cache: Cache, digest: str, blobs: Sequence[tuple[str, Blob]],
                description: dict[str, str]) -> tuple[Path, bool]:
    """trees/sha256/<ab>/<digest>/ of links to the blobs, read-only, with its listing; (path, made now)."""
    found = cache.lookup_tree("sha256", digest)
    # recheck_tree takes the tree's lock itself, so it runs before ours: OFD locks do not nest, and a
    # second lock of the same entry from this process would wait for ever.
    if found is not None and (cache.tree_trusted("sha256", digest)
                              or not recheck_tree(cache, "sha256", digest, verify=False)):
        if cache.lookup_tree("sha256", digest) is not None:
            _record_blobs(cache, blobs)
            return found, False
    final = cache.tree_path("sha256", digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    with cache.lock("sha256", digest, "tree"):
        found = cache.lookup_tree("sha256", digest)
        if found is not None:
            if cache.tree_trusted("sha256", digest):  # made by another process while we waited
                _record_blobs(cache, blobs)
                return found, False
            remove_tree(found)  # changed after the re-check: made again below
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cache.tree_listing_path("sha256", digest))
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{digest}-", dir=final.parent))
        try:
            dirs: set[str] = set()
            for rel, blob in blobs:
                parent = rel.rpartition("/")[0]
                if parent and parent not in dirs:
                    (work / parent).mkdir(parents=True, exist_ok=True)
                    parts = parent.split("/")
                    dirs.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
                _link_or_copy(blob.path, work / rel)
            for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
                os.chmod(work / rel, READ_ONLY_DIR)
            os.chmod(work, READ_ONLY_DIR)
            listing = {"version": LISTING_VERSION, "dataset": description,
                       "files": [{"path": rel, "sha256": blob.hexdigest, "size": blob.size, "mode": 0o644}
                                 for rel, blob in sorted(blobs, key=lambda b: b[0])],
                       "symlinks": [], "dirs": sorted(dirs)}
            cache.write_tree_listing("sha256", digest, listing)
            os.rename(work, final)
            fsync_dir(final.parent)
        except OSError as exc:
            remove_tree(work)
            raise FetchError(f"cannot build the dataset tree in the cache {cache.root}: {exc.strerror or exc}; free "
                             "space or fix permissions there") from None
        except BaseException:
            remove_tree(work)
            raise
        _record_blobs(cache, blobs)
        cache.record_tree("sha256", digest)
        _write_summary(cache, digest, description["uri"], sum(blob.size for _, blob in blobs), len(blobs))
    return final, True


def _record_blobs(cache: Cache, blobs: Sequence[tuple[str, Blob]]) -> None:
    """Fingerprint each blob as it is now (its ctime moved when the tree linked it)."""
    for hexdigest in {blob.hexdigest for _, blob in blobs}:
        cache.record_blob("sha256", hexdigest)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copyfile(src, dst)
        os.chmod(dst, READ_ONLY_FILE)
