"""Cluster runs against a real one-node Slurm (tests/slurmcluster.py) and the real Docker engine.

The submitter and the node are the same machine here (one engine, one filesystem): what is tested is
the whole path through Slurm's own tools — sbatch, the job script, `xrun node-run` on the node, the
scheduler's states, scancel, time limits — and the trust split (node writes an unsigned statement,
the submitter re-hashes and signs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.attest import generate_keypair, verify_attestation
from runner.context import RunOptions
from runner.engine.execute import managed_containers
from runner.pipeline import run_experiment
from runner.runs.record import RunRecord
from runner.backends import refresh
from runner.runs.sweep import summarize_sweep
from runner.submit import SubmitOptions, cancel_run, submit, wait_run
from experiments import probe_experiment
from statementcheck import assert_strictly_valid
from servers import PATIENCE_S, wait_for

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SLURM_PREFIX = "https://xrun.dev/builders/slurm/v1/"


@pytest.fixture()
def keys(tmp_path):
    return generate_keypair("ecdsa-p256", tmp_path / "keys", None)


@pytest.fixture()
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


def _options(tmp_path: Path, shared: Path, key: Path | None = None, **kw) -> SubmitOptions:
    run = RunOptions(runs_dir=tmp_path / "runs", quiet=True, key=key,
                     allow_hardware_mismatch=kw.pop("allow_hardware_mismatch", False))
    return SubmitOptions(run=run, backend="slurm", shared_dir=shared, **kw)


def _wait_state(run_dir: Path, states: tuple[str, ...], timeout: float = PATIENCE_S) -> RunRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = refresh(run_dir)
        assert record is not None and record.scheduler is not None
        if record.scheduler.state in states:
            return record
        assert time.monotonic() < deadline, f"job never reached {states}: {record.to_json()}"
        time.sleep(0.5)


def _statement(path: Path) -> dict:
    from runner.attest import read_attestation

    return json.loads(read_attestation(path).envelopes[0].payload)


def test_submit_is_bit_identical_to_local_and_verifies(tmp_path, base_image, slurm_cluster, shared, keys):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    local = run_experiment(manifest, RunOptions(runs_dir=tmp_path / "local", quiet=True,
                                                cache_dir=shared / "local-cache"))
    result = submit(manifest, _options(tmp_path, shared, keys[0], wait=True))
    (member,) = result.runs
    assert member.state == "completed", member
    record = RunRecord.load(member.run_dir / "run.json")
    assert record.outputs == local.outputs and record.outputs  # bit-identical outputs
    assert record.scheduler.job_id == result.job_id and record.scheduler.node == slurm_cluster.node
    verdict = verify_attestation(member.attestation, [keys[1]], [member.run_dir / "outputs" / "probe.json"])
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    statement = verdict.statement
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["id"] == SLURM_PREFIX + slurm_cluster.name
    assert result.job_id in details["metadata"]["invocationId"]
    scheduler = statement["predicate"]["buildDefinition"]["internalParameters"]["scheduler"]
    assert scheduler["jobId"] == result.job_id and scheduler["node"] == slurm_cluster.node
    assert scheduler["slurmVersion"] and scheduler["cluster"] == slurm_cluster.name
    assert any(d["name"] == "slurm" for d in details["builder"]["builderDependencies"])
    # The official protobuf bindings parse it strictly (no field outside SLSA v1).
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2

    json_format.Parse(json.dumps(statement), statement_pb2.Statement())
    json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())
    # The same checks from the command line: `xrun verify` accepts it.
    out = subprocess.run([sys.executable, "-m", "runner.cli", "verify", str(member.attestation), "--key",
                          str(keys[1])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # The script asked Slurm for the class's resources.
    script = (member.run_dir / "job.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --mem=2G" in script


def test_signing_key_inside_the_code_folder_stays_out_on_the_node(tmp_path, base_image, slurm_cluster, shared):
    """The node re-plans the code tree: it must leave out the submitter's key as the submitter did (issue 20)."""
    manifest = probe_experiment(tmp_path / "exp", base_image)
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "exp" / "keys", None)
    result = submit(manifest, _options(tmp_path, shared, key, wait=True))
    (member,) = result.runs
    assert member.state == "completed", member
    assert json.loads((member.run_dir / "job.json").read_text())["signingKey"] == str(key.absolute())
    assert verify_attestation(member.attestation, [pub], []).ok


