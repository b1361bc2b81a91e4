"""Every `xrun run` writes an attestation that `xrun verify` and independent verifiers accept."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.attest import generate_keypair, load_verifier, verify_attestation
from runner.pipeline import RunOptions, run_experiment
from experiments import probe_experiment

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory, base_image):
    work = tmp_path_factory.mktemp("attested")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XRUN_CACHE_DIR", str(work / "cache"))
        key, pub = generate_keypair("ecdsa-p256", work / "keys")
        manifest = probe_experiment(work / "exp", base_image, seed=3)
        summary = run_experiment(manifest, RunOptions(runs_dir=work / "runs", key=key, quiet=True))
    return summary, key, pub, manifest


def test_run_writes_signed_attestation_that_verifies(signed_run):
    summary, _, pub, _ = signed_run
    assert summary.signed and summary.keyid.startswith("SHA256:")
    verdict = verify_attestation(summary.attestation, [pub], [summary.run_dir / "outputs" / "probe.json"])
    assert verdict.ok, verdict.lines()
    assert verify_attestation(summary.bundle, [pub], []).ok


def test_statement_records_the_inputs(signed_run):
    summary, _, _, manifest = signed_run
    line = summary.attestation.read_text().splitlines()[0]
    statement = json.loads(base64.b64decode(json.loads(line)["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert {s["name"] for s in statement["subject"]} == set(summary.outputs)
    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["manifestDigest"]["sha256"] == __import__("hashlib").sha256(
        manifest.read_bytes()).hexdigest()
    names = {d["name"] for d in build["resolvedDependencies"]}
    assert {"base-image", "image", "code", "data/input"} <= names
    internal = build["internalParameters"]
    assert internal["isolation"]["network"] == "none" and internal["seeding"]["global"] == 3
    assert not set(internal) & set(build["externalParameters"])
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["version"]["xrun"]
    assert details["metadata"]["startedOn"].endswith("Z")
    assert {b["name"] for b in details["byproducts"]} >= {"logs/run.log", "run.json", "host"}


def test_securesystemslib_verifies_the_run(signed_run):
    summary, _, pub, _ = signed_run
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    keyid = load_verifier(pub).keyid
    key = SSlibKey.from_crypto(load_pem_public_key(pub.read_bytes()), keyid=keyid)
    envelope = Envelope.from_dict(json.loads(summary.attestation.read_text().splitlines()[0]))
    assert keyid in envelope.verify([key], 1)


def test_cli_verify_and_tamper(signed_run, tmp_path):
    summary, _, pub, _ = signed_run
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "runner.cli", "verify", "--key", str(pub)]
    ok = subprocess.run([*cmd, str(summary.attestation)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS  signature" in ok.stdout
    envelope = json.loads(summary.attestation.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    bad = tmp_path / "tampered.intoto.jsonl"
    bad.write_text(json.dumps(envelope) + "\n")
    proc = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, env=env)
    assert proc.returncode == 3 and "FAIL  signature" in proc.stdout


def test_unsigned_run_says_so(tmp_path, base_image, monkeypatch, capsys):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XRUN_SIGNING_KEY", raising=False)
    summary = run_experiment(probe_experiment(tmp_path / "exp", base_image),
                             RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    assert not summary.signed and summary.attestation.exists()
    assert "UNSIGNED" in capsys.readouterr().err
    assert not verify_attestation(summary.attestation, [], []).ok


def test_run_statement_parses_strictly_and_records_no_host_path(signed_run):
    """The official in-toto bindings parse a real run's statement with no unknown field; no host path in it."""
    from statementcheck import assert_portable, assert_strictly_valid

    summary, _, _, manifest = signed_run
    line = summary.attestation.read_text().splitlines()[0]
    statement = json.loads(base64.b64decode(json.loads(line)["payload"]))
    assert_strictly_valid(statement)
    assert_portable(statement, str(summary.run_dir.parent), str(manifest.parent))
    internal = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["hermetic"] is True and internal["hardwareMismatch"] == [] and "runsDir" not in internal
