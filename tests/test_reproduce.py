"""`xrun reproduce` end to end on the real engine: identical → 0; a changed input → 5 naming it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.attest import generate_keypair
from runner.attest.recorded import NOT_VERIFIED, read_statement
from runner.cli import main
from runner.pipeline import RunOptions, run_experiment
from runner.reproduce import reproduce
from experiments import probe_experiment

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
METRICS = ["python3", "-c", "import json; json.dump({'loss': 0.5}, open('/outputs/m.json', 'w'))"]


@pytest.fixture()
def recorded(tmp_path, base_image, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    key, pub = generate_keypair("ed25519", tmp_path / "keys")
    manifest = probe_experiment(tmp_path / "exp", base_image, seed=11)
    summary = run_experiment(manifest, RunOptions(runs_dir=tmp_path / "runs", key=key, quiet=True))
    return summary, key, pub, manifest


def _options(tmp_path: Path, key: Path) -> RunOptions:
    return RunOptions(runs_dir=tmp_path / "runs", key=key, quiet=True)


def test_identical_rerun_reproduces_and_links_the_record(recorded, tmp_path):
    summary, key, pub, _ = recorded
    report = reproduce(summary.attestation, manifest=None, keys=[pub], rtol=None, atol=None,
                       options=_options(tmp_path, key))
    assert report.reproduced, report.to_json()
    assert {r.state for r in report.outputs} == {"identical"}
    fresh = read_statement(Path(report.run_dir) / "provenance.intoto.jsonl")
    deps = {d["name"]: d for d in fresh["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["attestation/reproduced"]["digest"]["sha256"] == hashlib.sha256(
        summary.attestation.read_bytes()).hexdigest()


def test_no_verify_reruns_and_says_and_records_not_verified(recorded, tmp_path, capsys):
    summary, key, _, _ = recorded
    capsys.readouterr()
    assert main(["reproduce", str(summary.attestation), "--no-verify", "--key", str(key), "--quiet", "--json",
                 "--runs-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["reproduced"] is True and report["verified"] is False and report["notes"] == [NOT_VERIFIED]
    assert "attestation NOT verified" in out.err
    fresh = read_statement(Path(report["runDir"]) / "provenance.intoto.jsonl")
    deps = {d["name"]: d for d in fresh["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["attestation/reproduced"]["annotations"] == {"verified": False}


def test_changed_data_is_named(recorded, tmp_path):
    summary, key, pub, manifest = recorded
    (manifest.parent / "input.txt").write_text("hellp\n")  # one byte changed, checksum updated below
    data = json.loads(manifest.read_text())
    data["data"][0]["sha256"] = hashlib.sha256(b"hellp\n").hexdigest()
    manifest.write_text(json.dumps(data))
    report = reproduce(summary.attestation, manifest=manifest, keys=[pub], rtol=None, atol=None,
                       options=_options(tmp_path, key))
    assert not report.reproduced
    assert "data/input" in [c.name for c in report.changes]


def test_changed_seed_is_named(recorded, tmp_path):
    summary, key, pub, manifest = recorded
    manifest.write_text(manifest.read_text().replace('"global": 11', '"global": 12'))
    report = reproduce(summary.attestation, manifest=manifest, keys=[pub], rtol=None, atol=None,
                       options=_options(tmp_path, key))
    assert not report.reproduced
    assert "manifest seeds.global" in [c.name for c in report.changes]


def test_changed_code_is_named_and_cli_exits_5(recorded, tmp_path):
    summary, key, pub, manifest = recorded
    probe = manifest.parent / "probe.py"
    probe.write_text(probe.read_text().replace('"b"', '"c"'))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "reproduce", str(summary.attestation),
                           "--manifest", str(manifest), "--key", str(pub), "--quiet", "--json",
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, env=env)
    assert proc.returncode == 5, proc.stderr
    body = json.loads(proc.stdout)
    assert "code" in [c["name"] for c in body["changedInputs"]]
    states = {o["path"]: o["state"] for o in body["outputs"]}
    assert states["more/b.txt"] == "different" and states["probe.json"] == "identical"


def test_tampered_attestation_is_exit_3_and_nothing_runs(recorded, tmp_path):
    summary, key, pub, _ = recorded
    other_key, other_pub = generate_keypair("ecdsa-p256", tmp_path / "other")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "reproduce", str(summary.attestation),
                           "--key", str(other_pub), "--runs-dir", str(tmp_path / "never")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 3, proc.stderr
    assert not (tmp_path / "never").exists()


def test_metrics_tolerance(tmp_path, base_image, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "keys")
    manifest = probe_experiment(tmp_path / "exp", base_image, command=METRICS,
                                outputs=[{"path": "m.json", "metrics": True}])
    first = run_experiment(manifest, _options(tmp_path, key))
    data = json.loads(manifest.read_text())
    data["run"]["command"] = [c.replace("0.5", "0.5 + 1e-9") for c in METRICS]
    manifest.write_text(json.dumps(data))
    strict = reproduce(first.attestation, manifest=manifest, keys=[pub], rtol=None, atol=None,
                       options=_options(tmp_path, key))
    assert not strict.reproduced
    loose = reproduce(first.attestation, manifest=manifest, keys=[pub], rtol=1e-6, atol=None,
                      options=_options(tmp_path, key))
    assert loose.reproduced
    (row,) = loose.outputs
    assert row.state == "within-tolerance" and row.metrics[0].abs_diff == pytest.approx(1e-9)


def test_the_ci_workflow_commands(recorded, tmp_path):
    """The commands of examples/ci/github-actions.yml: signing key from the environment, --rtol, --json."""
    summary, key, pub, manifest = recorded
    workflow = (REPO / "examples" / "ci" / "github-actions.yml").read_text()
    for flag in ("--manifest", "--trust", "--key", "--rtol 1e-6", "--json"):
        assert flag in workflow
    env = dict(os.environ, PYTHONPATH=str(REPO), XRUN_SIGNING_KEY=str(key))
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "reproduce", str(summary.attestation),
                           "--manifest", str(manifest), "--trust", str(pub), "--key", env["XRUN_SIGNING_KEY"],
                           "--rtol", "1e-6", "--json", "--runs-dir", str(tmp_path / "ci-runs")],
                          capture_output=True, text=True, env=env, cwd=manifest.parent)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # the workflow uses today's spelling
    report = json.loads(proc.stdout)
    assert report["reproduced"] is True and report["verified"] is True
    fresh = Path(report["runDir"]) / "provenance.intoto.jsonl"
    verify = subprocess.run([sys.executable, "-m", "runner.cli", "verify", str(fresh), "--key", str(pub)],
                            capture_output=True, text=True, env=env)
    assert verify.returncode == 0, verify.stdout


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".xrun" not in p.parts}


def _cli_reproduce(attestation: Path, pub: Path, runs: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "runner.cli", "reproduce", str(attestation), "--trust", str(pub),
                           "--quiet", "--json", "--runs-dir", str(runs), *extra],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_copied_attestation_needs_a_stated_code_tree_and_never_writes_into_it(recorded, tmp_path):
    summary, key, pub, manifest = recorded
    copy = tmp_path / "elsewhere" / "provenance.intoto.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(summary.attestation.read_bytes())
    before = _tree(manifest.parent)
    # From the manifest's own folder, with no --code: the current folder is no stated place.
    proc = _cli_reproduce(copy, pub, tmp_path / "r1", manifest.parent)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--code DIR" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r1").exists() and _tree(manifest.parent) == before
    # With --code: the recorded manifest is found there by its digest, the tree matches, nothing is written.
    proc = _cli_reproduce(copy, pub, tmp_path / "r2", tmp_path, "--code", str(manifest.parent))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["changedInputs"] == []
    assert _tree(manifest.parent) == before
    fresh = read_statement(Path(json.loads(proc.stdout)["runDir"]) / "provenance.intoto.jsonl")
    old = read_statement(summary.attestation)
    code = [{d["name"]: d for d in s["predicate"]["buildDefinition"]["resolvedDependencies"]}["code"]
            for s in (old, fresh)]
    assert code[0]["digest"] == code[1]["digest"]


def test_code_tree_that_differs_from_the_record_is_exit_3_and_nothing_runs(recorded, tmp_path):
    summary, key, pub, manifest = recorded
    recorded_digest = {d["name"]: d for d in read_statement(summary.attestation)["predicate"]["buildDefinition"]
                       ["resolvedDependencies"]}["code"]["digest"]["sha256"]
    (manifest.parent / "probe.py").write_text("print('changed')\n")
    for extra in ((), ("--code", str(manifest.parent))):  # the recorded folder, then a stated one
        proc = _cli_reproduce(summary.attestation, pub, tmp_path / "never", tmp_path, *extra)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        line = proc.stderr.strip().splitlines()[0]
        assert str(manifest.parent) in line and recorded_digest in line and "--code DIR" in line, line
        assert not (tmp_path / "never").exists()
