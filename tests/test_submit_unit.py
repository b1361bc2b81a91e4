"""Edge cases of the submitting side that need no cluster: seed lists, the job script, state mapping."""

from __future__ import annotations

import pytest

from runner.backends import slurm
from runner.errors import UsageError
from runner.hardware import lookup
from runner.runs.record import RunRecord, SchedulerInfo
from runner.submit import parse_seeds


@pytest.mark.parametrize("text,seeds", [("1-3", (1, 2, 3)), ("1,5,9", (1, 5, 9)), ("1-2,7,2", (1, 2, 7)), ("0", (0,))])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-1", "1,,2"])
def test_parse_seeds_refuses(text):
    with pytest.raises(UsageError, match="--seeds"):
        parse_seeds(text)


def test_script_from_the_class(tmp_path):
    spec = slurm.ScriptSpec(job_name="xrun-probe", log=str(tmp_path / "r-%a" / "slurm.log"),
                            hardware=lookup("gpu-1x-h100-80gb"), timeout_s=600, run_dirs=(tmp_path / "a", tmp_path / "b"),
                            xrun=("/usr/bin/python3", "-m", "runner.cli"), array=True, partition="gpu",
                            account="proj", qos="high", extra=("--constraint=a100",))
    script = slurm.render_script(spec)
    for line in ("--cpus-per-task=8", "--mem=64G", "--time=15", "--gres=gpu:h100:1", "--array=0-1",
                 "--partition=gpu", "--account=proj", "--qos=high", "--constraint=a100", "--job-name=xrun-probe"):
        assert f"#SBATCH {line}\n" in script
    assert 'exec /usr/bin/python3 -m runner.cli node-run "$RUN_DIR"' in script
    assert "${SLURM_ARRAY_TASK_ID:-0}" in script


def test_sbatch_arg_must_be_an_option(tmp_path):
    spec = slurm.ScriptSpec(job_name="x", log="l", hardware=lookup("cpu-1"), timeout_s=None, run_dirs=(tmp_path,),
                            xrun=("xrun",), extra=("echo hi",))
    with pytest.raises(UsageError, match="--sbatch-arg"):
        slurm.render_script(spec)


def test_scheduler_field_round_trips():
    record = RunRecord(run_id="r", name="n", status="submitted", manifest="m", manifest_sha256="s", plan_digest="p",
                       started_on="t", scheduler=SchedulerInfo(backend="slurm", state="pending", job_id="7",
                                                               array_index=2, sweep="sw", seed=3))
    data = record.to_json()
    assert data["scheduler"] == {"backend": "slurm", "state": "pending", "jobId": "7", "arrayIndex": 2, "sweep": "sw",
                                 "seed": 3}
    back = RunRecord.from_json(data)
    assert back.scheduler == record.scheduler and back.scheduler.job_ref == "7_2" and not back.extra


@pytest.mark.parametrize("word,state", [("PENDING", "pending"), ("RUNNING", "running"), ("COMPLETED", "completed"),
                                        ("CANCELLED", "cancelled"), ("TIMEOUT", "timed-out"), ("FAILED", "failed"),
                                        ("OUT_OF_MEMORY", "failed")])
def test_state_map(word, state):
    assert slurm.STATE_MAP[word] == state


def test_refresh_never_overwrites_the_nodes_record(tmp_path, monkeypatch):
    """While the job runs the node owns run.json; once it is over, the node's last write is what gets the state.

    Before the fix, a refresh that read run.json while the node was running and heard 'COMPLETED' a moment
    later wrote its stale copy back: the node's outputs vanished from the record.
    """
    answers = iter([slurm.JobState("7", "running", "RUNNING", "n1", None),
                    slurm.JobState("7", "completed", "COMPLETED", "n1", None)])
    record_path = tmp_path / "run.json"
    running = RunRecord(run_id="r", name="n", status="running", manifest="m", manifest_sha256="s", plan_digest="p",
                        started_on="t", scheduler=SchedulerInfo(backend="slurm", state="pending", job_id="7"))
    running.save(record_path)
    before = record_path.read_bytes()

    def states(ids):
        state = next(answers)
        if state.state == "completed":  # the node finished between our read and the scheduler's answer
            running.status, running.outputs = "succeeded", {"a.txt": "ab" * 32}
            running.save(record_path)
        return {"7": state}

    monkeypatch.setattr(slurm, "job_states", states)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: "/usr/bin/" + name)
    seen = slurm.SlurmHandle(tmp_path).state()
    assert seen.scheduler.state == "running" and record_path.read_bytes() == before  # reported, not written
    done = slurm.SlurmHandle(tmp_path).state()
    assert done.status == "succeeded" and done.outputs == {"a.txt": "ab" * 32} and done.scheduler.state == "completed"
    assert RunRecord.load(record_path).outputs == {"a.txt": "ab" * 32}


