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
