"""The run stage against the real engine: isolation, seeds, timeouts, Ctrl-C, outputs, run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import probe_experiment
from runner.errors import EnvironmentProblem, TrainingFailed
from runner.engine.execute import managed_containers
from runner.pipeline import RunOptions, run_experiment
from servers import PATIENCE_S, wait_for

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent



@pytest.fixture()
def cache_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _options(tmp_path: Path, **kw) -> RunOptions:
    return RunOptions(runs_dir=tmp_path / "runs", quiet=True, **kw)


def test_isolation_every_escape_fails(tmp_path, base_image, cache_env, docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    summary = run_experiment(manifest, _options(tmp_path))
    report = json.loads((summary.run_dir / "outputs" / "probe.json").read_text())
    assert report["tcp"].startswith("failed"), report
    assert report["write_data"].startswith("failed"), report
    assert report["write_root"].startswith("failed"), report
    assert int(report["cap_eff"], 16) == 0, report
    assert report["uid"] != 0
    assert report["no_new_privs"] == "1"
    assert report["seed_env"] == "1" and report["hashseed"] == "1"
    assert report["data"] == "hello\n" and report["cwd"] == "/workspace"
    # Outputs: declared files and the files of a declared folder, hashed by the runner.
    assert set(summary.outputs) == {"probe.json", "more/b.txt", "metrics.json"}
    assert summary.metrics["metrics.json"]["nested.x"] == 1
    # The run directory.
    record = json.loads((summary.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["exitCode"] == 0
    assert (summary.run_dir / "manifest.yaml").read_bytes() == manifest.read_bytes()
    assert json.loads((summary.run_dir / "plan.json").read_text())["name"] == "probe"
    assert "probe done" in (summary.run_dir / "logs" / "run.log").read_text()
    # Outputs belong to the invoking user.
    assert (summary.run_dir / "outputs" / "probe.json").stat().st_uid == os.getuid()
    assert not list(managed_containers(docker_client, summary.run_id))


def test_same_seed_same_outputs_different_seed_differs(tmp_path, base_image, cache_env):
    a = run_experiment(probe_experiment(tmp_path / "a", base_image, seed=7), _options(tmp_path))
    b = run_experiment(probe_experiment(tmp_path / "b", base_image, seed=7), _options(tmp_path))
    c = run_experiment(probe_experiment(tmp_path / "c", base_image, seed=8), _options(tmp_path))
    assert a.outputs == b.outputs
    assert a.outputs["probe.json"] != c.outputs["probe.json"]


def test_timeout_stops_and_removes_the_container(tmp_path, base_image, cache_env, docker_client):
    # The container would sleep for 10 minutes: only the timeout ends it early. (No wall-clock bound on the
    # whole run: a busy engine may take long to build, start and remove, which is not the subject here.)
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "600"], timeout="3s")
    with pytest.raises(TrainingFailed, match="timed out after 3s") as info:
        run_experiment(manifest, _options(tmp_path))
    assert info.value.exit_code == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not list(managed_containers(docker_client, run_dir.name))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["containerStatus"] == "timed-out"
    assert not (run_dir / "provenance.intoto.jsonl").exists()


def test_failing_command_is_exit_1_with_log_tail(tmp_path, base_image, cache_env):
    cmd = ["python3", "-c", "import sys; print('about to fail'); sys.exit(3)"]
    manifest = probe_experiment(tmp_path / "exp", base_image, command=cmd)
    with pytest.raises(TrainingFailed, match="exited with code 3") as info:
        run_experiment(manifest, _options(tmp_path))
    assert "about to fail" in "\n".join(info.value.lines)


def test_missing_output_is_named(tmp_path, base_image, cache_env):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["true"], outputs=[{"path": "model.pkl"}])
    with pytest.raises(TrainingFailed, match="model.pkl"):
        run_experiment(manifest, _options(tmp_path))


def test_output_symlink_outside_is_refused(tmp_path, base_image, cache_env):
    cmd = ["python3", "-c", "import os; os.symlink('/etc/passwd', '/outputs/leak')"]
    manifest = probe_experiment(tmp_path / "exp", base_image, command=cmd, outputs=[{"path": "leak"}])
    with pytest.raises(TrainingFailed, match="outside /outputs"):
        run_experiment(manifest, _options(tmp_path))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not os.path.lexists(run_dir / "outputs" / "leak")  # the refused link does not stay


def test_hardware_class_bigger_than_host_is_refused(tmp_path):
    if (os.cpu_count() or 1) >= 64:
        pytest.skip("this host has 64 CPUs")
    manifest = probe_experiment(tmp_path / "exp", "127.0.0.1:5000/x@sha256:" + "0" * 64, cls="gpu-8x-h100-80gb")
    with pytest.raises(EnvironmentProblem, match="64 CPUs needed") as info:
        run_experiment(manifest, _options(tmp_path))
    assert info.value.exit_code == 4


def test_ctrl_c_removes_container_and_writes_no_attestation(tmp_path, base_image, cache_env, docker_client):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "120"])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(manifest), "--quiet",
                             "--runs-dir", str(tmp_path / "runs")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "runs"

    def started() -> str:
        run_id = next((p.name for p in runs.glob("*") if p.is_dir()), "") if runs.is_dir() else ""
        return run_id if run_id and list(managed_containers(docker_client, run_id)) else ""

    wait_for(started, "the training container's start")
    run_id = started()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not list(managed_containers(docker_client, run_id))
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "provenance.intoto.jsonl").exists()


def _local_wheel_experiment(root: Path, base_image: str, wheel_line: str) -> Path:
    """An experiment whose lock installs a local wheel (tests/wheelmaker) and whose command imports it."""
    manifest = probe_experiment(root, base_image, command=[
        "python3", "-c", "import localpkg; open('/outputs/probe.json', 'w').write(localpkg.VALUE)"],
        outputs=[{"path": "probe.json"}])
    (root / "requirements.txt").write_text(wheel_line)
    data = json.loads(manifest.read_text())
    data["image"]["lockfile"] = "requirements.txt"
    data["code"]["exclude"] += ["requirements.txt", "wheels"]
    manifest.write_text(json.dumps(data, indent=2))
    return manifest


def test_local_wheel_in_a_requirements_lock_runs_and_attests(tmp_path, base_image, cache_env):
    from runner.attest import generate_keypair
    from runner.attest.recorded import read_statement
    from wheelmaker import make_wheel

    root = tmp_path / "exp"
    wheel, sha = make_wheel(root / "wheels", "localpkg", "1.0", "VALUE = '\"from a local wheel\"'\n")
    manifest = _local_wheel_experiment(root, base_image, f"./wheels/{wheel.name} --hash=sha256:{sha}\n")
    key, pub = generate_keypair("ed25519", tmp_path / "keys")
    summary = run_experiment(manifest, _options(tmp_path, key=key))
    assert (summary.run_dir / "outputs" / "probe.json").read_text() == '"from a local wheel"'
    deps = {d["name"]: d for d in read_statement(summary.attestation)["predicate"]["buildDefinition"]
            ["resolvedDependencies"]}
    dep = deps["wheel/localpkg"]
    # A purl and the digest: no host path, no relative file: URI.
    assert dep["uri"] == "pkg:pypi/localpkg@1.0" and dep["digest"] == {"sha256": sha}
    assert "downloadLocation" not in dep and dep["annotations"]["filename"] == wheel.name
    assert str(tmp_path) not in json.dumps(dep)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    verify = subprocess.run([sys.executable, "-m", "runner.cli", "verify", str(summary.attestation),
                             "--key", str(pub)], capture_output=True, text=True, env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("where, words", [
    ("missing", ["requirements.txt:1", "no such file"]),
    ("outside", ["requirements.txt:1", "outside", "lockfile's folder"]),
])
def test_unusable_local_wheel_is_refused_before_anything_runs(tmp_path, base_image, cache_env, where, words):
    from runner.errors import ManifestError
    from wheelmaker import make_wheel

    root = tmp_path / "exp"
    folder = root / "wheels" if where == "missing" else tmp_path / "elsewhere"
    wheel, sha = make_wheel(folder, "localpkg", "1.0", "VALUE = '1'\n")
    line = f"./wheels/{wheel.name} --hash=sha256:{sha}\n" if where == "missing" else f"{wheel} --hash=sha256:{sha}\n"
    if where == "missing":
        wheel.unlink()
    manifest = _local_wheel_experiment(root, base_image, line)
    with pytest.raises(ManifestError) as info:
        run_experiment(manifest, _options(tmp_path))
    assert info.value.exit_code == 2
    assert all(w in info.value.message for w in words), info.value.message
    assert not (tmp_path / "runs").exists()


ODD_OUTPUTS = r'''
import os, socket
os.makedirs("/outputs/more/deep", exist_ok=True)
open("/outputs/probe.json", "w").write("{}")
open("/outputs/more/b.txt", "w").write("b")
open("/outputs/scratch.bin", "w").write("undeclared")
os.mkfifo("/outputs/more/pipe")
s = socket.socket(socket.AF_UNIX); s.bind("/outputs/more/deep/sock")
os.symlink("/etc/passwd", "/outputs/more/leak")
os.symlink("b.txt", "/outputs/more/inside")
'''


def test_odd_files_in_outputs_are_named_and_outputs_holds_only_what_was_hashed(tmp_path, base_image, cache_env,
                                                                                capsys):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["python3", "-c", ODD_OUTPUTS],
                                outputs=[{"path": "probe.json"}, {"path": "more"}])
    summary = run_experiment(manifest, _options(tmp_path))
    err = capsys.readouterr().err
    for name, kind in (("more/pipe", "FIFO"), ("more/deep/sock", "socket"), ("more/leak", "outside /outputs")):
        (line,) = [x for x in err.splitlines() if f"output {name} " in x]
        assert kind in line and "removed from outputs/" in line, line
    assert "scratch.bin" in err and "undeclared" in err
    outputs = summary.run_dir / "outputs"
    on_disk = {p.relative_to(outputs).as_posix() for p in outputs.rglob("*") if not p.is_dir()}
    assert on_disk == set(summary.outputs) == {"probe.json", "more/b.txt", "more/inside"}
    assert (summary.run_dir / "undeclared" / "scratch.bin").read_text() == "undeclared"


def test_output_that_is_a_fifo_is_an_error_and_removed(tmp_path, base_image, cache_env):
    manifest = probe_experiment(tmp_path / "exp", base_image, command=["python3", "-c", "import os; os.mkfifo('/outputs/p')"],
                                outputs=[{"path": "p"}])
    with pytest.raises(TrainingFailed, match="'p' is a FIFO"):
        run_experiment(manifest, _options(tmp_path))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not os.path.lexists(run_dir / "outputs" / "p")


def test_the_engine_is_asked_for_the_allocated_gpu_devices(tmp_path, base_image, docker_client):
    # No GPU here: the container is created (not started) and the engine's own record of the request read back.
    from runner import hardware
    from runner.engine.execute import container_spec, create_arguments

    gpu = hardware.Gpu("NVIDIA A100-SXM4-80GB", "GPU-5bbb", "550.54", 81920)
    host = hardware.Host(cpu_model="x", cpu_count=2, memory_bytes=8 * 2**30, gpus=(gpu, gpu, gpu))
    allocation = hardware.allocated_gpus({"SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "0"})
    spec = container_spec(image_id=base_image, command=("true",), env={}, workdir="/", hardware=hardware.lookup(
        "gpu-1x-any"), host=host, data_mounts=[], outputs_dir=tmp_path, timeout_s=None,
        labels={"org.xrun.test": "gpu"}, gpu_allocation=allocation)
    container = docker_client.containers.create(**create_arguments(spec))
    try:
        (request,) = docker_client.api.inspect_container(container.id)["HostConfig"]["DeviceRequests"]
    finally:
        container.remove(force=True)
    assert request["DeviceIDs"] == ["2"] and not request.get("Count") and request["Capabilities"] == [["gpu"]]


def test_a_container_killed_from_outside_says_so(tmp_path, base_image, cache_env, docker_client):
    import threading

    from runner.engine.labels import RUNNER_LABEL, runner_identity

    manifest = probe_experiment(tmp_path / "exp", base_image, command=["sleep", "300"])
    killed: list[str] = []

    def kill_when_running() -> None:
        for _ in range(1200):  # a generous bound: the run starts its container once the image is ready
            for container in managed_containers(docker_client):
                if container.status == "running" and container.labels.get(RUNNER_LABEL) == runner_identity():
                    container.kill()
                    killed.append(container.id)
                    return
            time.sleep(0.25)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    with pytest.raises(TrainingFailed) as info:
        run_experiment(manifest, _options(tmp_path))
    killer.join(timeout=5)
    assert killed, "the container never ran"
    message = info.value.message
    assert message.startswith("the training container was killed (SIGKILL, exit code 137)"), message
    assert message.endswith("it wrote nothing to its log") and not info.value.lines