def test_a_member_of_an_array_cancelled_before_slurm_split_it_takes_the_arrays_state(tmp_path, monkeypatch):
    """scancel of a whole pending array leaves one record, '33 CANCELLED', and no '33_0': the member is cancelled.

    Before the fix, `xrun wait SWEEP` after `xrun cancel SWEEP` of a pending sweep waited for ever (seen in CI:
    `scontrol show job 33_0` says 'Job 33_0 not found', which was not taken as 'forgotten' either).
    """
    record_path = tmp_path / "run.json"
    RunRecord(run_id="r", name="n", status="submitted", manifest="m", manifest_sha256="s", plan_digest="p",
              started_on="t", scheduler=SchedulerInfo(backend="slurm", state="pending", job_id="33",
                                                      array_index=0)).save(record_path)
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"33": slurm.JobState("33", "cancelled", "CANCELLED", None,
                                                                                 None)})
    monkeypatch.setattr(slurm.shutil, "which", lambda name: "/usr/bin/" + name)
    record = slurm.SlurmHandle(tmp_path).state()
    assert record.scheduler.state == "cancelled" and record.scheduler.final
    assert RunRecord.load(record_path).scheduler.state == "cancelled"


def test_scontrol_not_found_is_a_forgotten_job(monkeypatch):
    """'Job 33_0 not found' (exit 1) and 'Invalid job id specified' both mean the controller does not know it."""
    import subprocess

    for said in ("Job 33_0 not found", "slurm_load_jobs error: Invalid job id specified"):
        monkeypatch.setattr(slurm, "_tool", lambda argv, said=said: subprocess.CompletedProcess(argv, 1, "", said))
        assert slurm.job_detail("33_0") is None


def test_job_script_compiles_xrun_once_per_node(tmp_path):
    spec = slurm.ScriptSpec(job_name="xrun-probe", log=str(tmp_path / "log"), hardware=lookup("cpu-1"), timeout_s=60,
                            run_dirs=(tmp_path / "a", tmp_path / "b"), xrun=("/usr/bin/python3", "-m", "runner.cli"),
                            array=True)
    script = slurm.render_script(spec)
    assert 'export PYTHONPYCACHEPREFIX="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/xrun/pycache"' in script
    assert "unset PYTHONDONTWRITEBYTECODE" in script


def test_a_plan_given_the_hashed_code_tree_does_not_read_the_folder(tmp_path, monkeypatch):
    from runner import plan as plan_module
    from runner.manifest import load_manifest
    from experiments import probe_experiment

    manifest = load_manifest(probe_experiment(tmp_path / "exp", "127.0.0.1:5000/b@sha256:" + "ab" * 32))
    hashed = plan_module.resolve_plan(manifest)

    def no_reading(*args, **kwargs):
        raise AssertionError("the code folder was read again")

    monkeypatch.setattr(plan_module, "resolve_code", no_reading)
    again = plan_module.resolve_plan(manifest, code=hashed.code)
    assert again.digest == hashed.digest
    other = plan_module.CodeTree(tmp_path / "elsewhere", hashed.code.digest, hashed.code.files, None, None)
    with pytest.raises(AssertionError, match="read again"):  # a tree of another folder is not used
        plan_module.resolve_plan(manifest, code=other)


def test_the_nodes_code_tree_round_trips_and_only_from_a_private_folder(tmp_path, monkeypatch):
    import os

    from runner import node
    from runner.backends.interface import NodeJob
    from runner.build.distribute import ImageSource
    from runner.plan import CodeTree
    from runner.hashing import FileDigest
    from runner.rundir import RunDir

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    run = RunDir("r", tmp_path / "r")
    run.path.mkdir()
    (run.path / "plan.json").write_text('{"code": {"digest": "sha256:' + "ab" * 32 + '"}}')
    job = NodeJob(manifest=str(tmp_path / "experiment.yaml"), plan_digest="", image=ImageSource("sha256:x", "t:1"),
                  cache_dir=str(tmp_path))
    path = node._code_file(job, run)
    assert path is not None and path.parent == tmp_path / f"xrun-{os.getuid()}"
    tree = CodeTree(tmp_path, "sha256:" + "ab" * 32, (FileDigest("a.py", "cd" * 32, 3, 0o644),), "abc", False)
    node._remember_code(path, tree)
    assert node._known_code(path) == tree
    path.write_text("{not json")
    assert node._known_code(path) is None
    os.chmod(path.parent, 0o777)  # a folder others may write is not trusted with it
    assert node._code_file(job, run) is None
