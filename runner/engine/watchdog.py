"""No container outlives its runner: a watchdog process per run, and a sweep for runs whose runner died.

Every container xrun creates carries the label `org.xrun.runner` naming the xrun process that created
it (runner/engine/labels.py).

- `Watchdog.start()` spawns `python -m runner.engine.watchdog RUN_DIR RUNNER` in its own session, tied to
  xrun by a pipe. xrun never writes to the pipe; when xrun exits for any reason, SIGKILL included,
  the kernel closes it, the watchdog wakes, and if the run record still says "running" it removes the
  runner's containers and marks the run failed ("the runner was killed"). The idea is
  testcontainers' Ryuk, without a daemon.
- `reap_orphans()` is the sweep that later xrun commands run: runs still "running" whose runner is
  gone on this host are marked failed, and (given an engine) containers of dead runners are removed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.engine.labels import RUNNER_LABEL, is_gone, runner_identity
from runner.runs.record import RunRecord

KILLED = "the runner was killed"
RECHECK_S = 1.0  # a create call in flight when xrun died lands on the engine a moment later


@dataclass
class Watchdog:
    """The spawned watchdog of one run; `close()` ends it once the run is over."""

    process: subprocess.Popen[bytes] | None

    @classmethod
    def start(cls, run_dir: Path) -> "Watchdog":
        """Spawn the watchdog for run_dir; a run goes on without one if it cannot start (the sweep remains)."""
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "runner.engine.watchdog", str(run_dir), runner_identity()],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except OSError:
            return cls(None)
        return cls(process)

    def close(self) -> None:
        """Tell the watchdog the run has ended (its record is final) and let it exit."""
        if self.process is None:
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass  # it exits by itself once it has read the record
        self.process = None


def watch(run_dir: Path, identity: str) -> None:
    """Block until the runner's pipe closes, then clean up if the run did not end properly."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    record = RunRecord.load(run_dir / "run.json")
    if record is None or not _unfinished(run_dir, record):
        return
    try:
        remove_containers(identity)
        time.sleep(RECHECK_S)
        remove_containers(identity)
    finally:
        mark_killed(run_dir, identity)


def remove_containers(identity: str, client: Any = None) -> int:
    """Force-remove every container the runner created; how many were removed."""
    if client is None:
        from runner.engine.client import docker_client
        from runner.errors import EnvironmentProblem

        try:
            client = docker_client(timeout=30)
        except EnvironmentProblem:
            return 0
    return _remove_where(client, f"{RUNNER_LABEL}={identity}", lambda _: True)


def _remove_where(client: Any, label: str, dead: Callable[[str], bool]) -> int:
    """Force-remove the containers with `label` whose runner identity `dead` accepts; how many went."""
    try:
        # ignore_removed: a container that goes between the list and its inspect is not an error.
        found = client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
    except Exception:  # noqa: BLE001 - the engine did not answer: the next sweep tries again
        return 0
    removed = 0
    for container in found:
        if not dead((container.labels or {}).get(RUNNER_LABEL, "")):
            continue
        try:
            container.remove(force=True)
            removed += 1
        except Exception:  # noqa: BLE001 - already gone
            pass
    return removed


def mark_killed(run_dir: Path, identity: str) -> bool:
    """Mark a run still 'running' as failed because its runner died; False when it had ended."""
    from runner.rundir import rfc3339, utc_now

    record_path = run_dir / "run.json"
    record = RunRecord.load(record_path)
    if record is None or not _unfinished(run_dir, record):
        return False
    pid = identity.split(":")[1] if identity.count(":") >= 2 else "?"
    record.status = "failed"
    record.finished_on = record.finished_on or rfc3339(utc_now())
    record.error = f"{KILLED} (process {pid} ended before the run finished); its containers were removed"
    record.attestation = None
    record.save(record_path)
    for name in ("provenance.intoto.jsonl", "provenance.sigstore.json"):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass
    return True


def reap_orphans(runs_dir: Path, client: Any = None) -> list[str]:
    """Mark runs whose runner died as failed (and remove dead runners' containers when given an engine)."""
    reaped = []
    if runs_dir.is_dir():
        for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            record = RunRecord.load(run_dir / "run.json")
            if record is None or not _unfinished(run_dir, record):
                continue
            identity = record.runner
            if identity and is_gone(identity) and mark_killed(run_dir, identity):
                reaped.append(run_dir.name)
    if client is not None:
        _remove_where(client, RUNNER_LABEL, is_gone)
    return reaped


def _unfinished(run_dir: Path, record: RunRecord) -> bool:
    """Still running, or succeeded with its attestation not yet written (killed while signing)."""
    if record.status == "running":
        return True
    return record.status == "succeeded" and bool(record.attestation) and not (run_dir / str(record.attestation)).exists()


def main(argv: list[str]) -> int:
    """python -m runner.engine.watchdog RUN_DIR RUNNER."""
    if len(argv) != 2:
        print("usage: python -m runner.engine.watchdog RUN_DIR RUNNER", file=sys.stderr)
        return 2
    watch(Path(argv[0]), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
