"""Run fetch jobs in a bounded thread pool: one Session per thread, fail fast, Ctrl-C stops all."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from runner.errors import IntegrityError, XrunError
from runner.fetch.download import Cancelled
from runner.fetch.interface import FetchOptions
from runner.fetch.progress import Reporter, make_reporter
from runner.fetch.registry import Fetchers

T = TypeVar("T")


@dataclass(frozen=True)
class JobContext:
    """What a job gets: its thread's fetchers, the shared progress display, the stop signal."""

    fetchers: Fetchers
    reporter: Reporter
    cancel: threading.Event


class ThreadFetchers:
    """One Fetchers (one HTTP Session) per worker thread: Sessions are not meant to be shared."""

    def __init__(self, options: FetchOptions) -> None:
        self._options = options
        self._local = threading.local()
        self._all: list[Fetchers] = []
        self._lock = threading.Lock()

    def get(self) -> Fetchers:
        fetchers = getattr(self._local, "fetchers", None)
        if fetchers is None:
            fetchers = self._local.fetchers = Fetchers(self._options)
            with self._lock:
                self._all.append(fetchers)
        return fetchers

    def close(self) -> None:
        with self._lock:
            for fetchers in self._all:
                fetchers.close()
            self._all.clear()


class _Job(Generic[T]):
    def __init__(self, fn: Callable[[JobContext], T], fetchers: ThreadFetchers, reporter: Reporter,
                 cancel: threading.Event) -> None:
        self._fn, self._fetchers, self._reporter, self._cancel = fn, fetchers, reporter, cancel

    def __call__(self) -> T:
        if self._cancel.is_set():
            raise Cancelled()
        return self._fn(JobContext(self._fetchers.get(), self._reporter, self._cancel))


def run_jobs(jobs: Sequence[Callable[[JobContext], T]], options: FetchOptions) -> list[T]:
    """Results in job order; on failure, the most serious XrunError with the others as `also:` lines."""
    if not jobs:
        return []
    cancel = threading.Event()
    fetchers = ThreadFetchers(options)
    try:
        with make_reporter(options) as reporter:
            wrapped = [_Job(job, fetchers, reporter, cancel) for job in jobs]
            if len(jobs) == 1 or options.parallel <= 1:
                return [job() for job in wrapped]
            return _parallel(wrapped, options.parallel, cancel)
    finally:
        fetchers.close()


def _parallel(jobs: list[_Job[T]], parallel: int, cancel: threading.Event) -> list[T]:
    pool = ThreadPoolExecutor(max_workers=min(parallel, len(jobs)), thread_name_prefix="xrun-fetch")
    futures: list[Future[T]] = []
    try:
        futures = [pool.submit(job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            # The run cannot start anyway: stop the others (their partial files stay for a resume).
            cancel.set()
    except BaseException:  # Ctrl-C while waiting: workers stop at their next chunk
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return _results(futures)


def _results(futures: list[Future[T]]) -> list[T]:
    errors: list[XrunError] = []
    for future in futures:
        if future.cancelled():
            continue
        exc = future.exception()
        if exc is None or isinstance(exc, Cancelled):
            continue
        if not isinstance(exc, XrunError):
            raise exc
        errors.append(exc)
    if errors:
        # An integrity failure says more about the inputs than a network one: it leads.
        errors.sort(key=lambda e: not isinstance(e, IntegrityError))
        first = errors[0]
        if len(errors) > 1:
            first.lines = [*first.lines, *(f"also: {e.message}" for e in errors[1:])]
        raise first
    return [f.result() for f in futures]
