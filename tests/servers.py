"""Waiting for a test server started by a fixture (registry, MLflow, …) to answer over HTTP."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path, *, name: str, timeout: float,
                       stop: Callable[[], None]) -> None:
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
