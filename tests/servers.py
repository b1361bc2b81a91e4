"""Waiting in tests: for a test server started by a fixture (registry, MLflow, …) to answer over HTTP, or for
any condition, with one generous bound (PATIENCE_S)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# A generous bound on waiting for a condition, not an expected duration: a busy engine (a 5 GB
# `docker load`, other sessions' runs on 2 cores) answers in minutes, not seconds. Tests wait on the
# condition itself and stop as soon as it holds.
PATIENCE_S = 900.0


def wait_for(predicate: Callable[[], object], what: str, timeout: float = PATIENCE_S) -> None:
    """Return once predicate() is true; fail the test after `timeout` seconds naming `what`."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen in {timeout:.0f}s", pytrace=False)


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path, *, name: str, stop: Callable[[], None],
                       timeout: float = PATIENCE_S) -> None:
    """Return once GET url answers 200; else stop the server and fail the session with its log tail."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            pytest.fail(f"{name} did not start ({url}): {log.read_text(errors='replace')[-2000:]}", pytrace=False)
        time.sleep(0.2)
