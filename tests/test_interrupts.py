"""A killed or signalled runner, in every phase: no container outlives it, the run says how it ended.

These drive `xrun run` as a real process against the real engine and send it real signals.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.engine.labels import RUNNER_LABEL, runner_identity
from runner.engine.watchdog import KILLED, reap_orphans
from faultserver import Fault, FaultServer
from experiments import probe_experiment
from servers import PATIENCE_S, wait_for

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _start(manifest: Path, runs: Path, cache: Path, *, quiet: bool = True) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), XRUN_CACHE_DIR=str(cache))
    argv = [sys.executable, "-m", "runner.cli", "run", str(manifest), "--runs-dir", str(runs)]
    return subprocess.Popen(argv + (["--quiet"] if quiet else []), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)




def _record(runs: Path) -> dict:
    (run_dir,) = runs.iterdir()
    return json.loads((run_dir / "run.json").read_text())


def _containers_of(client, runs: Path) -> list:
    if not runs.is_dir() or not [p for p in runs.iterdir() if (p / "run.json").is_file()]:
        return []
    runner = _record(runs).get("runner")
    if not runner:
        return []
    return client.containers.list(all=True, filters={"label": f"{RUNNER_LABEL}={runner}"}, ignore_removed=True)


def _slow_data(server: FaultServer, root: Path, base_image: str) -> Path:
    """An experiment whose one data item streams for a minute from the fault server."""
    payload = os.urandom(4 << 20)
    server.add("/slow.bin", payload)
    server.fault("/slow.bin", Fault("slow", times=-1, delay=0.5, chunk=32 << 10))
    manifest = probe_experiment(root, base_image)
    spec = json.loads(manifest.read_text())
    spec["data"] = [{"name": "input", "uri": server.url("/slow.bin"), "path": "input.txt",
                     "sha256": hashlib.sha256(payload).hexdigest()}]
    manifest.write_text(json.dumps(spec))
    return manifest


def _fresh_build(root: Path, base_image: str) -> Path:
    """An experiment whose code tree is new to the engine, so `xrun run` has to build its image."""
    manifest = probe_experiment(root, base_image)
    (root / "nonce.txt").write_text(os.urandom(16).hex())
    return manifest


def _until_building(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:  # the build announces itself before it starts
        if "assembling" in line or "building" in line:
            return
    pytest.fail("xrun never started a build", pytrace=False)


def _assert_marked_killed(runs: Path, docker_client) -> None:
    wait_for(lambda: _record(runs)["status"] == "failed", "the run being marked failed")
    record = _record(runs)
    assert KILLED in record["error"], record
    wait_for(lambda: not _containers_of(docker_client, runs), "removal of the dead runner's containers")
    (run_dir,) = runs.iterdir()
    assert not (run_dir / "provenance.intoto.jsonl").exists()


def test_sigkill_during_training_removes_the_container_and_marks_the_run(tmp_path, base_image, cache_dir,
                                                                          docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image,
                                command=["sh", "-c", "sleep 300; echo late > /outputs/late.txt; sleep 300"])
    runs = tmp_path / "runs"
    proc = _start(manifest, runs, cache_dir)
    wait_for(lambda: _containers_of(docker_client, runs),
              "the training container's start")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=PATIENCE_S)
    _assert_marked_killed(runs, docker_client)
    (run_dir,) = runs.iterdir()
    # The container was gone (confirmed by the engine) before its delayed write: nothing lands in the
    # dead run's outputs, then or later.
    assert not (run_dir / "outputs" / "late.txt").exists()
    # The next run is unaffected.
    ok = _start(probe_experiment(tmp_path / "next", base_image), tmp_path / "runs2", cache_dir)
    _, err = ok.communicate(timeout=PATIENCE_S)
    assert ok.returncode == 0, err


def test_sigkill_during_fetch_leaves_no_entry_and_marks_the_run(tmp_path, base_image, cache_dir, docker_client):
    with FaultServer() as server:
        manifest = _slow_data(server, tmp_path / "exp", base_image)
        runs = tmp_path / "runs"
        proc = _start(manifest, runs, cache_dir)
        wait_for(lambda: server.count("/slow.bin") >= 1, "the data download's start")
        time.sleep(1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=PATIENCE_S)
    _assert_marked_killed(runs, docker_client)
    # A partial download may stay (it resumes), but never an entry.
    assert not [p for p in (cache_dir / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".partial")]


def test_sigkill_during_build_leaves_no_container(tmp_path, base_image, cache_dir, docker_client):
    manifest = _fresh_build(tmp_path / "exp", base_image)
    runs = tmp_path / "runs"
    proc = _start(manifest, runs, cache_dir, quiet=False)
    _until_building(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=PATIENCE_S)
    # Every container the build made (its probes too) carries the runner's label; the engine is shared
    # with other sessions, so the engine's whole container list is no witness.
    _assert_marked_killed(runs, docker_client)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_fetch_is_exit_130_and_interrupted(tmp_path, base_image, cache_dir, docker_client, signum):
    with FaultServer() as server:
        manifest = _slow_data(server, tmp_path / "exp", base_image)
        runs = tmp_path / "runs"
        proc = _start(manifest, runs, cache_dir)
        wait_for(lambda: server.count("/slow.bin") >= 1, "the data download's start")
        time.sleep(0.5)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("xrun: error:")]) == 1, err
    assert "interrupted" in err
    assert _record(runs)["status"] == "interrupted"
    (run_dir,) = runs.iterdir()
    assert not (run_dir / "provenance.intoto.jsonl").exists()


def test_sigterm_during_build_is_exit_130_with_no_dangling_image(tmp_path, base_image, cache_dir, docker_client):
    dangling = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    manifest = _fresh_build(tmp_path / "exp", base_image)
    runs = tmp_path / "runs"
    proc = _start(manifest, runs, cache_dir, quiet=False)
    _until_building(proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _record(runs)["status"] == "interrupted"
    assert not _containers_of(docker_client, runs)
    assert {i.id for i in docker_client.images.list(filters={"dangling": True})} <= dangling


def test_two_ctrl_c_50ms_apart_end_cleanly(tmp_path, base_image, cache_dir, docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "120"])
    runs = tmp_path / "runs"
    proc = _start(manifest, runs, cache_dir)
    wait_for(lambda: _containers_of(docker_client, runs),
              "the training container's start")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the second Ctrl-C 50 ms after the first: the delay is the test's subject
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    assert _record(runs)["status"] == "interrupted"
    if "handed to the watchdog" in err:  # the engine did not confirm within xrun's patience: it said so
        wait_for(lambda: not _containers_of(docker_client, runs), "the watchdog's removal of the container")
    # xrun exits 130 only once the engine confirmed the removal it started (or it handed it on, above).
    left = _containers_of(docker_client, runs)
    assert not left, (err, [(c.id, c.status, c.attrs.get("Created"), c.attrs.get("State")) for c in left])


def test_out_of_memory_is_named(tmp_path, base_image, cache_dir, monkeypatch):
    from runner.errors import TrainingFailed
    from runner.pipeline import RunOptions, run_experiment

    monkeypatch.setenv("XRUN_CACHE_DIR", str(cache_dir))
    hog = ["python3", "-c", "b = b'x' * (3 * 2**30); print(len(b))"]
    manifest = probe_experiment(tmp_path / "exp", base_image, command=hog, cls="cpu-1")
    with pytest.raises(TrainingFailed, match="ran out of memory") as info:
        run_experiment(manifest, RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    assert "2 GiB" in info.value.message


def test_sweep_marks_runs_of_a_dead_runner(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    identity = runner_identity(dead.pid).rsplit(":", 1)[0] + ":1"  # a pid that ran once and is gone
    alive = runner_identity()
    runs = tmp_path / "runs"
    for name, runner in (("a-dead", identity), ("b-alive", alive)):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(json.dumps({"runId": name, "status": "running", "runner": runner}))
    assert reap_orphans(runs) == ["a-dead"]
    assert json.loads((runs / "a-dead" / "run.json").read_text())["status"] == "failed"
    assert json.loads((runs / "b-alive" / "run.json").read_text())["status"] == "running"
    # `xrun runs ls` runs the same sweep.
    (runs / "c-dead").mkdir()
    (runs / "c-dead" / "run.json").write_text(json.dumps({"runId": "c-dead", "status": "running", "runner": identity}))
    from runner.cli import main

    assert main(["runs", "ls", "--runs-dir", str(runs), "--json"]) == 0
    assert json.loads((runs / "c-dead" / "run.json").read_text())["status"] == "failed"


def test_removal_waits_for_the_engine_to_confirm():
    """A busy engine fails a removal half-way (409, a driver's 500, a timeout): it is asked again until NotFound."""
    import docker.errors
    import requests

    from runner.engine.client import remove_confirmed

    class BusyApi:
        def __init__(self) -> None:
            self.answers = [docker.errors.APIError("409 removal in progress"), requests.exceptions.ReadTimeout(),
                            docker.errors.APIError("500 driver fuse-overlayfs failed to remove root filesystem")]
            self.removes = 0

        def remove_container(self, container_id: str, force: bool) -> None:
            self.removes += 1
            if self.answers:
                raise self.answers.pop(0)

        def inspect_container(self, container_id: str) -> dict:
            if self.answers:
                return {"Id": container_id}
            raise docker.errors.NotFound("gone")

    client = type("Client", (), {"api": BusyApi()})()
    slept: list[float] = []
    assert remove_confirmed(client, "c1", sleep=slept.append) is True
    assert client.api.removes == 3 and len(slept) == 2  # confirmed by the inspect after the third try
    # Never confirmed within the patience: False (the caller hands the removal on and says so).
    stuck = type("Client", (), {"api": type("Api", (), {"remove_container": lambda self, i, force: None,
                                                       "inspect_container": lambda self, i: {}})()})()
    assert remove_confirmed(stuck, "c2", patience_s=0, sleep=slept.append) is False


def test_watchdog_finishes_a_removal_handed_over(tmp_path, base_image_id, docker_client):
    """xrun hands the removals the engine did not confirm to the watchdog, which finishes them after xrun ends."""
    from runner.engine.watchdog import Watchdog

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"runId": "run", "status": "interrupted", "runner": "x:1:1"}))
    label = f"org.xrun.run-id=handover-{os.getpid()}-{time.monotonic_ns()}"
    kept = [docker_client.containers.create(base_image_id, command=["sleep", "600"], labels=dict([label.split("=")]))
            for _ in range(2)]
    watchdog = Watchdog.start(run_dir)
    watchdog.hand_over((kept[0].id, label))  # one by id, the other by the run's label
    watchdog.close()
    live = lambda: docker_client.containers.list(all=True, filters={"label": label}, ignore_removed=True)  # noqa: E731
    wait_for(lambda: not live(), "the watchdog's removal of the handed-over containers")


