"""The command line called in-process (`main([...])`), beside the subprocess tests of each stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import make_run
from runner.cli import main
from runner.runs.record import RunRecord

REPO = Path(__file__).resolve().parent.parent


def test_schema_prints_the_manifest_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["$schema"].startswith("https://json-schema.org/")


def test_validate_valid_and_invalid(capsys):
    assert main(["validate", str(REPO / "tests" / "manifests" / "valid.yaml")]) == 0
    invalid = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))[0]
    assert main(["validate", str(invalid)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(invalid.name) in err


@pytest.mark.parametrize("age", ["5w", "1.5x", "d", "-1d", "nand", "infd"])
def test_cache_gc_bad_age_is_usage_error(age, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["cache", "gc", f"--older-than={age}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "s, m, h or d" in err and "Traceback" not in err


@pytest.mark.parametrize("age", ["1.5d", "90m", "12h", "30s", "0d"])
def test_cache_gc_accepts_fractional_ages(age, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path))
    assert main(["cache", "gc", "--older-than", age, "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dryRun": True, "removed": []}


def test_runs_json_is_camel_case(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "20261123T100000Z-aaaaaa", 1, "a" * 64, 0.5)
    assert main(["runs", "ls", "--runs-dir", str(runs), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {"runId", "runDir", "startedOn", "durationSeconds", "planDigest", "attested"} <= set(row)
    assert not [k for k in row if "_" in k]
    assert row["outputs"] == {"model.npy": "a" * 64}  # keys that are data stay as they are
    assert main(["runs", "show", "latest", "--runs-dir", str(runs), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["runDir"].endswith("aaaaaa") and shown["record"]["runId"] == "20261123T100000Z-aaaaaa"


def test_run_record_round_trips_and_keeps_unknown_keys():
    data = {"runId": "r", "name": "n", "status": "succeeded", "manifest": "/m.yaml", "manifestSha256": "m",
            "planDigest": "p", "startedOn": "2026-11-23T10:00:00Z", "exitCode": 0, "mlflowRunId": "later"}
    record = RunRecord.from_json(data)
    assert record.exit_code == 0 and record.extra == {"mlflowRunId": "later"}
    assert record.to_json() == {**data, "host": {}, "hardwareClass": "", "hardwareMismatch": [], "outputs": {},
                                "metrics": {}}
