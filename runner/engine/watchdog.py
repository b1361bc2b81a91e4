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
from runner.runs.record import RunRecord, RunStatus

KILLED = "the runner was killed"
# A busy engine may take minutes to answer: the watchdog, which outlives the runner, keeps asking this long.
HANDED_PATIENCE_S = 1800.0
LATE_CREATE_S = 120  # how long after a runner died its in-flight create calls are watched for


@dataclass
class Watchdog:
    """The spawned watchdog of one run; `close()` ends it once the run is over."""

    process: subprocess.Popen[bytes] | None
    handed: bool = False  # it was given removals to finish: do not wait for it

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

    def hand_over(self, items: tuple[str, ...]) -> None:
        """Give the watchdog removals to finish after the run: container ids, or `label=value` filters."""
        if self.process is None or self.process.stdin is None:
            return
        try:
            self.process.stdin.write("".join(f"remove {item}\n" for item in items).encode())
            self.process.stdin.flush()
            self.handed = True
        except OSError:
            pass  # it is gone: the next run's sweep removes containers of dead runners

    def close(self) -> None:
        """Tell the watchdog the run has ended (its record is final) and let it exit."""
        if self.process is None:
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            if not self.handed:
                self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass  # it exits by itself once it has read the record
        self.process = None


def watch(run_dir: Path, identity: str) -> None:
    """Block until the runner's pipe closes, then clean up if the run did not end properly."""
    received = b""
    try:
        while chunk := sys.stdin.buffer.read(65536):
            received += chunk
    except OSError:
        pass
    handed = [line.split(" ", 1)[1] for line in received.decode(errors="replace").splitlines()
              if line.startswith("remove ")]
    record = RunRecord.load(run_dir / "run.json")
    if record is None or not _unfinished(run_dir, record):
        if handed:
            _finish_removals(handed)
        return
    client = None
    try:
        client = _patient_client()  # one connection for the removals and the watch for late arrivals
        if client is not None:
            remove_containers(client, identity)
    finally:
        mark_killed(run_dir, identity)
    if client is not None:
        # A create call in flight when the runner died lands on the engine later (a busy engine: much later):
        # remove whatever container of that runner the engine reports created from now on, for a while.
        _remove_late_arrivals(client, identity)


def remove_containers(client: Any, identity: str) -> int:
    """Force-remove every container the runner created, waiting for the engine to confirm; how many went."""
    return len(_remove_listed(client, f"{RUNNER_LABEL}={identity}", HANDED_PATIENCE_S))


def _patient_client() -> Any:
    """A client of the engine, asked a few times (each ping waits up to the client's timeout for a busy one)."""
    from runner.engine.client import docker_client
    from runner.errors import EnvironmentProblem

    for attempt in range(3):
        try:
            return docker_client()
        except EnvironmentProblem:
            if attempt < 2:
                time.sleep(2.0)
    return None  # no engine: the next run's sweep removes containers of dead runners


def _remove_listed(client: Any, label: str, patience_s: float) -> list[str]:
    """Remove every container carrying `label` (listed until the engine answers), each confirmed."""
    from runner.engine.client import remove_confirmed

    give_up = time.monotonic() + patience_s
    while True:
        try:
            found = client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
            break
        except Exception:  # noqa: BLE001 - a busy engine: ask again
            if time.monotonic() >= give_up:
                return []
            time.sleep(2.0)
    return [c.id for c in found if remove_confirmed(client, c.id, patience_s=patience_s)]


def _finish_removals(items: list[str]) -> None:
    """The removals the runner handed over: container ids, or label filters."""
    from runner.engine.client import remove_confirmed

    client = _patient_client()
    if client is None:
        return
    for item in items:
        if "=" in item:
            _remove_listed(client, item, HANDED_PATIENCE_S)
        else:
            remove_confirmed(client, item, patience_s=HANDED_PATIENCE_S)


def _remove_late_arrivals(client: Any, identity: str) -> None:
    """For LATE_CREATE_S, remove each container of the dead runner that the engine reports created."""
    from runner.engine.client import remove_confirmed

    since = time.time() - 1
    label = f"{RUNNER_LABEL}={identity}"
    try:
        events = client.events(since=int(since), until=int(since + LATE_CREATE_S), decode=True,
                               filters={"type": "container", "event": "create", "label": label})
        for event in events:
            remove_confirmed(client, str(event.get("id") or event.get("Actor", {}).get("ID", "")))
    except Exception:  # noqa: BLE001 - the engine went away: the next run's sweep removes containers of dead runners
        pass
    _remove_listed(client, label, HANDED_PATIENCE_S)


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
    record.status = RunStatus.FAILED
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
    if record.status == RunStatus.RUNNING:
        return True
    written = bool(record.attestation) and (run_dir / str(record.attestation)).exists()
    return record.status == RunStatus.SUCCEEDED and bool(record.attestation) and not written


def main(argv: list[str]) -> int:
    """python -m runner.engine.watchdog RUN_DIR RUNNER."""
    if len(argv) != 2:
        print("usage: python -m runner.engine.watchdog RUN_DIR RUNNER", file=sys.stderr)
        return 2
    watch(Path(argv[0]), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
