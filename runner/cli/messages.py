"""The two kinds of line xrun writes on stderr for a person: errors and warnings."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runner.progress import StderrProgress
from runner.redact import redact


def print_error(message: str, lines: Sequence[str] | None = None) -> None:
    """`xrun: error: MESSAGE` and indented detail lines on stderr, credentials redacted (an internal error too)."""
    print(f"xrun: error: {redact(message)}", file=sys.stderr)
    for line in lines or ():
        print(f"  {redact(line)}", file=sys.stderr)


def warn(message: str) -> None:
    """`xrun: warning: MESSAGE` on stderr: the command goes on (the terminal sink's warning, one format)."""
    StderrProgress().warn(message)
