"""fetch_blob: one verified blob into the cache, whatever the scheme, surviving transient faults.

The loop is the same for every fetcher: open at the resume point, stream into the partial file
while hashing every given digest, retry transient faults with exponential backoff and jitter,
restart from byte 0 when the source cannot resume, and only rename into the cache after every
digest matched. A mismatch removes the partial file; an interrupted download keeps it (keyed by
digest, never an entry) so the next attempt or run resumes it.

A cache hit is used only while the entry's stat equals the fingerprint recorded when its bytes
were verified. Otherwise (or always, with FetchOptions.verify) it is re-hashed under its lock:
intact, it is fingerprinted again and used; changed, it is removed, the user is warned, and it is
fetched again, or IntegrityError (exit 3) when the source cannot be had any more.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import FetchError, IntegrityError, UsageError
from runner.fetch.cache import Blob, Cache, Probe, start_writeback
from runner.fetch.digests import DigestSpecError, MultiHasher, normalize_digests, primary
from runner.fetch.interface import (CHUNK, MAX_DOWNLOAD_ENV, Fetcher, FetchOptions, PermanentError,
                                    RangeNotSatisfiable, RestartNeeded, Source, TransientError, max_download)
from runner.fetch.progress import Reporter, Task, make_reporter
from runner.progress import human_bytes
from runner.fetch.registry import Fetchers, SourceError, parse_source


class Cancelled(Exception):
    """Another item failed or the user pressed Ctrl-C: stop this download, keep its partial file."""


class _TooLarge(Exception):
    """The source announced or sent more bytes than the download may hold (its declared size, or the cap)."""

    def __init__(self, size: int, announced: bool) -> None:
        super().__init__(size)
        self.size, self.announced = size, announced


@dataclass(frozen=True)
class _Limit:
    """How many bytes a download may bring: its declared size when something declares one, else the cap."""

    declared: int | None  # the listing's, pointer's or lock's size: the object must be exactly this long
    cap: int
    settable: bool = True  # the cap is XRUN_MAX_DOWNLOAD's (False: the caller's own bound, e.g. for metadata)

    @property
    def most(self) -> int:
        return self.declared if self.declared is not None else self.cap


@dataclass
class _Progress:
    """What the retry loop knows about the object across attempts."""

    total: int | None = None
    validator: str | None = None
    segments: int = 0  # attempts that delivered bytes into the current partial file
    clean_retry_done: bool = False


WRITEBACK_EVERY = 32 << 20


class _Partial:
    """The partial file of one download: append, truncate, fsync, discard."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            # Sealed (0444) by a process that died before its rename: we hold the lock, start afresh.
            os.unlink(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.file = os.fdopen(fd, "r+b", buffering=0)
        self.size = os.fstat(fd).st_size
        self.file.seek(self.size)
        self._written_back = self.size

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[self.file.write(view):]
        self.size += len(chunk)
        if self.size - self._written_back >= WRITEBACK_EVERY:
            start_writeback(self.file.fileno(), self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def truncate(self) -> None:
        self.file.truncate(0)
        self.file.seek(0)
        self.size = 0
        self._written_back = 0

    def read_back_into(self, hasher: MultiHasher, task: Task) -> None:
        """Hash what an earlier process left here (its hash state died with it)."""
        self.file.seek(0)
        for chunk in iter(lambda: self.file.read(CHUNK), b""):
            hasher.update(chunk)
            task.advance(len(chunk))
        self.size = hasher.size
        self.file.seek(self.size)

    def seal(self) -> None:
        """Read-only and durable, ready to be renamed into place."""
        os.fchmod(self.file.fileno(), 0o444)
        os.fsync(self.file.fileno())
        self.file.close()

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def fetch_blob(cache: Cache, uri: str, digests: dict[str, str], *, name: str, base_dir: Path | None = None,
               options: FetchOptions = FetchOptions(), fetchers: Fetchers | None = None,
               reporter: Reporter | None = None, cancel: threading.Event | None = None,
               kind: str = "data item", headers: tuple[tuple[str, str], ...] = (), size: int | None = None,
               pin: str = "the manifest") -> Blob:
    """Return the verified cache entry for `digests`, downloading `uri` only on a miss.

    `kind` names what the blob is in messages ("data item", "wheel"); `headers` go with an HTTP request;
    `size`, when a listing, pointer or lock declares it, is the exact byte count the object must have
    (a download stops there). Without it a download stops at Content-Length or XRUN_MAX_DOWNLOAD.
    `pin` says where the expected digest lives, for the mismatch message (a .dvc file, an LFS pointer).
    """
    expected, source = check_request(uri, digests, name=name, base_dir=base_dir)
    if headers:
        source = dataclasses.replace(source, headers=tuple(headers))
    algorithm, hexdigest = primary(expected)
    hit = cache.probe(algorithm, hexdigest)
    if hit is not None and hit.trusted and not options.verify:
        _check_size(hit.blob, size, name, source)
        cache.mark_used(algorithm, hexdigest)
        return hit.blob
    own_fetchers = fetchers is None
    fetchers = fetchers if fetchers is not None else Fetchers(options)
    own_reporter = reporter is None
    reporter = reporter if reporter is not None else make_reporter(options)
    try:
        if own_reporter:
            with reporter:
                return _fetch_locked(cache, source, expected, name, kind, options, fetchers, reporter, cancel, size,
                                     pin)
        return _fetch_locked(cache, source, expected, name, kind, options, fetchers, reporter, cancel, size, pin)
    finally:
        if own_fetchers:
            fetchers.close()


def check_request(uri: str, digests: dict[str, str], *, name: str,
                  base_dir: Path | None) -> tuple[dict[str, str], Source]:
    """Normalised digests and the parsed source, or UsageError naming the item (no I/O)."""
    try:
        expected = normalize_digests(digests)
    except DigestSpecError as exc:
        raise UsageError(f"{name}: {uri}: {exc}") from None
    try:
        source = parse_source(uri, base_dir)
    except SourceError as exc:
        raise UsageError(f"{name}: {uri}: {exc}") from None
    return expected, source


def _fetch_locked(cache: Cache, source: Source, expected: dict[str, str], name: str, kind: str,
                  options: FetchOptions, fetchers: Fetchers, reporter: Reporter,
                  cancel: threading.Event | None, size: int | None, pin: str = "the manifest") -> Blob:
    algorithm, hexdigest = primary(expected)
    fetcher: Fetcher | FetchError  # the error is raised only when a download is needed: an entry may do
    try:
        fetcher = fetchers.for_source(source)
    except PermanentError as exc:
        fetcher = FetchError(f"{name}: {source.uri}: {exc.reason}; {exc.hint}")
    with cache.lock(algorithm, hexdigest,
                    on_wait=lambda: reporter.note(f"{name}: waiting for another xrun fetching the same blob")):
        # Whoever held the lock may have just committed or re-checked it: the point of the lock.
        hit = cache.probe(algorithm, hexdigest)
        tampered: Path | None = None
        if hit is not None:
            if (hit.trusted and not options.verify) or _still_verified(cache, hit, name, reporter):
                _check_size(hit.blob, size, name, source)
                cache.mark_used(algorithm, hexdigest)
                return hit.blob
            tampered = hit.blob.path
            try:
                cache.remove_blob(algorithm, hexdigest)
            except OSError as exc:
                raise _cache_error(name, source, cache, exc) from None
            reporter.warn(f"cache entry for {kind} '{name}' ({algorithm}:{hexdigest[:12]}…) was modified on disk "
                          f"({tampered}); removed, fetching it again")
        task = reporter.task(name)
        try:
            if isinstance(fetcher, FetchError):
                raise fetcher
            limit = _Limit(size, options.max_download or max_download(os.environ), options.max_download is None)
            got = _download(cache, fetcher, source, expected, name, options, task, reporter, cancel, limit, pin)
        except FetchError as exc:
            if tampered is None:
                raise
            raise IntegrityError(f"{kind} '{name}': the cache entry {tampered} was modified on disk and removed, "
                                 f"and it cannot be fetched again: {exc.message}") from None
        finally:
            task.finish()
        # No usage marker yet: a new entry's own mtime says when it was last needed, and creating
        # a file costs more than everything else per small item.
        return Blob(algorithm, hexdigest, cache.blob_path(algorithm, hexdigest), got, fetched=True)


def _check_size(blob: Blob, size: int | None, name: str, source: Source) -> None:
    """An entry with the right digest but another size than declared: the declaration is wrong (exit 3)."""
    if size is not None and blob.size != size:
        raise _size_error(name, source, blob.size, size)


def _size_error(name: str, source: Source, size: int, declared: int | None) -> IntegrityError:
    return IntegrityError(f"{name}: {source.uri}: the object is {size} bytes, but its declared size is {declared} "
                          "(the digest matches); fix the size in the manifest, pointer or listing")


def _still_verified(cache: Cache, hit: Probe, name: str, reporter: Reporter) -> bool:
    """Re-hash an entry its fingerprint no longer vouches for (or that verify asks about)."""
    if not hit.fingerprinted:
        reporter.note(f"{name}: re-hashing its cache entry once (recorded by an older xrun, no fingerprint yet)")
    elif not hit.trusted:
        reporter.note(f"{name}: its cache entry changed on disk (stat differs); re-hashing it")
    return cache.rehash_blob(hit.blob)


def _download(cache: Cache, fetcher: Fetcher, source: Source, expected: dict[str, str], name: str,
              options: FetchOptions, task: Task, reporter: Reporter, cancel: threading.Event | None,
              limit: _Limit, pin: str = "the manifest") -> int:
    """Stream into the partial file until every digest matches; commit it; return the size."""
    algorithm, hexdigest = primary(expected)
    hasher = MultiHasher(expected)
    path = cache.partial_path(algorithm, hexdigest)
    try:
        try:
            partial = _Partial(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = _Partial(path)
    except OSError as exc:
        raise _cache_error(name, source, cache, exc) from None
    state = _Progress()
    rng = random.Random()
    failures = 0  # consecutive attempts that did not get further than before
    furthest = 0
    try:
        if partial.size > limit.most:
            partial.truncate()  # left by an older xrun that had no limit: never resumed past the size
        if partial.size and fetcher.resumable:
            partial.read_back_into(hasher, task)
            state.segments = 1
        elif partial.size:
            partial.truncate()
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            try:
                _attempt(fetcher, source, partial, hasher, state, task, cancel, limit.most)
            except _TooLarge as exc:
                partial.discard()
                raise _too_large(name, source, limit, exc) from None
            except TransientError as exc:
                failures = 0 if partial.size > furthest else failures + 1
                furthest = max(furthest, partial.size)
                if failures > options.retries:
                    kept = f"; {human_bytes(partial.size)} kept to resume" if partial.size else ""
                    raise FetchError(
                        f"{name}: {source.uri}: gave up after {failures} attempts in a row without progress "
                        f"({exc.reason}{kept}); check the network or the server and run again, or allow "
                        f"more retries (now {options.retries})") from None
                delay = backoff_delay(failures, options, exc.retry_after, rng)
                if failures:
                    reporter.note(f"{name}: {exc.reason}; retry {failures}/{options.retries} in {delay:.1f}s")
                _sleep(delay, cancel)
                continue
            except (RangeNotSatisfiable, RestartNeeded) as exc:
                # A server that promised more bytes than it has: what we hold may already be it all.
                if isinstance(exc, RangeNotSatisfiable) and partial.size and hasher.mismatch() is None:
                    break
                failures += 1
                if failures > options.retries:
                    raise FetchError(f"{name}: {source.uri}: cannot get a consistent copy ({exc}); "
                                     "the source keeps changing: run again later") from None
                _restart(partial, hasher, state, task)
                continue
            except PermanentError as exc:
                partial.discard()
                raise FetchError(f"{name}: {source.uri}: {exc.reason}; {exc.hint}") from None
            except OSError as exc:  # writing the partial file: the cache's disk, not the source
                partial.discard()
                raise _cache_error(name, source, cache, exc) from None
            mismatch = hasher.mismatch()
            if mismatch is None:
                break
            if state.segments > 1 and not state.clean_retry_done:
                # Spliced from several responses: the object may have changed in between. One clean
                # download decides whether the source itself is wrong.
                state.clean_retry_done = True
                _restart(partial, hasher, state, task)
                continue
            size = partial.size
            partial.discard()
            raise IntegrityError(
                f"{name}: {source.uri}: {mismatch.algorithm} mismatch: expected {mismatch.expected}, "
                f"got {mismatch.actual} ({size} bytes received); nothing was cached. The source changed or is "
                f"corrupt: check it, and update the digest in {pin} only if you trust the new content")
        size = partial.size
        if limit.declared not in (None, size):
            partial.discard()
            raise _size_error(name, source, size, limit.declared)
        partial.seal()
        try:
            cache.commit_blob(partial.path, algorithm, hexdigest)
        except OSError:
            partial.discard()
            raise
        return size
    except OSError as exc:
        partial.close()
        raise _cache_error(name, source, cache, exc) from None
    except BaseException:
        partial.close()
        raise


def _attempt(fetcher: Fetcher, source: Source, partial: _Partial, hasher: MultiHasher, state: _Progress,
             task: Task, cancel: threading.Event | None, most: int) -> None:
    """One request: resume at the partial's size when possible, stream to the end (at most `most` bytes) or raise."""
    offset = partial.size if fetcher.resumable else 0
    with fetcher.open(source, offset=offset, validator=state.validator if offset else None) as stream:
        if stream.offset not in (0, partial.size):
            raise RestartNeeded(f"asked for byte {offset}, got a stream from byte {stream.offset}")
        if stream.offset != partial.size:
            # The source ignored the resume point (HTTP 200 to a Range request): start over cleanly.
            _restart(partial, hasher, state, task)
        elif offset and None not in (state.total, stream.total) and stream.total != state.total:
            raise RestartNeeded(f"the size changed from {state.total} to {stream.total} bytes")
        if stream.total is not None and stream.total > most:
            raise _TooLarge(stream.total, announced=True)
        state.total = stream.total
        state.validator = stream.validator
        state.segments += 1
        task.update(total=stream.total, completed=partial.size)
        for chunk in stream.chunks():
            if partial.size + len(chunk) > most:
                # Checked before writing: the partial file (kept to resume) never holds more than allowed.
                raise _TooLarge(partial.size + len(chunk), announced=False)
            partial.write(chunk)
            hasher.update(chunk)
            task.advance(len(chunk))
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        if stream.total is not None and partial.size < stream.total:
            raise TransientError(f"connection closed after {partial.size} of {stream.total} bytes")


def _restart(partial: _Partial, hasher: MultiHasher, state: _Progress, task: Task) -> None:
    partial.truncate()
    hasher.reset()
    state.total = None
    state.validator = None
    state.segments = 0
    task.update(completed=0)


def backoff_delay(failures: int, options: FetchOptions, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with equal jitter, at least the server's Retry-After; both capped."""
    base = min(options.max_backoff_s, options.backoff_s * (2 ** max(failures - 1, 0)))
    delay = base / 2 + rng.uniform(0, base / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.max_backoff_s))
    return delay


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Cancelled()


def _too_large(name: str, source: Source, limit: _Limit, exc: _TooLarge) -> IntegrityError:
    what = f"announced {exc.size} bytes" if exc.announced else f"sent more than {limit.most} bytes"
    if limit.declared is not None:
        return IntegrityError(f"{name}: {source.uri}: the server {what}, but the declared size is {limit.declared}; "
                              "stopped, nothing was cached. The source is wrong or hostile: check it (and the size in "
                              "the manifest, pointer or listing)")
    fix = (f"If the file really is that large, raise {MAX_DOWNLOAD_ENV} (e.g. {MAX_DOWNLOAD_ENV}=256G)"
           if limit.settable else "The source is wrong or hostile: check it")
    return IntegrityError(f"{name}: {source.uri}: the server {what}, over the {human_bytes(limit.cap)} a download with "
                          f"no declared size may bring; stopped, nothing was cached. {fix}")


def _cache_error(name: str, source: Source, cache: Cache, exc: OSError) -> FetchError:
    return FetchError(f"{name}: {source.uri}: cannot write to the cache {cache.root}: {exc.strerror or exc}; "
                      "free space or fix permissions there, or set XRUN_CACHE_DIR to another folder")
