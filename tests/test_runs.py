"""`xrun runs ls|show|diff` read the run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import make_run
from runner.errors import UsageError
from runner.runs.store import diff_runs, find_run, list_runs
from servers import PATIENCE_S

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / ".xrun" / "runs"
    make_run(root, "20261123T100000Z-aaaaaa", 1, "a" * 64, 0.5)
    make_run(root, "20261123T110000Z-bbbbbb", 2, "b" * 64, 0.4)
    (tmp_path / "experiment.yaml").write_text("name: demo\n")
    return root


def test_list_find_diff(runs: Path):
    listed = list_runs(runs)
    assert [r.run_id for r in listed] == ["20261123T100000Z-aaaaaa", "20261123T110000Z-bbbbbb"]
    assert listed[0].duration_s == 7
    assert find_run(runs, "latest").run_id.endswith("bbbbbb")
    assert find_run(runs, "20261123T10").run_id.endswith("aaaaaa")
    with pytest.raises(UsageError, match="matches 2 runs"):
        find_run(runs, "2026")
    diff = diff_runs(*listed)
    assert diff["manifest"] == ["seeds.global"] and "model.npy" in diff["outputs"]
    assert diff["metrics"]["metrics.json:loss"] == {"a": 0.5, "b": 0.4}


def test_cli(runs: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    manifest = runs.parent.parent / "experiment.yaml"

    def xrun(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", "runs", *args, "--manifest", str(manifest)],
                              capture_output=True, text=True, env=env, timeout=PATIENCE_S)

    ls = xrun("ls")
    assert ls.returncode == 0 and "bbbbbb" in ls.stdout and "loss=0.4" in ls.stdout
    assert len(json.loads(xrun("ls", "--json").stdout)) == 2
    assert "seeds.global" in xrun("diff", "20261123T10", "20261123T11").stdout
    show = xrun("show", "nope")
    assert show.returncode == 2 and "no run 'nope'" in show.stderr


@pytest.mark.parametrize("status, state, container", [
    ("succeeded", "completed", "succeeded"), ("interrupted", "cancelled", "interrupted"),
    ("failed", "timed-out", "timed-out"), ("paused", "preempted", "checkpointed"),  # a newer xrun's words
])
def test_run_json_states_are_typed_and_written_back_as_they_were(tmp_path: Path, status, state, container):
    from runner.rundir import write_json
    from runner.runs.record import ContainerStatus, RunRecord, RunStatus, SchedulerState

    data = {"runId": "r", "name": "n", "status": status, "manifest": "m.yaml", "manifestSha256": "0" * 64,
            "planDigest": "1" * 64, "startedOn": "2026-11-23T10:00:00Z", "containerStatus": container,
            "scheduler": {"backend": "slurm", "state": state, "jobId": "7"}}
    write_json(tmp_path / "a.json", data)
    record = RunRecord.load(tmp_path / "a.json")
    assert record is not None and record.scheduler is not None
    assert isinstance(record.status, RunStatus) and isinstance(record.scheduler.state, SchedulerState)
    assert isinstance(record.container_status, ContainerStatus)
    assert (record.status, f"{record.status}", str(record.scheduler.state)) == (status, status, state)
    record.save(tmp_path / "b.json")
    saved = json.loads((tmp_path / "b.json").read_text())
    assert (saved["status"], saved["scheduler"]["state"], saved["containerStatus"]) == (status, state, container)
    again = RunRecord.load(tmp_path / "b.json")
    assert again is not None
    again.save(tmp_path / "c.json")
    assert (tmp_path / "c.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_the_states_xrun_knows():
    from runner.runs.record import RunStatus, SchedulerState

    assert RunStatus("succeeded") is RunStatus.SUCCEEDED and RunStatus.SUBMITTED.unfinished
    assert not RunStatus.FAILED.unfinished and SchedulerState.TIMED_OUT.final and not SchedulerState.PENDING.final
    assert json.dumps({"s": SchedulerState.TIMED_OUT}) == '{"s": "timed-out"}'


def test_a_run_directory_that_cannot_be_written_is_exit_2_and_left_no_folder(tmp_path: Path, monkeypatch):
    import errno

    import runner.rundir as rundir

    def full(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rundir, "write_atomic", full)
    with pytest.raises(UsageError, match="cannot write the run directory .No space left on device.; free space"):
        rundir.create_run_dir(tmp_path / "runs", b"name: x\n", {})
    assert list((tmp_path / "runs").iterdir()) == []
