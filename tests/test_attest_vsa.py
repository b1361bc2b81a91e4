"""Verification Summary Attestations: signed, strictly valid for the in-toto protobuf bindings, and
accepted back by `xrun verify` (signature, structure, the result it states, the policy it names)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from runner.attest import generate_keypair, load_signer
from runner.attest.policy import load_policy
from runner.attest.verify import verify_attestation
from runner.attest.vsa import VSA_PREDICATE_TYPE, summarize, write_vsa
from signedmodel import signed_model

json_format = pytest.importorskip("google.protobuf.json_format")
statement_pb2 = pytest.importorskip("in_toto_attestation.v1.statement_pb2")
vsa_pb2 = pytest.importorskip("in_toto_attestation.predicates.vsa.v1.vsa_pb2")
from in_toto_attestation.v1.statement import Statement  # noqa: E402


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, Path]:
    """A signed provenance of model.pkl, the producer's key, an auditor's VSA key, and a policy."""
    signed = signed_model(tmp_path)
    vsa_key, vsa_pub = generate_keypair("ed25519", tmp_path / "auditor")
    statement = signed.statement
    policy = tmp_path / "policy.yaml"
    builder = statement["predicate"]["runDetails"]["builder"]["id"]
    policy.write_text(f"apiVersion: xrun/v1\nkind: Policy\nallowedBuilders: ['{builder}']\n")
    other = tmp_path / "other-policy.yaml"
    other.write_text("apiVersion: xrun/v1\nkind: Policy\nallowedBuilders: ['https://elsewhere/*']\n")
    return {"pub": signed.pub, "vsa_key": vsa_key, "vsa_pub": vsa_pub, "model": signed.model, "att": signed.jsonl,
            "policy": policy, "other": other, "dir": tmp_path}


def _vsa(world: dict[str, Path], policy: Path, name: str = "vsa.intoto.jsonl") -> tuple[dict, Path]:
    loaded = load_policy(policy)
    verdict = verify_attestation(world["att"], [world["pub"]], [world["model"]], loaded)
    return summarize(verdict, world["att"], loaded, load_signer(world["vsa_key"]), world["dir"] / name)


def strict_predicate(predicate: dict):
    """The VSA predicate parsed by the bindings with no unknown field allowed.

    The spec makes verifiedLevels an array; the bindings on PyPI (in-toto-attestation 0.9.3) still
    declare one string (in-toto/attestation#425, fixed by #429 after that release), so that one
    field is handed to them as the single level it holds.
    """
    levels = predicate["verifiedLevels"]
    assert isinstance(levels, list) and len(levels) == 1
    return json_format.ParseDict({**predicate, "verifiedLevels": levels[0]}, vsa_pb2.VerificationSummary())


def _payload(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))


def test_the_vsa_parses_strictly_with_the_in_toto_bindings(world):
    statement, path = _vsa(world, world["policy"])
    assert _payload(path) == statement
    parsed = json_format.Parse(json.dumps(statement), statement_pb2.Statement())  # no unknown field allowed
    Statement.copy_from_pb(parsed).validate()
    predicate = strict_predicate(statement["predicate"])
    assert statement["predicateType"] == VSA_PREDICATE_TYPE
    assert predicate.verification_result == "PASSED"
    assert predicate.verified_levels == "SLSA_BUILD_LEVEL_2"
    assert predicate.policy.digest["sha256"] == hashlib.sha256(world["policy"].read_bytes()).hexdigest()
    assert predicate.input_attestations[0].digest["sha256"] == hashlib.sha256(world["att"].read_bytes()).hexdigest()
    assert [s["name"] for s in statement["subject"]] == ["model.pkl"]
    assert predicate.verifier.id and predicate.time_verified.seconds > 0


def test_a_failed_verification_gives_a_failed_vsa(world):
    statement, _ = _vsa(world, world["other"])
    assert statement["predicate"]["verificationResult"] == "FAILED"
    assert statement["predicate"]["verifiedLevels"] == ["FAILED"]
    strict_predicate(statement["predicate"])


def test_xrun_verify_accepts_a_vsa_and_reports_its_result(world):
    _, path = _vsa(world, world["policy"])
    verdict = verify_attestation(path, [world["vsa_pub"]], [world["model"]], load_policy(world["policy"]))
    assert verdict.ok, verdict.lines()
    summary = [c for c in verdict.checks if c.name == "summary"][0]
    assert summary.detail.startswith("PASSED") and "SLSA_BUILD_LEVEL_2" in summary.detail


def test_a_vsa_for_another_policy_or_a_failed_one_or_from_another_key_is_refused(world):
    _, passed = _vsa(world, world["policy"])
    wrong_policy = verify_attestation(passed, [world["vsa_pub"]], [], load_policy(world["other"]))
    assert not wrong_policy.ok and "not the given one" in str(wrong_policy.lines())
    _, failed = _vsa(world, world["other"], "failed.intoto.jsonl")
    assert not verify_attestation(failed, [world["vsa_pub"]], []).ok
    assert not verify_attestation(passed, [world["pub"]], []).ok  # the producer's key did not sign the VSA


def test_a_vsa_with_an_unknown_field_is_refused(world):
    statement, _ = _vsa(world, world["policy"])
    statement["predicate"]["xrunExtra"] = True
    path = write_vsa(statement, load_signer(world["vsa_key"]), world["dir"] / "odd.intoto.jsonl")
    verdict = verify_attestation(path, [world["vsa_pub"]], [])
    assert not verdict.ok and "predicate.xrunExtra: unknown field" in str(verdict.lines())


def test_cli_writes_a_vsa_and_verifies_it_back(world, capsys):
    from runner.cli import main

    out = world["dir"] / "cli-vsa.intoto.jsonl"
    assert main(["verify", str(world["att"]), "--key", str(world["pub"]), "--artifact", str(world["model"]),
                 "--policy", str(world["policy"]), "--vsa-out", str(out), "--vsa-key", str(world["vsa_key"])]) == 0
    assert f"wrote the PASSED verification summary {out}" in capsys.readouterr().out
    assert main(["verify", str(out), "--key", str(world["vsa_pub"]), "--artifact", str(world["model"]),
                 "--policy", str(world["policy"]), "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["summary"]["ok"] and checks["summary"]["detail"].startswith("PASSED")
    # A failed verification still writes its (FAILED) summary, and exits 3.
    assert main(["verify", str(world["att"]), "--key", str(world["pub"]), "--policy", str(world["other"]),
                 "--vsa-out", str(out), "--vsa-key", str(world["vsa_key"])]) == 3
    assert _payload(out)["predicate"]["verificationResult"] == "FAILED"
