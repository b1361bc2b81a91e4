"""Seed sweeps on the local backend: one run per seed, a summary, each member reproducible on its own."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from runner.attest import generate_keypair
from runner.context import RunOptions
from runner.reproduce import reproduce
from runner.runs.record import RunRecord
from runner.runs.sweep import summarize_sweep
from runner.submit import SubmitOptions, submit
from experiments import probe_experiment

pytestmark = pytest.mark.docker


def test_parallel_local_sweep_summary_and_reproduce(tmp_path, base_image, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    key, pub = generate_keypair("ed25519", tmp_path / "keys", None)
    manifest = probe_experiment(tmp_path / "exp", base_image)
    run = RunOptions(runs_dir=tmp_path / "runs", quiet=True, key=key)
    result = submit(manifest, SubmitOptions(run=run, backend="local", seeds=(7, 8), parallel=2))
    assert result.sweep and [r.state for r in result.runs] == ["succeeded", "succeeded"]
    values, images = [], set()
    for member, seed in zip(result.runs, (7, 8)):
        record = RunRecord.load(member.run_dir / "run.json")
        assert record.scheduler.sweep == result.sweep and record.scheduler.seed == seed
        images.add(record.image_id)
        probe = json.loads((member.run_dir / "outputs" / "probe.json").read_text())
        assert probe["seed_env"] == str(seed)
        values.append(record.metrics["metrics.json"]["value"])
    assert len(images) == 1  # one image for every seed
    summary = summarize_sweep(tmp_path / "runs", result.sweep)
    row = next(m for m in summary.metrics if m.key == "metrics.json:value")
    assert row.n == 2 and row.mean == pytest.approx(statistics.fmean(values))
    assert row.std == pytest.approx(statistics.stdev(values))
    # A member re-runs on its own with its seed (externalParameters.seed) and reproduces bit for bit.
    report = reproduce(result.runs[1].attestation, manifest=None, keys=[pub], rtol=None, atol=None,
                       options=RunOptions(runs_dir=tmp_path / "again", quiet=True))
    assert report.reproduced, report.to_json()
    again = json.loads((tmp_path / "again" / report.run_id / "outputs" / "probe.json").read_text())
    assert again["seed_env"] == "8"


def test_runs_summary_lists_failed_members(tmp_path, base_image, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    manifest = probe_experiment(tmp_path / "exp", base_image,
                                command=["python3", "-c", "import os, sys; open('/outputs/x', 'w').write('1'); "
                                         "sys.exit(int(os.environ['XRUN_SEED']) % 2)"],
                                outputs=[{"path": "x"}])
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(manifest), "--backend", "local",
                          "--seeds", "1,2", "--runs-dir", str(tmp_path / "runs"), "--json", "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    sweep = json.loads(out.stdout)["sweep"]
    out = subprocess.run([sys.executable, "-m", "runner.cli", "runs", "summary", sweep, "--runs-dir",
                          str(tmp_path / "runs"), "--json"], capture_output=True, text=True)
    data = json.loads(out.stdout)
    assert out.returncode == 1 and data["members"] == 2
    assert [f["seed"] for f in data["failed"]] == [1] and "exited with code 1" in data["failed"][0]["error"]
