"""Progress display: a bar per download (bytes, rate, ETA) on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import IO, Any, Protocol

from runner.fetch.interface import FetchOptions
from runner.progress import Meter, Ticker, human_bytes, progress_interval_s
from runner.redact import redact


class Task(Protocol):
    """The progress of one download."""

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        """Set the expected size and/or the bytes done (a restart sets completed=0)."""

    def advance(self, n: int) -> None:
        """n more bytes arrived."""

    def finish(self) -> None:
        """The download ended (success or not): remove its bar."""

    def rename(self, name: str) -> None:
        """Change the label (a dataset's bar counts its files there)."""


class Reporter(Protocol):
    """Creates tasks; used as a context manager around a batch of downloads."""

    def task(self, name: str) -> Task:
        """A bar for one download named `name`."""

    def note(self, message: str) -> None:
        """A line for the user (waiting for a lock, a retry), shown above the bars."""

    def warn(self, message: str) -> None:
        """'xrun: warning: …' on stderr, shown even when quiet (a tampered cache entry)."""

    def __enter__(self) -> "Reporter": ...

    def __exit__(self, *exc: object) -> None: ...


class _NullTask:
    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def rename(self, name: str) -> None:
        pass


class NullReporter:
    """Shows nothing (not a TTY, --quiet, --json)."""

    def task(self, name: str) -> Task:
        """A task that records nothing."""
        return _NullTask()

    def note(self, message: str) -> None:
        """Dropped."""

    def warn(self, message: str) -> None:
        """Printed on stderr: a warning is never dropped."""
        print(f"xrun: warning: {redact(message)}", file=sys.stderr, flush=True)

    def __enter__(self) -> "NullReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._id = task_id

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if total is not None:
            kwargs["total"] = total
        if completed is not None:
            kwargs["completed"] = completed
        if kwargs:
            self._progress.update(self._id, **kwargs)

    def advance(self, n: int) -> None:
        self._progress.advance(self._id, n)

    def finish(self) -> None:
        self._progress.remove_task(self._id)

    def rename(self, name: str) -> None:
        self._progress.update(self._id, description=name)


class RichReporter:
    """rich bars on stderr; rich refreshes from its own thread, so advancing is cheap."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(TextColumn("{task.description}", style="bold"), BarColumn(),
                                  DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
                                  console=Console(file=stream), transient=True)
        self._lock = threading.Lock()

    def task(self, name: str) -> Task:
        """A new bar (no total until the source says it)."""
        return _RichTask(self._progress, self._progress.add_task(name, total=None))

    def note(self, message: str) -> None:
        """Printed above the bars."""
        self._progress.console.print(f"xrun: {redact(message)}", highlight=False, markup=False)

    def warn(self, message: str) -> None:
        """Printed above the bars."""
        self._progress.console.print(f"xrun: warning: {redact(message)}", highlight=False, markup=False, soft_wrap=True)

    def __enter__(self) -> "RichReporter":
        with self._lock:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._progress.stop()


class LineReporter:
    """Without rich: one line per finished download and per note."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def task(self, name: str) -> Task:
        """A task that prints one line when it finishes."""
        return _LineTask(self._stream, name)

    def note(self, message: str) -> None:
        """One line on stderr."""
        print(f"xrun: {redact(message)}", file=self._stream, flush=True)

    def warn(self, message: str) -> None:
        """One line on stderr."""
        print(f"xrun: warning: {redact(message)}", file=self._stream, flush=True)

    def __enter__(self) -> "LineReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _LineTask:
    def __init__(self, stream: IO[str], name: str) -> None:
        self._stream, self._name, self._done = stream, name, 0

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        if completed is not None:
            self._done = completed

    def advance(self, n: int) -> None:
        self._done += n

    def finish(self) -> None:
        if self._done:
            print(f"xrun: fetched {self._name} ({human_bytes(self._done)})", file=self._stream, flush=True)

    def rename(self, name: str) -> None:
        self._name = name


class DatasetProgress:
    """One bar for a dataset of many files: bytes of all of them, and `k/N files` in its label.

    It is a Reporter for the per-file downloads: each file's task feeds the shared bar.
    """

    def __init__(self, parent: Reporter, name: str, files: int, total_bytes: int | None) -> None:
        self._parent, self._name, self._files = parent, name, files
        self._done_files = 0
        self._lock = threading.Lock()
        self._task = parent.task(self._label())
        if total_bytes:
            self._task.update(total=total_bytes)

    def _label(self) -> str:
        return f"{self._name} {self._done_files}/{self._files} files"

    def task(self, name: str) -> Task:
        """A per-file task that feeds the dataset's bar."""
        return _Share(self, self.file_done)

    def advance(self, n: int) -> None:
        """Bytes arrived (or were taken back by a restart, n < 0)."""
        self._task.advance(n)

    def file_done(self) -> None:
        """One more file is in the cache."""
        self.files_done(1)

    def files_done(self, count: int) -> None:
        """`count` more files are in the cache (a bulk copy reports in batches: one label per batch)."""
        with self._lock:
            self._done_files += count
            self._task.rename(self._label())

    def note(self, message: str) -> None:
        """Passed to the parent reporter."""
        self._parent.note(message)

    def warn(self, message: str) -> None:
        """Passed to the parent reporter."""
        self._parent.warn(message)

    def close(self) -> None:
        """Remove the bar (the line reporter prints the dataset's total)."""
        self._task.finish()

    def __enter__(self) -> "DatasetProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Share:
    """A per-file task that feeds an owner's byte counter and tells it when the file is done."""

    def __init__(self, owner: DatasetProgress | PeriodicReporter, on_finish: Callable[[], None]) -> None:
        self._owner, self._on_finish, self._done = owner, on_finish, 0

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        if completed is not None:
            self._owner.advance(completed - self._done)
            self._done = completed

    def advance(self, n: int) -> None:
        self._done += n
        self._owner.advance(n)

    def finish(self) -> None:
        self._on_finish()

    def rename(self, name: str) -> None:
        pass


class PeriodicReporter(LineReporter):
    """Not a terminal (a CI log): every interval one line for the whole batch, and its total at the end."""

    def __init__(self, stream: IO[str], what: str, count: int) -> None:
        super().__init__(stream)
        self._what, self._count = what, count
        self._lock = threading.Lock()
        self._meter = Meter()  # bytes of the whole batch; its line() is "1.2 GiB, 85.0 MiB/s, 14 s"
        self._done = 0
        self._ticker = Ticker(self._line, progress_interval_s())

    def _line(self) -> None:
        with self._lock:
            print(f"xrun: fetching {self._what}: {self._done}/{self._count} done, {self._meter.line()}",
                  file=self._stream, flush=True)

    def advance(self, n: int) -> None:
        """Bytes arrived for one of the batch."""
        with self._lock:
            self._meter.advance(n)

    def finished(self) -> None:
        """One of the batch is done."""
        with self._lock:
            self._done += 1

    def task(self, name: str) -> Task:
        """A task that feeds the batch's counters."""
        return _Share(self, self.finished)

    def __enter__(self) -> "PeriodicReporter":
        self._ticker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ticker.__exit__()
        if self._meter.done:
            print(f"xrun: fetched {self._what} ({self._meter.line()})", file=self._stream, flush=True)


def wants_progress(options: FetchOptions, stream: IO[str] | None = None) -> bool:
    """progress=True/False wins; None means: stderr is a terminal and not quiet."""
    if options.quiet:
        return False
    if options.progress is not None:
        return options.progress
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def make_reporter(options: FetchOptions, stream: IO[str] | None = None, *,
                  batch: tuple[str, int] | None = None) -> Reporter:
    """The reporter the options ask for; batch=(what, count) asks for periodic lines when not on a terminal."""
    stream = stream if stream is not None else sys.stderr
    if not wants_progress(options, stream):
        if batch is not None and not options.quiet and options.progress is None:
            return PeriodicReporter(stream, *batch)
        return NullReporter()
    try:
        return RichReporter(stream)
    except ImportError:
        return LineReporter(stream)
