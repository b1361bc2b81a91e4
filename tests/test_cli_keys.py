"""One name per meaning for keys: --key signs, --trust PUB verifies; nothing unverified is used silently.

`rebuild` and `reproduce` refuse an attestation they cannot verify (exit 2 without --trust, 3 when
it does not verify) unless told --no-verify; the old spelling `--key PUB` still works, with one line
on stderr saying what to write. The refusals happen before any engine or network is touched.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from runner.attest import build_statement, generate_keypair, load_signer, write_attestation
from runner.attest.samples import sample_facts, sample_subjects
from runner.cli import build_parser, main
from runner.cli.options import split_keys
from runner.report import text
from runner.attest.recorded import NOT_VERIFIED
from runner.reproduce import OutputRow, Report


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A signed attestation, a tampered copy (payload changed, signature kept), the key pair."""
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "keys")
    good = tmp_path / "good" / "provenance.intoto.jsonl"
    good.parent.mkdir()
    write_attestation(build_statement(sample_subjects(), sample_facts()), load_signer(key), good)
    envelope = json.loads(good.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    tampered = tmp_path / "tampered" / "provenance.intoto.jsonl"
    tampered.parent.mkdir()
    tampered.write_text(json.dumps(envelope) + "\n")
    return good, tampered, key, pub


@pytest.mark.parametrize("verb", ["rebuild", "reproduce"])
def test_without_a_trusted_key_a_tampered_attestation_is_refused(signed, tmp_path, capsys, verb):
    _, tampered, _, _ = signed
    never = tmp_path / "never"
    extra = ["--runs-dir", str(never)] if verb == "reproduce" else []
    assert main([verb, str(tampered), "--code", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust PUB" in err[0] and "--no-verify" in err[0] and str(tampered) in err[0], err
    assert not never.exists()


@pytest.mark.parametrize("verb", ["rebuild", "reproduce"])
def test_a_tampered_attestation_with_trust_is_exit_3(signed, tmp_path, capsys, verb):
    _, tampered, _, pub = signed
    never = tmp_path / "never"
    extra = ["--runs-dir", str(never)] if verb == "reproduce" else []
    assert main([verb, str(tampered), "--trust", str(pub), "--code", str(tmp_path), *extra]) == 3
    err = capsys.readouterr().err
    assert "does not verify" in err and "warning" not in err and "Traceback" not in err
    assert not never.exists()


def test_rebuild_key_pub_is_the_old_spelling_of_trust(signed, tmp_path, capsys):
    _, tampered, _, pub = signed
    assert main(["rebuild", str(tampered), "--key", str(pub), "--code", str(tmp_path)]) == 3
    warning, *rest = capsys.readouterr().err.strip().splitlines()
    assert warning == (f"xrun: warning: --key {pub}: a trusted public key is given with --trust {pub} (--key names "
                       "the signing key); taken as --trust")
    assert "does not verify" in rest[0]


def test_reproduce_key_with_a_public_key_is_taken_as_trust(signed, tmp_path, capsys):
    _, tampered, _, pub = signed
    never = tmp_path / "never"
    # Verified (and failed: exit 3), not refused for want of a trusted key (exit 2) nor signed with it.
    assert main(["reproduce", str(tampered), "--key", str(pub), "--runs-dir", str(never)]) == 3
    err = capsys.readouterr().err
    assert f"--key {pub}: a trusted public key is given with --trust {pub}" in err and "does not verify" in err
    assert not never.exists()


def test_reproduce_key_with_a_private_key_signs(signed, tmp_path):
    good, _, key, pub = signed
    args = build_parser().parse_args(["reproduce", str(good), "--trust", str(pub), "--key", str(key)])
    assert split_keys(args, "the new run", "--signing-key", args.signing_key) == ([pub], key)


def test_reproduce_signing_key_is_the_old_spelling_of_key(signed, capsys):
    good, _, key, pub = signed
    args = build_parser().parse_args(["reproduce", str(good), "--key", str(pub), "--signing-key", str(key)])
    assert split_keys(args, "the new run", "--signing-key", args.signing_key) == ([pub], key)
    assert f"--signing-key {key}: write --key {key}" in capsys.readouterr().err


def test_reproduce_two_private_keys_is_a_usage_error(signed, tmp_path, capsys):
    good, _, key, _ = signed
    other, _ = generate_keypair("ed25519", tmp_path / "other")
    assert main(["reproduce", str(good), "--key", str(key), "--key", str(other), "--no-verify",
                 "--runs-dir", str(tmp_path / "never")]) == 2
    assert "signed with one" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("verb", ["rebuild", "reproduce"])
def test_trust_and_no_verify_exclude_each_other(signed, tmp_path, capsys, verb):
    good, _, _, pub = signed
    assert main([verb, str(good), "--trust", str(pub), "--no-verify", "--code", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust and --no-verify exclude each other" in err[0], err


def test_verify_key_pub_still_works_with_the_alias_line(signed, capsys):
    good, _, _, pub = signed
    assert main(["verify", str(good), "--key", str(pub)]) == 0
    out = capsys.readouterr()
    assert "PASS" in out.out and out.err.strip() == (
        f"xrun: warning: --key {pub}: a trusted public key is given with --trust {pub} (--key names the signing "
        "key); taken as --trust")


def test_verify_trust_verifies_and_rejects_the_tampered_copy(signed, capsys):
    good, tampered, _, pub = signed
    assert main(["verify", str(good), "--trust", str(pub)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["verify", str(tampered), "--trust", str(pub)]) == 3


def test_verify_without_a_key_names_trust(signed, capsys):
    good, _, _, _ = signed
    assert main(["verify", str(good)]) == 2
    assert "--trust xrun.pub" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["verify", "ATT"], ["rebuild", "ATT"], ["reproduce", "ATT"], ["report"], ["runs", "sync"],
])
def test_trust_is_one_repeatable_flag_everywhere(argv):
    args = build_parser().parse_args([*argv, "--trust", "a.pub", "--trust", "b.pub"])
    assert args.trust == [Path("a.pub"), Path("b.pub")]
    assert build_parser().parse_args(argv).trust == []


def test_not_verified_shows_in_the_reproduction_text():
    report = Report(attestation="a", run_id="r", run_dir="d", outputs=(OutputRow("m", "identical", "x", "x"),),
                    verified=False, notes=(NOT_VERIFIED,))
    assert text.reproduction(report).endswith(f"REPRODUCED (new run r in d)\n  {NOT_VERIFIED}")
    assert report.to_json()["verified"] is False and report.to_json()["notes"] == [NOT_VERIFIED]


def test_verify_key_with_a_private_key_signs_the_summary_and_vsa_key_is_its_old_spelling(signed, tmp_path, capsys):
    """--key means the signing key in verify too: a private key signs the VSA; --vsa-key still works, with a line."""
    good, _, key, pub = signed
    out = tmp_path / "a.vsa.intoto.jsonl"
    assert main(["verify", str(good), "--trust", str(pub), "--vsa-out", str(out), "--key", str(key)]) == 0
    assert out.exists() and capsys.readouterr().err == ""
    old = tmp_path / "b.vsa.intoto.jsonl"
    assert main(["verify", str(good), "--trust", str(pub), "--vsa-out", str(old), "--vsa-key", str(key)]) == 0
    assert old.exists() and f"--vsa-key {key}: write --key {key}" in capsys.readouterr().err