def test_a_signal_during_a_deferred_engine_call_is_raised_when_it_returns():
    """A create interrupted half-way would leave a container whose id nobody got: the signal waits for it."""
    from runner.interrupts import deferred, interrupts_raise

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_raise():
                with deferred():
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.01)  # the handler runs here, between bytecodes: it must not raise
                    done.append("create returned")
                done.append("not reached")
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert done == ["create returned"]


@pytest.mark.parametrize("where", ["runner.rundir.write_json", "runner.pipeline.new_record"])
def test_a_signal_before_run_json_exists_leaves_no_run_folder(tmp_path, base_image, cache_dir, monkeypatch, where):
    """SIGTERM 1.6 s after start landed between the run folder and its run.json: "nothing was left half-written"."""
    from runner.pipeline import RunOptions, run_experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what the SIGTERM handler raises, at the one moment the test cannot aim at

    monkeypatch.setenv("XRUN_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(where, interrupted)
    manifest = probe_experiment(tmp_path / "exp", base_image)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(manifest, RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    assert list((tmp_path / "runs").iterdir()) == []


def test_sigterm_right_as_the_run_folder_appears(tmp_path, base_image, cache_dir):
    """Whenever the signal lands, every run folder left has its run.json."""
    manifest = probe_experiment(tmp_path / "exp", base_image)
    runs = tmp_path / "runs"
    proc = _start(manifest, runs, cache_dir)
    wait_for(lambda: proc.poll() is not None or (runs.is_dir() and any(runs.iterdir())), "the run folder")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert "Traceback" not in err, err
    assert all((run_dir / "run.json").is_file() for run_dir in runs.iterdir()), list(runs.rglob("*"))
