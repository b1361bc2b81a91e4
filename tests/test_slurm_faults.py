"""When Slurm and the node disagree, on a real one-node Slurm (tests/slurmcluster.py): a requeued job ends with
exactly one attestation and the record keeps its attempts; a ghost task (its slurmstepd killed with SIGKILL, so
Slurm shows it running for ever while the node finishes) is signed with the disagreement named in run.json and in
the attestation, never silently.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from runner.attest import generate_keypair, verify_attestation
from runner.context import RunOptions
from runner.engine.execute import managed_containers
from runner.errors import UsageError
from runner.runs.record import RunRecord
from runner.submit import SubmitOptions, collect, submit, wait_run
from experiments import probe_experiment

pytestmark = pytest.mark.docker
SLOW = ["python3", "-c", "import time; time.sleep(20); open('/outputs/probe.json', 'w').write('{\"done\": 1}')"]


@pytest.fixture()
def keys(tmp_path):
    return generate_keypair("ed25519", tmp_path / "keys", None)


def _submit(tmp_path: Path, base_image: str) -> tuple[Path, str]:
    manifest = probe_experiment(tmp_path / "exp", base_image, command=SLOW, outputs=[{"path": "probe.json"}])
    options = SubmitOptions(run=RunOptions(runs_dir=tmp_path / "runs", quiet=True), backend="slurm",
                            shared_dir=tmp_path / "shared")
    result = submit(manifest, options)
    return result.runs[0].run_dir, str(result.job_id)


def _until(what: str, check, bound: float = 300):
    deadline = time.monotonic() + bound  # a generous bound on a condition, not a timing
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.5)


def _record(run_dir: Path) -> RunRecord:
    return RunRecord.load(run_dir / "run.json")


def _container_running(docker_client, run_dir: Path) -> bool:
    """The training container of this run exists (run.json learns of it only once it has ended)."""
    return any(c.labels.get("org.xrun.run-id") == run_dir.name for c in managed_containers(docker_client))


def test_a_requeued_job_ends_with_one_attestation_and_keeps_its_attempts(tmp_path, base_image, slurm_cluster, keys,
                                                                         docker_client):
    run_dir, job = _submit(tmp_path, base_image)
    _until("the container start", lambda: _container_running(docker_client, run_dir))
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    done = wait_run(run_dir, key=keys[0])
    assert done.state == "completed" and done.attestation, _record(run_dir).to_json()
    record = _record(run_dir)
    assert len(record.attempts) == 1 and record.attempts[0]["status"] in ("interrupted", "failed"), record.attempts
    assert record.attempts[0]["attempt"] == 1 and record.status == "succeeded"
    assert sorted(p.name for p in run_dir.glob("*.intoto.jsonl")) == ["node.intoto.jsonl", "provenance.intoto.jsonl"]
    assert verify_attestation(done.attestation, [keys[1]], [run_dir / "outputs" / "probe.json"]).ok
    restarts = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts


def test_a_ghost_task_is_signed_with_the_disagreement_named(tmp_path, base_image, slurm_cluster, keys, docker_client):
    run_dir, job = _submit(tmp_path, base_image)
    _until("the container start", lambda: _container_running(docker_client, run_dir))
    pids = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\.batch\]"], capture_output=True, text=True).stdout
    assert pids.split(), f"no slurmstepd for job {job}"
    try:
        for pid in pids.split():
            subprocess.run(["kill", "-9", pid], check=True)
        _until("the node's run to finish", lambda: _record(run_dir).status == "succeeded")

        def collected():
            try:
                return collect(run_dir, key=keys[0])
            except UsageError:  # Slurm still says running: a ghost only after GHOST_GRACE_S
                return None

        done = _until("collect to accept the finished run", collected)
        assert done.attestation is not None
        record = _record(run_dir)
        assert record.scheduler.disagreement and "while the node's statement says the run finished" in \
            record.scheduler.disagreement, record.to_json()
        statement = verify_attestation(done.attestation, [keys[1]], [run_dir / "outputs" / "probe.json"]).statement
        notes = statement["predicate"]["buildDefinition"]["internalParameters"]["collect"]["schedulerDisagrees"]
        assert any(job in n and "Slurm shows" in n for n in notes), notes
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        _resume_node(slurm_cluster.node)


def _resume_node(node: str) -> None:
    """A killed slurmstepd can leave the node draining ("Kill task failed"): bring it back for the other tests."""
    def settled() -> bool:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if "drain" in state or "down" in state:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
            return False
        return state.rstrip("*") in ("idle", "mixed", "allocated", "completing")

    _until("the node to take jobs again", settled, bound=180)
    print(json.dumps({"node": node}))
