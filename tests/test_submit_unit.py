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


class _FakeImages:
    """client.images of an engine that has the image once the archive was loaded."""

    def __init__(self, fail=None):
        self.loaded, self.fail = 0, fail

    def get(self, tag):
        import docker.errors

        if not self.loaded:
            raise docker.errors.ImageNotFound(tag)
        return tag

    def load(self, f):
        if self.fail is not None:
            raise self.fail
        self.loaded += 1


def test_the_image_load_lock_is_in_the_users_own_folder(tmp_path, monkeypatch):
    """Before the fix the lock was /tmp/xrun-load-<id>.lock for every user: a second user's open() failed."""
    import os
    import types

    from runner import node
    from runner.build.distribute import ImageSource

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"tar")
    source = ImageSource("sha256:" + "ab" * 32, "t:1", archive=str(archive))
    client = types.SimpleNamespace(images=_FakeImages())
    assert node._loaded_once(client, source) == "t:1" and client.images.loaded == 1
    assert [p.name for p in (tmp_path / f"xrun-{os.getuid()}").iterdir()] == ["load-" + "ab" * 16 + ".lock"]
    os.chmod(tmp_path / f"xrun-{os.getuid()}", 0o777)  # not safely ours: loaded without a lock
    client = types.SimpleNamespace(images=_FakeImages())
    assert node._open_load_lock(source.id) is None
    assert node._loaded_once(client, source) == "t:1" and client.images.loaded == 1


def test_an_archive_that_cannot_be_loaded_is_an_environment_problem(tmp_path):
    import types

    import docker.errors

    from runner import node
    from runner.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem, match="cannot read the image archive"):
        node._load(types.SimpleNamespace(images=_FakeImages()), tmp_path)  # a folder: IsADirectoryError
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"tar")
    client = types.SimpleNamespace(images=_FakeImages(fail=docker.errors.APIError("no space left on device")))
    with pytest.raises(EnvironmentProblem, match=f"{archive}: the engine refused"):
        node._load(client, archive)


def test_submit_wait_exits_as_xrun_wait_does(tmp_path):
    from runner.cli.commands.cluster import _exit_code
    from runner.submit import SubmittedRun

    signed = SubmittedRun("a", tmp_path, 1, "7_0", "completed", attestation=tmp_path / "a.jsonl")
    failed = SubmittedRun("b", tmp_path, 2, "7_1", "failed", error="x")
    refused = SubmittedRun("c", tmp_path, 3, "7_2", "completed", error="differ", refused=True)
    assert _exit_code([signed]) == 0 and _exit_code([signed, failed]) == 1
    assert _exit_code([signed, failed, refused]) == 3


def test_an_unreadable_end_time_is_not_taken_for_a_ghost_job(tmp_path):
    """Before the fix a finishedOn not in the one strptime format (e.g. with an offset) was a traceback."""
    record = RunRecord(run_id="r", name="n", status="succeeded", manifest="m", manifest_sha256="s", plan_digest="p",
                       started_on="t", finished_on="yesterday",
                       scheduler=SchedulerInfo(backend="slurm", state="running", job_id="7"))
    handle = slurm.SlurmHandle(tmp_path)
    assert not handle.finished(record)
    record.finished_on = "2020-01-01T10:00:00+02:00"
    assert handle.finished(record)


def test_a_shared_folder_that_cannot_take_the_archive_is_an_environment_problem(tmp_path, monkeypatch):
    import errno
    import os
    from types import SimpleNamespace

    from runner.build.distribute import save_to_shared
    from runner.errors import EnvironmentProblem

    image = SimpleNamespace(id="sha256:" + "ab" * 32, tag="xrun/x:1")

    def client(chunks):
        return SimpleNamespace(images=SimpleNamespace(get=lambda _id: SimpleNamespace(save=lambda named: chunks)))

    (tmp_path / "file").write_text("")
    with pytest.raises(EnvironmentProblem, match="cannot save the image archive"):  # mkdir under a file
        save_to_shared(image, client([b"x"]), tmp_path / "file" / "images")
    folder = tmp_path / "images"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(EnvironmentProblem, match="No space left"):
        save_to_shared(image, client([b"x"]), folder)
    assert list(folder.iterdir()) == []  # the partial file went

    def broken_stream():  # docker's APIError is an OSError too: it is not taken for the disk's
        yield b"x"
        raise ConnectionResetError("engine gone")

    with pytest.raises(ConnectionResetError):
        save_to_shared(image, client(broken_stream()), folder)
    assert list(folder.iterdir()) == []


def test_submit_wait_on_the_local_backend_does_not_collect_again(tmp_path, monkeypatch):
    """Local runs come back finished and signed: --wait loads no key a second time and re-collects nothing."""
    from runner import submit as submit_module
    from runner.backends.local import LocalBackend
    from runner.context import RunOptions
    from runner.submit import SubmitOptions, SubmitResult, SubmittedRun

    done = SubmitResult(backend="local", sweep=None, job_id=None, image_id="sha256:x", image_reference=None,
                        script=None, runs=(SubmittedRun("r", tmp_path, None, None, "succeeded",
                                                        attestation=tmp_path / "provenance.intoto.jsonl"),))
    monkeypatch.setattr(LocalBackend, "submit", lambda self, prepared: done)

    def no_waiting(*args, **kwargs):
        raise AssertionError("the local runs were collected again")

    monkeypatch.setattr(submit_module, "wait_runs", no_waiting)
    options = SubmitOptions(run=RunOptions(runs_dir=tmp_path), backend="local", wait=True)
    assert submit_module.submit(tmp_path / "experiment.yaml", options) is done
