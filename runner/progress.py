"""Progress: how library code says what a person should see, without printing from the library.

Stages take a `ProgressSink`; the terminal's is `StderrProgress`. A tracker, a report or a test can
pass its own and receive the same messages.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol

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
