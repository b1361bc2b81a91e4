"""The run directory: manifest copy, plan, outputs, logs and run.json, written crash-safely."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runner.errors import UsageError

PLAN_FILE = "plan.json"  # Plan.to_json() as the run was planned; read back by plan.PlanRecord
NODE_STATEMENT = "node.intoto.jsonl"  # a cluster node's unsigned statement, signed by `xrun collect`


@dataclass(frozen=True)
class RunDir:
    """Paths of one run's directory."""

    run_id: str
    path: Path

    @property
    def outputs(self) -> Path:
        return self.path / "outputs"

    @property
    def log(self) -> Path:
        return self.path / "logs" / "run.log"

    @property
    def plan(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def attestation(self) -> Path:
        return self.path / "provenance.intoto.jsonl"

    @property
    def bundle(self) -> Path:
        return self.path / "provenance.sigstore.json"

    @property
    def node_statement(self) -> Path:
        """A cluster node's unsigned statement, checked and signed by the submitter (`xrun collect`)."""
        return self.path / NODE_STATEMENT


def new_run_id(now: datetime | None = None) -> str:
    """UTC timestamp plus a short random suffix: sortable and unique."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def default_runs_dir(manifest_root: Path) -> Path:
    """<manifest folder>/.xrun/runs."""
    return manifest_root / ".xrun" / "runs"


def reproduce_runs_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where `xrun reproduce` puts its runs by default: $XDG_STATE_HOME/xrun/runs (~/.local/state/…), never the code."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "xrun" / "runs"


def create_run_dir(runs_dir: Path, manifest_text: bytes, plan_json: dict[str, Any]) -> RunDir:
    """Make a fresh run directory holding the manifest as given and the plan."""
    run_id = new_run_id()
    path = runs_dir / run_id
    try:
        (path / "logs").mkdir(parents=True)
        (path / "outputs").mkdir()
    except OSError as exc:
        raise UsageError(f"{runs_dir}: cannot create the run directory ({exc.strerror}); "
                         "choose another with --runs-dir") from None
    run = RunDir(run_id, path)
    try:
        write_atomic(path / "manifest.yaml", manifest_text)
        write_json(run.plan, plan_json)
    except OSError as exc:
        discard_run_dir(run)
        raise UsageError(f"{runs_dir}: cannot write the run directory ({exc.strerror}); free space or "
                         "choose another with --runs-dir") from None
    except BaseException:
        discard_run_dir(run)
        raise
    return run


def discard_run_dir(run: RunDir) -> None:
    """Remove a run folder interrupted before its run.json was written: a run folder always has its record."""
    shutil.rmtree(run.path, ignore_errors=True)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file so that readers see the old content or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, value: Any) -> None:
    """Pretty, sorted JSON written atomically."""
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def utc_now() -> datetime:
    """Aware UTC now, second precision (RFC 3339 with Z when formatted by rfc3339)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def rfc3339(moment: datetime) -> str:
    """2026-11-23T10:15:00Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
