"""Progress: how library code says what a person should see, without printing from the library.

Stages take a `ProgressSink`; the terminal's is `StderrProgress`. A tracker, a report or a test can
pass its own and receive the same messages.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.redact import redact


class ProgressSink(Protocol):
    """Where library code reports what a person should see."""

    def info(self, message: str) -> None:
        """Something worth saying (a sink may skip it when quiet)."""

    def warn(self, message: str) -> None:
        """Something the user must know even when quiet."""

    def detail(self, message: str) -> None:
        """A line of a tool's own output (e.g. mmdebstrap's), indented under the last info."""


@dataclass(frozen=True)
class StderrProgress:
    """The terminal sink: `xrun: …` lines on stderr."""

    quiet: bool = False

    def info(self, message: str) -> None:
        """Print unless quiet."""
        if not self.quiet:
            print(f"xrun: {redact(message)}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """Always print."""
        print(f"xrun: warning: {redact(message)}", file=sys.stderr, flush=True)

    def detail(self, message: str) -> None:
        """Print indented unless quiet."""
        if not self.quiet:
            print(f"  {redact(message)}", file=sys.stderr, flush=True)


@dataclass
class RecordingProgress:
    """A sink that keeps every message (tests, and callers that render progress themselves)."""

    messages: list[tuple[str, str]] = field(default_factory=list)

    def info(self, message: str) -> None:
        """Keep it as ('info', message)."""
        self.messages.append(("info", message))

    def warn(self, message: str) -> None:
        """Keep it as ('warn', message)."""
        self.messages.append(("warn", message))

    def detail(self, message: str) -> None:
        """Keep it as ('detail', message)."""
        self.messages.append(("detail", message))


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_interval_s() -> float:
    """Seconds between plain progress lines when stderr is not a terminal (XRUN_PROGRESS_INTERVAL, default 10)."""
    try:
        return max(0.05, float(os.environ.get("XRUN_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


class Ticker:
    """Calls `tick` every interval from a daemon thread until stopped: periodic lines for CI logs."""

    def __init__(self, tick: Callable[[], None], interval_s: float) -> None:
        self._tick, self._interval = tick, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="xrun-progress", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Meter:
    """Bytes done in one long phase (a layer written, an image loaded), shared with the display."""

    total: int | None = None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _bar: Any = None

    def advance(self, n: int) -> None:
        """n more bytes done."""
        self.done += n
        if self._bar is not None:
            self._bar[0].update(self._bar[1], completed=self.done)

    def line(self) -> str:
        """'1.2 GiB of ~5.3 GiB, 85.0 MiB/s, 14 s'."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f" of ~{human_bytes(self.total)}" if self.total else ""
        return f"{human_bytes(self.done)}{of}, {human_bytes(rate)}/s, {elapsed:.0f} s"


@contextmanager
def measured(progress: ProgressSink, doing: str, done: str, total: int | None = None) -> Iterator[Meter]:
    """A long phase: a bar on a terminal, else `xrun: doing: …` every interval; one `xrun: done (…)` line at the end."""
    meter = Meter(total)
    live = isinstance(progress, StderrProgress) and not progress.quiet and sys.stderr.isatty()
    if live:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        bar = Progress(TextColumn(doing), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                       console=Console(file=sys.stderr), transient=True)
        meter._bar = (bar, bar.add_task(doing, total=total))  # noqa: SLF001 - the meter's own display
        with bar:
            yield meter
    else:
        with Ticker(lambda: progress.info(f"{doing}: {meter.line()}"), progress_interval_s()):
            yield meter
    progress.info(f"{done} ({meter.line()})")
