"""The two kinds of line xrun writes on stderr for a person: errors and warnings."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def print_error(message: str, lines: Sequence[str] | None = None) -> None:
    """`xrun: error: MESSAGE` and indented detail lines on stderr."""
    print(f"xrun: error: {message}", file=sys.stderr)
    for line in lines or ():
        print(f"  {line}", file=sys.stderr)


def warn(message: str) -> None:
    """`xrun: warning: MESSAGE` on stderr: the command goes on."""
    print(f"xrun: warning: {message}", file=sys.stderr)
