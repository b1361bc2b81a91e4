"""`xrun collect` does not take the node's word: its statement is read strictly and every resolved dependency is
compared with the frozen plan and the image the submitter built before anything is signed (issue 20 §3).

One real Slurm run (tests/slurmcluster.py) with a local wheel in its lock; each test tampers with a copy of its
run directory as a hostile node could, and checks that nothing is signed.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.attest import generate_keypair, verify_attestation
from runner.context import RunOptions
from runner.errors import IntegrityError
from runner.backends import attach
from runner.submit import SubmitOptions, collect, submit
from experiments import probe_experiment
from wheelmaker import make_wheel

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
PAYLOAD_TYPE = "application/vnd.in-toto+json"


@pytest.fixture(scope="module")
def node_run(tmp_path_factory, base_image, slurm_cluster):
    """A finished Slurm run whose node statement is not collected yet: (run dir, private key, public key)."""
    root = tmp_path_factory.mktemp("collect")
    exp = root / "exp"
    wheel, sha = make_wheel(exp / "wheels", "localpkg", "1.0", "VALUE = 'wheel'\n")
    manifest = probe_experiment(exp, base_image, command=[
        "python3", "-c", "import localpkg; open('/outputs/probe.json', 'w').write(localpkg.VALUE)"],
        outputs=[{"path": "probe.json"}])
    (exp / "requirements.txt").write_text(f"./wheels/{wheel.name} --hash=sha256:{sha}\n")
    data = json.loads(manifest.read_text())
    data["image"]["lockfile"] = "requirements.txt"
    data["code"]["exclude"] += ["requirements.txt", "wheels"]
    manifest.write_text(json.dumps(data))
    key, pub = generate_keypair("ed25519", root / "keys", None)
    options = SubmitOptions(run=RunOptions(runs_dir=root / "runs", quiet=True), backend="slurm",
                            shared_dir=root / "shared")
    member = submit(manifest, options).runs[0]
    record = attach(member.run_dir).wait()
    assert record.status == "succeeded", record.error
    assert not (member.run_dir / "provenance.intoto.jsonl").exists()
    return member.run_dir, key, pub


def _copy(node_run, tmp_path) -> Path:
    run_dir = tmp_path / node_run[0].name
    shutil.copytree(node_run[0], run_dir)
    return run_dir


def _statement(run_dir: Path) -> dict:
    envelope = json.loads((run_dir / "node.intoto.jsonl").read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def _write_payload(run_dir: Path, payload: bytes) -> None:
    envelope = {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE, "signatures": []}
    (run_dir / "node.intoto.jsonl").write_text(json.dumps(envelope) + "\n")


def _dependency(statement: dict, name: str) -> dict:
    return next(d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"] if d["name"] == name)


def _refused(run_dir: Path, key: Path, words: str) -> None:
    with pytest.raises(IntegrityError, match=words) as caught:
        collect(run_dir, key=key)
    assert "not signed" in caught.value.message
    assert not (run_dir / "provenance.intoto.jsonl").exists() and not (run_dir / "provenance.sigstore.json").exists()
    record = json.loads((run_dir / "run.json").read_text())
    assert record.get("attestation") != "provenance.intoto.jsonl" and not record.get("signed")


def test_an_honest_statement_is_signed_with_the_nodes_report_marked(node_run, tmp_path):
    run_dir = _copy(node_run, tmp_path)
    done = collect(run_dir, key=node_run[1])
    verdict = verify_attestation(done.attestation, [node_run[2]], [run_dir / "outputs" / "probe.json"])
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    marks = verdict.statement["predicate"]["buildDefinition"]["internalParameters"]["collect"]
    assert "resolvedDependencies" in marks["checkedBySubmitter"] and "runDetails.metadata" in marks["nodeReport"]


def test_an_unknown_field_is_refused(node_run, tmp_path):
    run_dir = _copy(node_run, tmp_path)
    statement = _statement(run_dir)
    statement["predicate"]["runDetails"]["trustMe"] = True
    _write_payload(run_dir, json.dumps(statement).encode())
    _refused(run_dir, node_run[1], "malformed.*trustMe")


def test_an_unknown_internal_parameter_is_refused(node_run, tmp_path):
    run_dir = _copy(node_run, tmp_path)
    statement = _statement(run_dir)
    statement["predicate"]["buildDefinition"]["internalParameters"]["verified"] = True
    _write_payload(run_dir, json.dumps(statement).encode())
    _refused(run_dir, node_run[1], "unknown field 'verified'")


def test_a_duplicate_key_is_refused(node_run, tmp_path):
    run_dir = _copy(node_run, tmp_path)
    text = json.dumps(_statement(run_dir))
    _write_payload(run_dir, (text[:-1] + ', "subject": []}').encode())  # two parsers, two answers
    _refused(run_dir, node_run[1], "repeats the key 'subject'")


def test_nan_is_refused(node_run, tmp_path):
    run_dir = _copy(node_run, tmp_path)
    statement = _statement(run_dir)
    statement["predicate"]["buildDefinition"]["internalParameters"]["seeding"]["global"] = math.nan
    _write_payload(run_dir, json.dumps(statement).encode())
    _refused(run_dir, node_run[1], "NaN")


@pytest.mark.parametrize("name", ["wheel/localpkg", "image", "data/input", "code"])
def test_a_changed_dependency_digest_is_refused(node_run, tmp_path, name):
    run_dir = _copy(node_run, tmp_path)
    statement = _statement(run_dir)
    _dependency(statement, name)["digest"]["sha256"] = "ab" * 32
    _write_payload(run_dir, json.dumps(statement).encode())
    label = {"wheel/localpkg": "wheels"}.get(name, name)
    _refused(run_dir, node_run[1], f"disagrees with what was submitted: {label}")


def test_the_command_line_says_one_line_and_exits_3(node_run, tmp_path):
    run_dir = _copy(node_run, tmp_path)
    statement = _statement(run_dir)
    _dependency(statement, "image")["digest"]["sha256"] = "cd" * 32
    _write_payload(run_dir, json.dumps(statement).encode())
    out = subprocess.run([sys.executable, "-m", "runner.cli", "collect", str(run_dir), "--key", str(node_run[1])],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "image" in lines[0] and "Traceback" not in out.stderr
    assert not (run_dir / "provenance.intoto.jsonl").exists()
