"""A real MLflow tracking server for tests: started from the venv scripts/setup-report-tools made, on 127.0.0.1,
with a SQLite store and a local artifact folder; stopped by PID; restartable on the same store and port."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from servers import PATIENCE_S, wait_until_serving


def mlflow_exe() -> Path:
    """The `mlflow` of the cached server venv; fails the test run (never skips) when it is missing."""
    root = Path(os.environ.get("XRUN_TEST_CACHE") or Path.home() / ".cache" / "xrun-test")
    exe = root / "venv-mlflow" / "bin" / "mlflow"
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: run scripts/setup (it installs the MLflow server once per machine)",
                    pytrace=False)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow server` on 127.0.0.1:PORT over root/db.sqlite and root/artifacts."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        """The tracking URI."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = PATIENCE_S) -> None:
        """Start it and wait until /health answers."""
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(mlflow_exe()), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'db.sqlite'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until_serving(f"{self.uri}/health", self.proc, self.root / "server.log", name="mlflow server",
                           timeout=timeout, stop=self.stop)

    def stop(self) -> None:
        """Stop it (its process group: the server runs its workers as children) and wait until the port is free."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        self.proc = None

    # --- reading back through the REST API --------------------------------------------------------------

    def api(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One REST call; the JSON answer."""
        response = requests.request(method, f"{self.uri}/api/2.0/mlflow/{path}", timeout=30, **kw)
        response.raise_for_status()
        return response.json()

    def runs_tagged(self, run_id: str) -> list[dict[str, Any]]:
        """Every active MLflow run (any experiment) tagged xrun.runId = run_id."""
        experiments = self.api("POST", "experiments/search", json={"max_results": 1000}).get("experiments", [])
        found = self.api("POST", "runs/search", json={
            "experiment_ids": [e["experiment_id"] for e in experiments],
            "filter": f"tags.`xrun.runId` = '{run_id}'", "run_view_type": "ACTIVE_ONLY"})
        return found.get("runs", [])

    def history(self, mlflow_run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's (step, value) pairs."""
        data = self.api("GET", "metrics/get-history", params={"run_id": mlflow_run_id, "metric_key": key})
        return sorted((int(m.get("step", 0)), float(m["value"])) for m in data.get("metrics", []))

    def artifacts(self, mlflow_run_id: str, path: str) -> list[str]:
        """The artifact paths under path."""
        data = self.api("GET", "artifacts/list", params={"run_id": mlflow_run_id, "path": path})
        return sorted(f["path"] for f in data.get("files", []))


def params(run: dict[str, Any]) -> dict[str, str]:
    """A REST run's params as a dict."""
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def tags(run: dict[str, Any]) -> dict[str, str]:
    """A REST run's tags as a dict."""
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    """A REST run's latest metric values."""
    return {m["key"]: float(m["value"]) for m in run["data"].get("metrics", [])}
