"""Signals: Ctrl-C, SIGTERM and SIGHUP end every phase of a command the same way.

The first signal raises KeyboardInterrupt in the main thread, whatever the phase (fetch, build,
run), so one clean-up path runs: container removed, run marked interrupted, no attestation.
Signals that arrive while that clean-up runs are held back instead of breaking it half-way (two
Ctrl-C 50 ms apart must not leave a container or a half-written file); a third one quits at once
and leaves the rest to the watchdog (runner/engine/watchdog.py), which removes the run's containers.
An engine call that must finish to be cleaned up (a container's create) runs `deferred()`: the
signal is raised as soon as the call returns, with the new container's id in hand.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORCE_AFTER = 3  # signals: the third one exits at once


class interrupts_raise:
    """While active (main thread only), SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt once, then are held."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._count = 0
        self._deferring = 0  # inside deferred(): the first signal is raised when the block ends
        self._pending = False

    def __enter__(self) -> "interrupts_raise":
        # Nested use (a library stage inside a command) keeps the outer handler: one count of signals.
        if threading.current_thread() is threading.main_thread() and not _ours(signal.getsignal(signal.SIGTERM)):
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._count:
            # Interrupted: the process is on its way out (exit 130) and its clean-up is done. A signal
            # arriving now must not turn that into a death by signal: ignore them. (A Python handler
            # would not do: the interpreter puts the default back while it finalizes.)
            for signum in self._previous:
                signal.signal(signum, signal.SIG_IGN)
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count == 1 and self._deferring:
            self._pending = True
            return
        if self._count == 1:
            raise KeyboardInterrupt
        if self._count >= FORCE_AFTER:
            _write_stderr("xrun: error: interrupted again: quitting now; the watchdog removes the run's containers\n")
            os._exit(130)
        _write_stderr("xrun: cleaning up after the interruption (interrupt twice more to quit at once)\n")


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, the first signal waits for the block to end, then raises KeyboardInterrupt.

    For an engine call whose effect must be known to be cleaned up: a `create` interrupted while the
    engine works on it makes a container whose id nobody received (found later, if at all, by label)."""
    owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    if not isinstance(owner, interrupts_raise) or threading.current_thread() is not threading.main_thread():
        yield
        return
    owner._deferring += 1
    try:
        yield
    finally:
        owner._deferring -= 1
        if owner._pending and not owner._deferring:
            owner._pending = False
            raise KeyboardInterrupt


def _ours(handler: Any) -> bool:
    return isinstance(getattr(handler, "__self__", None), interrupts_raise)


def _write_stderr(text: str) -> None:
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError):
        pass
