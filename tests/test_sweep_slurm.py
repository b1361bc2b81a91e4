"""A seed sweep is one thing on a real Slurm (tests/slurmcluster.py): `xrun wait|collect|cancel|logs SWEEP` act on
every member in one process, an exact id wins over a prefix (`<sweep>-1` is not `<sweep>-10`…`-11`), and the
members reach the real MLflow server (tests/mlflowserver.py) when collected: one parent run per sweep, one child per
member, never twice.

One 12-member sweep (ids -0…-11) is shared by the tests of this module; the trainings are tiny.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.attest import generate_keypair, verify_attestation
from runner.backends import attach
from runner.context import RunOptions
from runner.engine.execute import managed_containers
from runner.runs.record import RunRecord
from runner.runs.store import find_run, find_runs
from runner.submit import SubmitOptions, submit
from mlflowserver import tags
from servers import PATIENCE_S, wait_for
from experiments import probe_experiment

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
MEMBERS = 12


def _cli(*args: str) -> subprocess.CompletedProcess:
    # Bounded like every wait in the suite (servers.PATIENCE_S): a `wait` that never ends fails here, not in CI's limit.
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=PATIENCE_S)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, base_image, slurm_cluster, mlflow_server):
    """A submitted 12-seed sweep (not waited for), tracked in MLflow: (sweep id, runs dir, key, pub, submit result)."""
    root = tmp_path_factory.mktemp("sweep12")
    manifest = probe_experiment(root / "exp", base_image)
    key, pub = generate_keypair("ed25519", root / "keys", None)
    options = SubmitOptions(run=RunOptions(runs_dir=root / "runs", quiet=True, mlflow=mlflow_server.uri), backend="slurm",
                            shared_dir=root / "shared", seeds=tuple(range(1, MEMBERS + 1)))
    result = submit(manifest, options)
    assert result.sweep and len(result.runs) == MEMBERS
    return result.sweep, root / "runs", key, pub, result


def test_exact_ids_win_over_prefixes(sweep):
    sweep_id, runs, *_ = sweep
    one = f"{sweep_id}-1"
    assert find_run(runs, one).run_id == one  # not "matches 3 runs" (-1, -10, -11)
    assert [r.run_id for r in find_runs(runs, one)] == [one]
    members = find_runs(runs, sweep_id)
    assert [r.run_id for r in members] == [f"{sweep_id}-{i}" for i in range(MEMBERS)]  # by array index
    assert [r.run_id for r in find_runs(runs, sweep_id[:-2])] == [r.run_id for r in members]  # a unique prefix


def test_a_refused_member_does_not_stop_the_others(sweep):
    sweep_id, runs, key, _, result = sweep
    for member in result.runs:
        attach(member.run_dir).wait()
    probe = result.runs[3].run_dir / "outputs" / "probe.json"
    original = probe.read_bytes()
    probe.write_text("{}")  # changed on shared storage after the node hashed it
    try:
        out = _cli("collect", sweep_id, "--runs-dir", str(runs), "--key", str(key))
    finally:
        probe.write_bytes(original)
    assert out.returncode == 3, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == MEMBERS and "REFUSED" in lines[3] and "differ from the node's statement" in lines[3]
    assert sum("attestation" in line for line in lines) == MEMBERS - 1
    assert not (result.runs[3].run_dir / "provenance.intoto.jsonl").exists()


def test_wait_and_collect_a_whole_sweep_in_one_command(sweep):
    sweep_id, runs, key, pub, _ = sweep
    out = _cli("wait", sweep_id, "--runs-dir", str(runs), "--key", str(key), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    waited = json.loads(out.stdout)
    assert [r["runId"] for r in waited] == [f"{sweep_id}-{i}" for i in range(MEMBERS)]
    assert all(r["state"] == "completed" and r["attestation"] for r in waited), waited
    for member, seed in zip(waited, range(1, MEMBERS + 1)):
        verdict = verify_attestation(member["attestation"], [pub], [])
        assert verdict.ok and verdict.statement["predicate"]["buildDefinition"]["externalParameters"]["seed"] == seed
    # Collecting again signs nothing new; one member by its exact id is that member alone.
    again = _cli("collect", sweep_id, "--runs-dir", str(runs), "--key", str(key), "--json")
    assert again.returncode == 0 and len(json.loads(again.stdout)) == MEMBERS, again.stderr
    one = _cli("collect", f"{sweep_id}-1", "--runs-dir", str(runs), "--key", str(key), "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["runId"] == f"{sweep_id}-1"
    summary = _cli("runs", "summary", sweep_id, "--runs-dir", str(runs), "--json")
    assert json.loads(summary.stdout)["succeeded"] == MEMBERS
    logs = _cli("logs", sweep_id, "--runs-dir", str(runs))
    assert logs.returncode == 0 and logs.stdout.count("probe done") == MEMBERS, logs.stderr


def test_members_reach_mlflow_once_under_one_parent_run(sweep, mlflow_server):
    mlflow = mlflow_server
    sweep_id, runs, key, _, result = sweep
    waited = _cli("wait", sweep_id, "--runs-dir", str(runs), "--key", str(key), "--json")
    assert waited.returncode == 0, waited.stderr
    again = _cli("collect", sweep_id, "--runs-dir", str(runs), "--key", str(key))  # collected twice: logged once
    assert again.returncode == 0, again.stderr
    parents = set()
    for index, member in enumerate(result.runs):
        found = mlflow.runs_tagged(member.run_id)
        assert len(found) == 1, (member.run_id, found)
        child = tags(found[0])
        assert child["xrun.sweep"] == sweep_id and child["xrun.seed"] == str(index + 1)
        assert child["xrun.backend"] == "slurm" and child["xrun.jobId"] == result.job_id
        assert child["xrun.arrayIndex"] == str(index) and child["xrun.node"] and child["xrun.signed"] == "true" and child["xrun.verified"] == "true"
        parents.add(child["mlflow.parentRunId"])
        record = RunRecord.load(member.run_dir / "run.json")
        assert record.tracking["mlflow"]["state"] == "logged"
    (parent_id,) = parents
    parent = mlflow.api("GET", "runs/get", params={"run_id": parent_id})["run"]
    assert tags(parent)["xrun.sweep"] == sweep_id and tags(parent)["xrun.role"] == "sweep"


def test_cancel_a_whole_sweep(tmp_path, base_image, slurm_cluster, docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "300"])
    options = SubmitOptions(run=RunOptions(runs_dir=tmp_path / "runs", quiet=True), backend="slurm",
                            shared_dir=tmp_path / "shared", seeds=(1, 2, 3))
    result = submit(manifest, options)
    out = _cli("cancel", result.sweep, "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 0 and out.stdout.count("cancel requested") == 3, out.stderr
    waited = _cli("wait", result.sweep, "--runs-dir", str(tmp_path / "runs"), "--json")
    assert waited.returncode == 1
    assert [r["state"] for r in json.loads(waited.stdout)] == ["cancelled"] * 3
    for member in result.runs:
        record = RunRecord.load(member.run_dir / "run.json")
        assert record.status == "interrupted" and not (member.run_dir / "provenance.intoto.jsonl").exists()
    # The node's xrun removes its container on SIGTERM.
    wait_for(lambda: not any(c.labels.get("org.xrun.run-id", "").startswith(result.sweep)
                             for c in managed_containers(docker_client)),
             "the removal of every cancelled member's container")


def test_wait_collects_each_member_as_it_ends_and_the_node_hashes_the_code_once(tmp_path, base_image, slurm_cluster,
                                                                               monkeypatch):
    # Member 2 holds until the test drops /outputs/go into its outputs folder (the container's bind mount): a
    # condition, not a clock. Member 1 must be collected and signed while member 2 still runs.
    hold = ('if [ "$XRUN_SEED" = 2 ]; then while [ ! -e /outputs/go ]; do sleep 0.1; done; rm /outputs/go; fi; '
            'echo "{\\"seed\\": $XRUN_SEED}" > /outputs/probe.json')
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sh", "-c", hold],
                                outputs=[{"path": "probe.json"}])
    monkeypatch.setenv("TMPDIR", str(tmp_path / "nodetmp"))  # the job inherits it: the node's temporary folder
    (tmp_path / "nodetmp").mkdir()
    key, pub = generate_keypair("ed25519", tmp_path / "keys", None)
    result = submit(manifest, SubmitOptions(run=RunOptions(runs_dir=tmp_path / "runs", quiet=True), backend="slurm",
                                            shared_dir=tmp_path / "shared", seeds=(1, 2)))
    first, second = (m.run_dir for m in result.runs)
    waiting = subprocess.Popen([sys.executable, "-m", "runner.cli", "wait", result.sweep, "--runs-dir",
                                str(tmp_path / "runs"), "--key", str(key), "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        wait_for(lambda: (first / "provenance.intoto.jsonl").exists() or waiting.poll() is not None,
                 "member 1's attestation while member 2 still runs")
        assert waiting.poll() is None, waiting.communicate()
        assert RunRecord.load(second / "run.json").status == "running"
        (second / "outputs" / "go").touch()
        out, err = waiting.communicate(timeout=PATIENCE_S)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, out + err
    assert [bool(r["attestation"]) for r in json.loads(out)] == [True, True]
    assert verify_attestation(str(second / "provenance.intoto.jsonl"), [pub], []).ok
    # The node kept the code tree its first member hashed, under the plan's code digest, in the user's own folder.
    kept = list((tmp_path / "nodetmp" / f"xrun-{os.getuid()}").glob("code-*.json"))
    assert len(kept) == 1 and (kept[0].parent.stat().st_mode & 0o777) == 0o700
    code = json.loads((first / "plan.json").read_text())["code"]
    assert json.loads(kept[0].read_text())["digest"] == code["digest"]
