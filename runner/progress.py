"""Progress: how library code says what a person should see, without printing from the library.

Stages take a `ProgressSink`; the terminal's is `StderrProgress`. A tracker, a report or a test can
pass its own and receive the same messages.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol


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
            print(f"xrun: {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """Always print."""
        print(f"xrun: warning: {message}", file=sys.stderr, flush=True)

    def detail(self, message: str) -> None:
        """Print indented unless quiet."""
        if not self.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)