def test_registry_image_is_pulled_by_digest_on_the_node(tmp_path, base_image, slurm_cluster, shared, keys, registry,
                                                        docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    result = submit(manifest, _options(tmp_path, shared, keys[0], registry=f"{registry.host}/xrun-slurm",
                                       sbatch_args=("--hold",)))
    member = result.runs[0]
    reference = result.image_reference
    assert reference and reference.startswith(f"{registry.host}/xrun-slurm@sha256:")
    job = json.loads((member.run_dir / "job.json").read_text())
    assert job["image"]["reference"] == reference and job["image"]["archive"] is None
    # xrun pushes without the engine (the OCI layout over HTTP): the engine here does not know the pushed name,
    # unless an earlier session's node pulled the same digest (the registry's port and the image are the same):
    # that reference is forgotten first, so the node has to pull by digest.
    import docker.errors

    try:
        docker_client.images.remove(reference, noprune=True)
    except docker.errors.ImageNotFound:
        pass
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(reference)
    subprocess.run(["scontrol", "release", result.job_id], check=True)
    done = wait_run(member.run_dir, key=keys[0])
    assert done.state == "completed", RunRecord.load(member.run_dir / "run.json").error
    assert reference in (docker_client.images.get(job["image"]["id"]).attrs.get("RepoDigests") or [])
    statement = verify_attestation(done.attestation, [keys[1]], []).statement
    scheduler = statement["predicate"]["buildDefinition"]["internalParameters"]["scheduler"]
    assert scheduler["imageReference"] == reference


def test_image_is_loaded_from_the_shared_directory_on_the_node(tmp_path, base_image, slurm_cluster, shared,
                                                              docker_client):
    import uuid

    root = tmp_path / "exp"
    manifest = probe_experiment(root, base_image)
    (root / "unique.txt").write_text(uuid.uuid4().hex)  # an image of this test's own, safe to remove
    result = submit(manifest, _options(tmp_path, shared, sbatch_args=("--hold",)))
    member = result.runs[0]
    job = json.loads((member.run_dir / "job.json").read_text())
    archive = Path(job["image"]["archive"])
    assert archive.is_file() and archive.parent == shared / "cache" / "images" and job["image"]["reference"] is None
    docker_client.images.remove(job["image"]["id"], force=True)  # the node's engine does not have it
    try:
        subprocess.run(["scontrol", "release", result.job_id], check=True)
        done = wait_run(member.run_dir, key=None)
        assert done.state == "completed", RunRecord.load(member.run_dir / "run.json").error
        assert docker_client.images.get(job["image"]["tag"]).id == job["image"]["id"]  # loaded, same ID
    finally:
        try:
            docker_client.images.remove(job["image"]["id"], force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def test_outputs_changed_on_shared_storage_are_not_signed(tmp_path, base_image, slurm_cluster, shared, keys):
    from runner.errors import IntegrityError
    from runner.submit import collect

    manifest = probe_experiment(tmp_path / "exp", base_image)
    member = submit(manifest, _options(tmp_path, shared)).runs[0]
    _wait_state(member.run_dir, ("completed", "failed"))
    (member.run_dir / "outputs" / "probe.json").write_text("{}")  # after the node hashed it, before signing
    with pytest.raises(IntegrityError, match="differ from the node's statement"):
        collect(member.run_dir, key=keys[0])
    assert not (member.run_dir / "provenance.intoto.jsonl").exists()
    assert not (member.run_dir / "provenance.sigstore.json").exists()


def test_seed_sweep_is_one_array_with_a_summary(tmp_path, base_image, slurm_cluster, shared, keys):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    result = submit(manifest, _options(tmp_path, shared, keys[0], seeds=(1, 2, 3), wait=True))
    assert result.sweep and len(result.runs) == 3
    assert "#SBATCH --array=0-2" in (result.runs[0].run_dir / "job.sbatch").read_text()
    values = []
    build_digests = set()
    for i, member in enumerate(result.runs):
        assert member.state == "completed", member
        verdict = verify_attestation(member.attestation, [keys[1]], [])
        assert verdict.ok
        statement = verdict.statement
        assert statement["predicate"]["buildDefinition"]["externalParameters"]["seed"] == i + 1
        internal = statement["predicate"]["buildDefinition"]["internalParameters"]
        assert internal["seeding"]["global"] == i + 1 and internal["scheduler"]["arrayIndex"] == i
        build_digests.add(internal["buildDigest"])
        values.append(json.loads((member.run_dir / "outputs" / "metrics.json").read_text())["value"])
    assert len(build_digests) == 1  # the seed changes the plan, not the image
    assert len(set(values)) == 3  # three seeds, three different draws
    summary = summarize_sweep(tmp_path / "runs", result.sweep)
    row = next(m for m in summary.metrics if m.key == "metrics.json:value")
    assert row.n == 3 and row.mean == pytest.approx(statistics.fmean(values))
    assert row.std == pytest.approx(statistics.stdev(values))
    assert row.min == min(values) and row.max == max(values) and not summary.failed
    out = subprocess.run([sys.executable, "-m", "runner.cli", "runs", "summary", result.sweep[:12], "--runs-dir",
                          str(tmp_path / "runs"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["metrics"][-1]["n"] == 3


def test_cancel_of_a_running_job(tmp_path, base_image, slurm_cluster, shared, docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "300"])
    result = submit(manifest, _options(tmp_path, shared))
    run_dir = result.runs[0].run_dir
    wait_for(lambda: any(c.labels.get("org.xrun.run-id") == run_dir.name for c in managed_containers(docker_client)),
             "the container's start")
    cancel_run(run_dir)
    done = wait_run(run_dir, key=None)
    assert done.state == "cancelled" and done.attestation is None
    record = RunRecord.load(run_dir / "run.json")
    assert record.status == "interrupted" and "cancel" in record.error
    assert not (run_dir / "provenance.intoto.jsonl").exists() and not (run_dir / "node.intoto.jsonl").exists()
    assert not [c for c in managed_containers(docker_client) if c.labels.get("org.xrun.run-id") == run_dir.name]


def test_node_failure_is_failed_with_its_message(tmp_path, base_image, slurm_cluster, shared):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["python3", "-c", "import sys; sys.exit(3)"])
    result = submit(manifest, _options(tmp_path, shared, wait=True))
    member = result.runs[0]
    assert member.state == "failed" and member.attestation is None
    record = RunRecord.load(member.run_dir / "run.json")
    assert record.status == "failed" and "exited with code 3" in record.error, record.error


def test_gpu_class_is_scheduled_on_the_fake_gpu_and_refused_on_the_node(tmp_path, base_image, slurm_cluster, shared):
    manifest = probe_experiment(tmp_path / "exp", base_image, cls="gpu-1x-any")
    result = submit(manifest, _options(tmp_path, shared, wait=True))
    member = result.runs[0]
    assert "#SBATCH --gres=gpu:1" in (member.run_dir / "job.sbatch").read_text()
    record = RunRecord.load(member.run_dir / "run.json")
    assert record.scheduler.node == slurm_cluster.node  # Slurm placed it on the node with the (fake) GPU
    assert member.state == "failed" and "GPU" in record.error, record.error
    log = (member.run_dir / "logs" / "slurm.log").read_text()
    assert "xrun: error:" in log and "GPU" in log
    assert _exit_code(result.job_id) == "4:0"  # xrun's environment exit code, as Slurm saw it


def test_gpu_class_with_allow_hardware_mismatch_is_recorded(tmp_path, base_image, slurm_cluster, shared, keys):
    manifest = probe_experiment(tmp_path / "exp", base_image, cls="gpu-1x-any")
    result = submit(manifest, _options(tmp_path, shared, keys[0], wait=True, allow_hardware_mismatch=True))
    member = result.runs[0]
    assert member.state == "completed" and member.attestation, member
    statement = verify_attestation(member.attestation, [keys[1]], []).statement
    internal = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert any("GPU" in m for m in internal["hardwareMismatch"]) and internal["isolation"]["gpus"] == 0
    assert RunRecord.load(member.run_dir / "run.json").hardware_mismatch


def test_two_gpu_jobs_on_one_node_record_the_devices_slurm_allocated(tmp_path, base_image, slurm_cluster, shared,
                                                                      keys):
    # Held, then released together: Slurm runs both 1-GPU members side by side on the fake GPUs 0 and 1. No GPU
    # here, so the accepted mismatch runs them without one; the allocation is what the attestation records.
    manifest = probe_experiment(tmp_path / "exp", base_image, cls="gpu-1x-any")
    result = submit(manifest, _options(tmp_path, shared, seeds=(1, 2), sbatch_args=("--hold",),
                                       allow_hardware_mismatch=True))
    subprocess.run(["scontrol", "release", result.job_id], check=True)
    allocations = []
    for member in result.runs:
        done = wait_run(member.run_dir, key=keys[0])
        assert done.state == "completed" and done.attestation, done
        statement = _statement(done.attestation)
        assert_strictly_valid(statement)  # the official bindings parse the recorded devices too
        internal = statement["predicate"]["buildDefinition"]["internalParameters"]
        allocations.append(internal["isolation"]["gpuAllocation"])
        assert internal["isolation"]["gpuDevices"] == [] and internal["isolation"]["gpus"] == 0
    assert sorted(a["devices"] for a in allocations) == [["0"], ["1"]], allocations
    assert {a["source"] for a in allocations} == {"SLURM_JOB_GPUS"}


def test_a_different_image_under_the_same_tag_is_refused(tmp_path, base_image, base_image_id, slurm_cluster, shared,
                                                         docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    result = submit(manifest, _options(tmp_path, shared, sbatch_args=("--hold",)))
    member = result.runs[0]
    job = json.loads((member.run_dir / "job.json").read_text())
    repo, _, tag = job["image"]["tag"].rpartition(":")
    docker_client.api.tag(base_image_id, repo, tag, force=True)
    try:
        subprocess.run(["scontrol", "release", result.job_id], check=True)
        done = wait_run(member.run_dir, key=None)
    finally:
        docker_client.api.tag(job["image"]["id"], repo, tag, force=True)
    assert done.state == "failed"
    record = RunRecord.load(member.run_dir / "run.json")
    assert "refusing to run a different image" in record.error, record.error
    assert _exit_code(result.job_id) == "3:0"  # xrun's integrity exit code, as Slurm saw it


def test_time_limit_is_timed_out(tmp_path, base_image, slurm_cluster, shared, docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "600"], timeout="30m")
    result = submit(manifest, _options(tmp_path, shared, sbatch_args=("--time=1",), wait=True))
    member = result.runs[0]
    assert member.state == "timed-out" and member.attestation is None
    record = RunRecord.load(member.run_dir / "run.json")
    assert record.status == "failed" and "time limit" in record.error
    assert not [c for c in managed_containers(docker_client) if c.labels.get("org.xrun.run-id") == member.run_id]


def _exit_code(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return out.split("ExitCode=", 1)[1].split()[0]


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True,
                          env=env or os.environ.copy())


@pytest.mark.parametrize("case", ["no-sbatch", "partition", "registry", "shared-dir"])
def test_bad_input_submits_nothing(tmp_path, base_image, slurm_cluster, shared, case):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    runs = tmp_path / "runs"
    args = ["submit", str(manifest), "--backend", "slurm", "--runs-dir", str(runs), "--quiet"]
    env = os.environ.copy()
    before = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout
    if case == "no-sbatch":
        empty = tmp_path / "bin"
        empty.mkdir()
        env["PATH"] = str(empty)
        args += ["--shared-dir", str(shared)]
        expected, words = 4, "sbatch"
    elif case == "partition":
        args += ["--shared-dir", str(shared), "--partition", "nosuch"]
        expected, words = 2, "nosuch"
    elif case == "registry":
        args += ["--shared-dir", str(shared), "--registry", "127.0.0.1:1/xrun"]
        expected, words = 4, "127.0.0.1:1"
    else:
        blocker = tmp_path / "afile"
        blocker.write_text("x")
        args += ["--shared-dir", str(blocker / "shared")]
        expected, words = 4, "--shared-dir"
    out = subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, env=env)
    assert out.returncode == expected, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not runs.exists() or not list(runs.iterdir())
    after = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout
    assert after == before  # nothing submitted


def test_command_line_submit_logs_wait_and_runs_ls(tmp_path, base_image, slurm_cluster, shared, keys):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    runs = str(tmp_path / "runs")
    out = _cli(["submit", str(manifest), "--backend", "slurm", "--shared-dir", str(shared), "--runs-dir", runs,
                "--json", "--quiet"])
    assert out.returncode == 0, out.stderr
    submitted = json.loads(out.stdout)
    run_id = submitted["runs"][0]["runId"]
    assert submitted["jobId"] and submitted["runs"][0]["state"] == "pending"
    logs = _cli(["logs", run_id, "-f", "--runs-dir", runs])
    assert logs.returncode == 0 and "probe done" in logs.stdout, logs.stderr
    waited = _cli(["wait", run_id, "--runs-dir", runs, "--key", str(keys[0]), "--json"])
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "completed"
    listed = json.loads(_cli(["runs", "ls", "--runs-dir", runs, "--json"]).stdout)
    (row,) = [r for r in listed if r["runId"] == run_id]
    assert row["scheduler"]["state"] == "completed" and row["scheduler"]["jobId"] == submitted["jobId"]
    assert row["attested"] and row["status"] == "succeeded"
    text = _cli(["runs", "ls", "--runs-dir", runs]).stdout
    assert "succeeded (completed)" in text
