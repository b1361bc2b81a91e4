"""The registry gate against a real `mlflow server`: `xrun verify … --mlflow URL --register NAME` registers the
verified model files with the VSA and the attestation only when verification passes; read back through REST."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from mlflowserver import MlflowServer
from runner.attest import generate_keypair, load_signer
from runner.attest.samples import sample_facts
from runner.attest.sign import write_attestation
from runner.attest.statement import Subject, build_statement
from runner.cli import main


@pytest.fixture()
def world(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "producer")
    vsa_key, _ = generate_keypair("ecdsa-p256", tmp_path / "auditor")
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights " + tmp_path.name.encode())  # a different model per test
    statement = build_statement([Subject("model.pkl", hashlib.sha256(model.read_bytes()).hexdigest())], sample_facts())
    write_attestation(statement, load_signer(key), tmp_path / "p.intoto.jsonl", tmp_path / "p.sigstore.json")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"apiVersion: xrun/v1\nkind: Policy\n"
                      f"allowedBuilders: ['{statement['predicate']['runDetails']['builder']['id']}']\n")
    return {"pub": pub, "vsa_key": vsa_key, "model": model, "att": tmp_path / "p.intoto.jsonl", "policy": policy,
            "dir": tmp_path}


def _gate(world: dict[str, Path], server: MlflowServer, name: str, *extra: str) -> list[str]:
    return ["verify", str(world["att"]), "--key", str(world["pub"]), "--artifact", str(world["model"]),
            "--policy", str(world["policy"]), "--vsa-key", str(world["vsa_key"]), "--mlflow", server.uri,
            "--register", name, "--json", *extra]


def _versions(server: MlflowServer, name: str) -> list[dict]:
    found = server.api("GET", "model-versions/search", params={"filter": f"name = '{name}'"})
    return found.get("model_versions", [])


def _model_exists(server: MlflowServer, name: str) -> bool:
    response = requests.get(f"{server.uri}/api/2.0/mlflow/registered-models/get", params={"name": name}, timeout=30)
    return response.status_code == 200


def test_a_passed_verification_registers_the_model_with_vsa_attestation_and_tags(world, mlflow_server, capsys):
    code = main(_gate(world, mlflow_server, "iris-classifier", "--vsa-out", str(world["dir"] / "vsa.intoto.jsonl")))
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["registered"]["version"] == "1" and not out["registered"]["existing"]
    (version,) = _versions(mlflow_server, "iris-classifier")
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["xrun.verification"] == "PASSED"
    assert tags["xrun.attestation"] == "sha256:" + hashlib.sha256(world["att"].read_bytes()).hexdigest()
    assert tags["xrun.vsa"] == "sha256:" + hashlib.sha256((world["dir"] / "vsa.intoto.jsonl").read_bytes()).hexdigest()
    assert tags["xrun.policy"] == "sha256:" + hashlib.sha256(world["policy"].read_bytes()).hexdigest()
    assert tags["xrun.verifiedLevels"] == "SLSA_BUILD_LEVEL_2"
    run_id = version["run_id"]
    assert mlflow_server.artifacts(run_id, "model") == ["model/model.pkl"]
    assert mlflow_server.artifacts(run_id, "xrun") == ["xrun/p.intoto.jsonl", "xrun/vsa.intoto.jsonl"]


def test_registering_the_same_attestation_again_makes_no_second_version(world, mlflow_server, capsys):
    assert main(_gate(world, mlflow_server, "twice")) == 0
    capsys.readouterr()
    assert main(_gate(world, mlflow_server, "twice")) == 0
    assert json.loads(capsys.readouterr().out)["registered"]["existing"] is True
    assert len(_versions(mlflow_server, "twice")) == 1


def test_a_failed_verification_registers_nothing_and_exits_3(world, mlflow_server, capsys):
    world["model"].write_bytes(b"tampered weights")
    code = main(_gate(world, mlflow_server, "never"))
    out = json.loads(capsys.readouterr().out)
    assert code == 3
    assert out["registered"] is None and out["ok"] is False
    assert not _model_exists(mlflow_server, "never")


def test_a_registry_that_is_down_is_exit_4_in_one_line(world, tmp_path, capsys):
    down = MlflowServer(tmp_path / "down")  # never started: its port refuses connections
    code = main(_gate(world, down, "nowhere"))
    err = capsys.readouterr().err
    assert code == 4
    assert "cannot reach the MLflow server" in err and "Traceback" not in err


def test_register_without_a_vsa_key_is_a_usage_error(world, mlflow_server, capsys):
    argv = [a for a in _gate(world, mlflow_server, "nokey") if a not in ("--vsa-key", str(world["vsa_key"]))]
    assert main(argv) == 2
    assert "--key KEY" in capsys.readouterr().err
    assert not _model_exists(mlflow_server, "nokey")
