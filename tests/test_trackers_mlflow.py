"""The MLflow tracker against a real `mlflow server` (and the real engine): what is logged, read back through
the REST API; a server that goes down mid-run; `xrun runs sync` sending a run exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import INPUT, INPUT_TEXT, write_experiment
from mlflowserver import MlflowServer, metrics, params, tags
from runner.attest import generate_keypair
from runner.cli import main
from runner.errors import ManifestError, TrainingFailed
from runner.manifest import load_manifest
from runner.outputs import read_metric_file
from runner.pipeline import RunOptions, run_experiment
from runner.plan import resolve_plan
from runner.runs.record import RunRecord
from runner.trackers.track import Destination, resolve_destination
from servers import PATIENCE_S

REPO = Path(__file__).resolve().parent.parent

TRAIN = r'''
import json, os
seed = int(os.environ["XRUN_SEED"])
os.makedirs("/outputs", exist_ok=True)
open("/outputs/model.txt", "w").write(f"model {seed}\n")
json.dump({"acc": 0.5 + seed / 100, "loss": [1.0, 0.5, 0.25 + seed / 1000],
           "history": [{"step": 10, "lr": 0.1}, {"step": 20, "lr": 0.05}]}, open("/outputs/metrics.json", "w"))
print("trained", seed)
'''


def tracked_experiment(root: Path, base_image: str, *, seed: int = 1, name: str = "tracked", sleep: int = 0,
                       tracking: dict | None = None) -> Path:
    """A tiny experiment whose metrics file holds final values and per-step lists."""
    command = ["python3", "train.py"] if not sleep else ["sh", "-c", f"sleep {sleep} && python3 train.py"]
    return write_experiment(root, base_image, name=name, files={"train.py": TRAIN, "input.txt": INPUT_TEXT},
                            exclude=["input.txt"], data=[INPUT], seed=seed, command=command, timeout="5m",
                            outputs=[{"path": "model.txt"}, {"path": "metrics.json", "metrics": True}],
                            extra={"tracking": tracking} if tracking else None)


@pytest.fixture()
def cache_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --- unit: metrics per step, the manifest block, where runs go ----------------------------------------


def test_metrics_lists_become_steps_and_their_last_value_the_metric(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"acc": 0.9, "loss": [1.0, 0.5, 0.2], "nested": {"f1": [0.1, 0.3]},
                                "history": [{"step": 20, "lr": 0.05}, {"step": 10, "lr": 0.1, "mom": 0.9}]}))
    read = read_metric_file(path, "m.json")
    assert read.values == {"acc": 0.9, "loss": 0.2, "nested.f1": 0.3, "history.lr": 0.05, "history.mom": 0.9}
    assert read.steps == {"loss": [[0, 1.0], [1, 0.5], [2, 0.2]], "nested.f1": [[0, 0.1], [1, 0.3]],
                          "history.lr": [[10, 0.1], [20, 0.05]], "history.mom": [[10, 0.9]]}


@pytest.mark.parametrize("bad", [{"loss": [1, "x"]}, {"loss": [[1, 2]]}, {"h": [{"step": "one", "x": 1}]}])
def test_metrics_lists_of_non_numbers_are_refused(tmp_path, bad):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(TrainingFailed, match="m.json"):
        read_metric_file(path, "m.json")


def test_tracking_block_changes_neither_the_plan_nor_the_build_digest(tmp_path):
    plain = load_manifest(tracked_experiment(tmp_path / "a", "127.0.0.1:5000/x@sha256:" + "0" * 64))
    tracked = load_manifest(tracked_experiment(tmp_path / "a", "127.0.0.1:5000/x@sha256:" + "0" * 64,
                                             tracking={"mlflow": {"experiment": "exp", "uri": "http://h:5000"}}))
    assert tracked.mlflow is not None and tracked.mlflow.experiment == "exp"
    assert plain.sha256 != tracked.sha256  # the manifest's own digest may change
    a, b = resolve_plan(plain), resolve_plan(tracked)
    assert a.build_digest == b.build_digest and a.digest == b.digest


@pytest.mark.parametrize("block, words", [
    ({"mlflow": {"uri": "http://h"}}, "experiment"),
    ({"mlflow": {"experiment": "e", "uri": "http://user:secret@h:5000"}}, "without credentials"),
    ({"wandb": {}}, "unknown key 'wandb'"),
])
def test_bad_tracking_block_is_named_with_its_fix(tmp_path, block, words):
    path = tracked_experiment(tmp_path, "127.0.0.1:5000/x@sha256:" + "0" * 64, tracking=block)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    text = info.value.message + " ".join(info.value.lines)
    assert "tracking" in text and words in text


def test_destination_precedence():
    from runner.manifest import TrackingSpec

    spec = TrackingSpec(experiment="e", uri="http://manifest")
    assert resolve_destination(None, None, "n", {}) is None
    assert resolve_destination(None, spec, "n", {}) == Destination("http://manifest", "e")
    assert resolve_destination(None, spec, "n", {"MLFLOW_TRACKING_URI": "http://env"}) == Destination("http://env", "e")
    assert resolve_destination("http://flag", None, "n", {"MLFLOW_TRACKING_URI": "http://env"}) == \
        Destination("http://flag", "n")


def test_sync_without_a_server_to_send_to_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "runs" / "20250101T000000Z-aaaaaa"
    run.mkdir(parents=True)
    RunRecord(run_id=run.name, name="x", status="succeeded", manifest="/m", manifest_sha256="a", plan_digest="b",
              started_on="2025-01-01T00:00:00Z").save(run / "run.json")
    assert main(["runs", "sync", run.name, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mlflow URI" in err[0] and "MLFLOW_TRACKING_URI" in err[0]


def _submitted_run(tmp_path: Path, tracking: dict) -> Path:
    """A cluster run as `xrun collect` leaves it just before logging: finished, signed, tracking pending."""
    run = tmp_path / "runs" / "20250101T000000Z-cccccc"
    run.mkdir(parents=True)
    RunRecord(run_id=run.name, name="x", status="succeeded", manifest="/m", manifest_sha256="a", plan_digest="b",
              started_on="2025-01-01T00:00:00Z", tracking=tracking).save(run / "run.json")
    return run


def test_a_submitted_runs_record_never_holds_the_trackers_password(tmp_path, monkeypatch):
    from runner.progress import RecordingProgress
    from runner.trackers import track

    secret_uri = "http://alice:s3cret@mlflow.example:5000"
    tracking = track.submitted_tracking(secret_uri, None, "x", RecordingProgress())
    assert "s3cret" not in json.dumps(tracking) and "mlflow.example" in json.dumps(tracking)
    run = _submitted_run(tmp_path, tracking)
    sent: list[str] = []

    class Fake:
        def log_run(self, tracked):
            return "mlflow-run-1"

    def fake_tracker(destination):
        sent.append(destination.uri)
        return Fake()

    monkeypatch.setattr(track, "make_tracker", fake_tracker)
    # collect takes the whole URL from the environment, never from the redacted record
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    progress = RecordingProgress()
    state = track.track_collected(run, progress, verified=True)
    assert state is not None and state.state == "pending" and sent == []
    assert progress.messages and "MLFLOW_TRACKING_URI" in progress.messages[0][1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    state = track.track_collected(run, RecordingProgress(), verified=True)
    assert state is not None and state.state == "logged" and sent == [secret_uri]
    saved = (run / "run.json").read_text()
    assert "s3cret" not in saved and "mlflow-run-1" in saved


def test_a_sweep_parent_the_search_does_not_list_yet_is_the_one_just_created():
    from types import SimpleNamespace

    from runner.trackers.mlflow import MlflowTracker

    created = SimpleNamespace(info=SimpleNamespace(run_id="p1"))
    client = SimpleNamespace(search_runs=lambda *a, **k: [], create_run=lambda *a, **k: created,
                             set_terminated=lambda *a, **k: None,
                             delete_run=lambda *a: pytest.fail("the only parent was deleted"))
    assert MlflowTracker._sweep_parent(client, "0", "sweep-it's", "x") == "p1"


# --- the real server ------------------------------------------------------------------------------


@pytest.mark.docker
def test_run_and_reproduce_are_logged_with_params_steps_tags_and_artifacts(tmp_path, base_image, cache_env,
                                                                          mlflow_server):
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "keys")
    manifest = tracked_experiment(tmp_path / "exp", base_image, seed=3, tracking={"mlflow": {"experiment": "trk-e2e"}})
    options = RunOptions(runs_dir=tmp_path / "runs", quiet=True, key=key, mlflow=mlflow_server.uri)
    summary = run_experiment(manifest, options)
    state = summary.tracking["mlflow"]
    assert state["state"] == "logged" and state["experiment"] == "trk-e2e"
    record = RunRecord.load(summary.run_dir / "run.json")
    assert record is not None and record.tracking["mlflow"]["externalId"] == state["externalId"]
    assert record.metric_steps["metrics.json"]["loss"] == [[0, 1.0], [1, 0.5], [2, 0.253]]

    [run] = mlflow_server.runs_tagged(summary.run_id)
    assert run["info"]["run_id"] == state["externalId"] and run["info"]["status"] == "FINISHED"
    p = params(run)
    assert p["seed"] == "3" and p["hardwareClass"] == "cpu-1" and p["imageId"] == summary.image_id
    assert p["manifestDigest"] == f"sha256:{record.manifest_sha256}"
    assert p["planDigest"] == f"sha256:{summary.plan_digest}"
    assert p["data.input"] == "sha256:" + hashlib.sha256(b"hello\n").hexdigest()
    t = tags(run)
    assert t["xrun.runId"] == summary.run_id and t["xrun.status"] == "succeeded"
    assert t["xrun.signed"] == "true" and t["xrun.verified"] == "true" and "xrun.reproducedFrom" not in t
    assert metrics(run)["acc"] == pytest.approx(0.53)
    assert mlflow_server.history(state["externalId"], "loss") == [(0, 1.0), (1, 0.5), (2, 0.253)]
    assert mlflow_server.history(state["externalId"], "history.lr") == [(10, 0.1), (20, 0.05)]
    assert mlflow_server.artifacts(state["externalId"], "xrun") == \
        ["xrun/manifest.yaml", "xrun/provenance.intoto.jsonl", "xrun/run.json"]
    assert mlflow_server.artifacts(state["externalId"], "outputs") == ["outputs/metrics.json", "outputs/model.txt"]

    # xrun reproduce is a run too: logged with the attestation it reproduced
    attestation = summary.run_dir / "provenance.intoto.jsonl"
    assert main(["reproduce", str(attestation), "--key", str(pub), "--signing-key", str(key), "--quiet",
                 "--runs-dir", str(tmp_path / "runs"), "--mlflow", mlflow_server.uri, "--json"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    again = next(r for r in runs if r != summary.run_id)
    [rerun] = mlflow_server.runs_tagged(again)
    t = tags(rerun)
    assert t["xrun.reproducedFrom"] == "sha256:" + hashlib.sha256(attestation.read_bytes()).hexdigest()
    assert t["xrun.reproducedFromRun"] == summary.run_id
    assert rerun["info"]["experiment_id"] == run["info"]["experiment_id"]


@pytest.mark.docker
def test_server_down_mid_run_the_run_succeeds_and_sync_sends_it_once(tmp_path, base_image, cache_env):
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        manifest = tracked_experiment(tmp_path / "exp", base_image, sleep=4, name="outage")
        runs_dir = tmp_path / "runs"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(manifest), "--quiet",
                                 "--runs-dir", str(runs_dir), "--mlflow", server.uri],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + PATIENCE_S
        while not list(runs_dir.glob("*/logs/run.log")):  # the container is running: stop the server now
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        server.stop()
        out, err = proc.communicate(timeout=PATIENCE_S)
        assert proc.returncode == 0, err.decode()
        warnings = [line for line in err.decode().splitlines() if "MLflow" in line]
        assert len(warnings) == 1 and "cannot reach the MLflow server" in warnings[0] and "xrun runs sync" in warnings[0]
        [run_dir] = runs_dir.iterdir()
        record = RunRecord.load(run_dir / "run.json")
        assert record is not None and record.status == "succeeded" and record.tracking["mlflow"]["state"] == "pending"
        assert (run_dir / "provenance.intoto.jsonl").is_file()

        server.start()
        assert server.runs_tagged(run_dir.name) == []
        first = subprocess.run([sys.executable, "-m", "runner.cli", "runs", "sync", "--runs-dir", str(runs_dir),
                                "--json"], env=env, capture_output=True, text=True, check=True)
        [logged] = server.runs_tagged(run_dir.name)
        # stdout holds xrun's JSON only (the MLflow client would print "View run … at" there)
        assert json.loads(first.stdout) == [{"runId": run_dir.name, "state": "logged", "uri": server.uri,
                                             "experiment": "outage", "mlflowRunId": logged["info"]["run_id"],
                                             "error": None}]
        record = RunRecord.load(run_dir / "run.json")
        assert record is not None and record.tracking["mlflow"] == {
            "state": "logged", "uri": server.uri, "experiment": "outage", "externalId": logged["info"]["run_id"]}
        assert server.history(logged["info"]["run_id"], "loss")[-1] == (2, 0.251)

        # nothing is pending any more; naming the run explicitly finds the logged one instead of sending it twice
        second = subprocess.run([sys.executable, "-m", "runner.cli", "runs", "sync", "--runs-dir", str(runs_dir)],
                                env=env, capture_output=True, text=True, check=True)
        assert "nothing to send" in second.stdout
        third = subprocess.run([sys.executable, "-m", "runner.cli", "runs", "sync", run_dir.name,
                                "--runs-dir", str(runs_dir), "--json"], env=env, capture_output=True, text=True,
                               check=True)
        assert json.loads(third.stdout)[0]["mlflowRunId"] == logged["info"]["run_id"]
        assert [r["info"]["run_id"] for r in server.runs_tagged(run_dir.name)] == [logged["info"]["run_id"]]
        assert len(server.history(logged["info"]["run_id"], "loss")) == 3
    finally:
        server.stop()


def test_a_server_that_refuses_leaves_the_run_pending_with_one_warning(tmp_path, mlflow_server, capsys):
    from runner.context import StderrProgress
    from runner.trackers.track import track_run

    created = mlflow_server.api("POST", "experiments/create", json={"name": "trk-deleted"})
    mlflow_server.api("POST", "experiments/delete", json={"experiment_id": created["experiment_id"]})
    run = tmp_path / "runs" / "20250101T000000Z-bbbbbb"
    (run / "outputs").mkdir(parents=True)
    RunRecord(run_id=run.name, name="x", status="succeeded", manifest="/m", manifest_sha256="a", plan_digest="b",
              started_on="2025-01-01T00:00:00Z", metrics={"m.json": {"acc": 1.0}}).save(run / "run.json")
    state = track_run(run, Destination(mlflow_server.uri, "trk-deleted"), StderrProgress())
    assert state.state == "pending" and "deleted" in (state.error or "")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xrun runs sync" in err[0] and "restore it" in err[0]
    record = RunRecord.load(run / "run.json")
    assert record is not None and record.tracking["mlflow"]["state"] == "pending"
    assert mlflow_server.runs_tagged(run.name) == []
