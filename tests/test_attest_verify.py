"""Sign, write, verify: the files, unsigned mode, atomic writes, and every kind of tampering."""

from __future__ import annotations

import base64
import copy
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner.attest import (
    BUNDLE_MEDIA_TYPE,
    build_statement,
    generate_keypair,
    load_signer,
    read_attestation,
    verify_attestation,
    write_attestation,
)
from runner.attest import sign as sign_module
from runner.attest.dsse import PAYLOAD_TYPE, b64decode
from runner.attest.keys import KEY_KINDS
from runner.attest.samples import sample_facts, sample_subjects
from runner.attest.statement import Subject
from runner.errors import EXIT_INTEGRITY, EXIT_OK, EnvironmentProblem, UsageError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


class Run:
    """A finished run in tmp: outputs, a key pair, and the attestation files."""

    def __init__(self, root: Path, kind: str = "ecdsa-p256", signed: bool = True, tag: str = "") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key, self.pub = generate_keypair(kind, root / "keys")
        self.model = root / "model.pkl"
        self.metrics = root / "metrics.json"
        self.model.write_bytes(b"weights" + tag.encode())
        self.metrics.write_text(json.dumps({"acc": 0.97, "tag": tag}))
        subjects = [Subject("model.pkl", _sha(self.model)), Subject("metrics.json", _sha(self.metrics))]
        self.statement = build_statement(subjects, sample_facts(finished_on=NOW - timedelta(hours=1)))
        self.jsonl = root / "provenance.intoto.jsonl"
        self.bundle = root / "provenance.sigstore.json"
        signer = load_signer(self.key) if signed else None
        self.written = write_attestation(self.statement, signer, self.jsonl, self.bundle)

    def envelope(self) -> dict:
        return json.loads(self.jsonl.read_text())

    def verify(self, path: Path | None = None, keys: list[Path] | None = None, artifacts: list[Path] | None = None,
               **kw):
        return verify_attestation(path or self.jsonl, [self.pub] if keys is None else keys,
                                  [self.model, self.metrics] if artifacts is None else artifacts, None, NOW, **kw)


def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_envelope(path: Path, envelope: dict) -> Path:
    path.write_text(json.dumps(envelope) + "\n")
    return path


def _failed(verdict) -> set[str]:
    return {c.name for c in verdict.checks if not c.ok}


# --- happy paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KEY_KINDS)
def test_signed_run_verifies_from_jsonl_and_bundle(tmp_path: Path, kind: str) -> None:
    run = Run(tmp_path, kind)
    for path in (run.jsonl, run.bundle):
        verdict = run.verify(path)
        assert verdict.ok, verdict.lines()
        assert verdict.exit_code == EXIT_OK
        assert [c.name for c in verdict.checks] == ["format", "signature", "payloadType", "statement",
                                                    f"artifact {run.model}", f"artifact {run.metrics}"]
        assert verdict.statement == run.statement
        assert "'model.pkl'" in verdict.checks[4].detail


def test_jsonl_is_one_compact_envelope_line(tmp_path: Path) -> None:
    run = Run(tmp_path)
    text = run.jsonl.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    envelope = json.loads(text)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert [list(s) for s in envelope["signatures"]] == [["keyid", "sig"]]
    assert envelope["signatures"][0]["keyid"] == run.written.keyid
    assert json.loads(base64.b64decode(envelope["payload"])) == run.statement


def test_bundle_follows_sigstore_bundle_v0_3(tmp_path: Path) -> None:
    run = Run(tmp_path)
    bundle = json.loads(run.bundle.read_text())
    assert set(bundle) == {"mediaType", "verificationMaterial", "dsseEnvelope"}
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": run.written.keyid}, "tlogEntries": []}
    assert bundle["dsseEnvelope"] == run.envelope()  # the same bytes and the same single signature
    assert len(bundle["dsseEnvelope"]["signatures"]) == 1


def test_payload_bytes_are_verified_as_signed_not_reserialised(tmp_path: Path) -> None:
    run = Run(tmp_path)
    # A payload with odd spacing and key order: verification must parse these bytes, not a re-dump.
    st = run.statement
    payload = (b'{ "subject" : ' + json.dumps(st["subject"]).encode()
               + b', "_type":"' + st["_type"].encode()
               + b'", "predicate":' + json.dumps(st["predicate"], indent=3).encode()
               + b', "predicateType": "' + st["predicateType"].encode() + b'"}')
    from runner.attest.dsse import sign
    envelope = sign(payload, load_signer(run.key))
    path = tmp_path / "odd.jsonl"
    path.write_text(envelope.to_line() + "\n")
    verdict = run.verify(path)
    assert verdict.ok, verdict.lines()
    assert read_attestation(path).envelopes[0].payload == payload


def test_several_trusted_keys_and_foreign_keyids(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    _, other_pub = generate_keypair("ed25519", tmp_path / "other")
    assert run.verify(keys=[other_pub, run.pub]).ok
    envelope = run.envelope()
    envelope["signatures"][0]["keyid"] = "some-other-tool's-id"
    assert run.verify(_write_envelope(tmp_path / "k.jsonl", envelope)).ok
    envelope["signatures"][0].pop("keyid")
    assert run.verify(_write_envelope(tmp_path / "k2.jsonl", envelope)).ok


def test_url_safe_unpadded_base64_is_accepted(tmp_path: Path) -> None:
    run = Run(tmp_path)
    envelope = run.envelope()
    for holder, key in ((envelope, "payload"), (envelope["signatures"][0], "sig")):
        raw = b64decode(holder[key])
        holder[key] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert run.verify(_write_envelope(tmp_path / "url.jsonl", envelope)).ok


def test_verdict_lines_and_json(tmp_path: Path) -> None:
    run = Run(tmp_path)
    verdict = run.verify()
    lines = verdict.lines()
    assert all(line.startswith("PASS  ") for line in lines[:-1]) and lines[-1].startswith("VERIFIED")
    assert json.loads(json.dumps(verdict.to_json()))["ok"] is True


# --- unsigned mode -------------------------------------------------------------------------------

def test_unsigned_run_writes_no_bundle_and_fails_unless_allowed(tmp_path: Path) -> None:
    run = Run(tmp_path, signed=False)
    assert run.written.keyid is None and not run.written.signed
    assert not run.bundle.exists()
    assert run.envelope()["signatures"] == []
    verdict = run.verify()
    assert not verdict.ok and verdict.exit_code == EXIT_INTEGRITY
    signature = verdict.checks[1]
    assert not signature.ok and "UNSIGNED" in signature.detail and "--allow-unsigned" in signature.detail
    assert run.verify(allow_unsigned=True).ok
    assert run.verify(keys=[], allow_unsigned=True).ok


def test_allow_unsigned_does_not_excuse_a_bad_signature(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    _, other_pub = generate_keypair("ecdsa-p256", tmp_path / "other")
    assert not run.verify(keys=[other_pub], allow_unsigned=True).ok


def test_signed_envelope_without_keys_fails(tmp_path: Path) -> None:
    run = Run(tmp_path)
    verdict = run.verify(keys=[])
    assert not verdict.ok and "no trusted key" in verdict.checks[1].detail


# --- tampering -----------------------------------------------------------------------------------

def _flip_payload_byte(envelope: dict) -> None:
    payload = bytearray(b64decode(envelope["payload"]))
    index = payload.index(b"model.pkl")
    payload[index] ^= 0x01  # model.pkl → lodel.pkl
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()


def _change_payload_type(envelope: dict) -> None:
    envelope["payloadType"] = "application/json"


def _flip_signature_bit(envelope: dict) -> None:
    sig = bytearray(b64decode(envelope["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


def _change_subject_digest(envelope: dict) -> None:
    statement = json.loads(b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _drop_signature(envelope: dict) -> None:
    envelope["signatures"] = []


@pytest.mark.parametrize("tamper", [_flip_payload_byte, _change_payload_type, _flip_signature_bit,
                                    _change_subject_digest, _drop_signature])
@pytest.mark.parametrize("kind", KEY_KINDS)
def test_tampered_envelopes_are_rejected(tmp_path: Path, tamper, kind: str) -> None:
    run = Run(tmp_path, kind)
    envelope = run.envelope()
    tamper(envelope)
    verdict = run.verify(_write_envelope(tmp_path / "tampered.jsonl", envelope))
    assert not verdict.ok and verdict.exit_code == EXIT_INTEGRITY
    assert "signature" in _failed(verdict)
    # Nothing of an unauthenticated payload is reported as passing, its (signed) type included.
    assert {"payloadType", "statement", f"artifact {run.model}"} <= _failed(verdict)


@pytest.mark.parametrize("tamper", [_flip_payload_byte, _flip_signature_bit, _change_subject_digest])
def test_tampered_bundles_are_rejected(tmp_path: Path, tamper) -> None:
    run = Run(tmp_path)
    bundle = json.loads(run.bundle.read_text())
    tamper(bundle["dsseEnvelope"])
    path = tmp_path / "tampered.sigstore.json"
    path.write_text(json.dumps(bundle))
    assert "signature" in _failed(run.verify(path))


def test_another_key_is_rejected(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    _, other_pub = generate_keypair("ecdsa-p256", tmp_path / "other")
    verdict = run.verify(keys=[other_pub])
    assert not verdict.ok
    assert "no signature verifies with a trusted key" in verdict.checks[1].detail
    # Every check after the failed signature is reported failed, not run: no PASS after it.
    assert [c.ok for c in verdict.checks[1:]] == [False] * (len(verdict.checks) - 1), verdict.checks
    assert verdict.checks[2].name == "payloadType" and "not checked" in verdict.checks[2].detail


def test_key_with_the_same_keyid_hint_but_other_material_is_rejected(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    other = Run(tmp_path / "b", tag="b")
    envelope = other.envelope()
    envelope["signatures"][0]["keyid"] = run.written.keyid  # claims to be from run's key
    assert "signature" in _failed(run.verify(_write_envelope(tmp_path / "claim.jsonl", envelope)))


def test_swapped_envelope_from_another_run_fails_the_artifact_check(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    other = Run(tmp_path / "b", tag="other")
    # A genuine attestation of a different run, signed with the same trusted key.
    write_attestation(other.statement, load_signer(run.key), tmp_path / "swap.jsonl")
    verdict = run.verify(tmp_path / "swap.jsonl")
    assert {c.name for c in verdict.checks if c.ok} >= {"signature", "payloadType", "statement"}
    assert _failed(verdict) == {f"artifact {run.model}", f"artifact {run.metrics}"}
    detail = next(c.detail for c in verdict.checks if c.name == f"artifact {run.model}")
    assert "differs from subject 'model.pkl'" in detail


def test_swapped_signature_from_another_envelope_is_rejected(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    other_statement = Run(tmp_path / "b", tag="b").statement
    other = write_attestation(other_statement, load_signer(run.key), tmp_path / "other.jsonl")
    envelope = run.envelope()
    envelope["signatures"] = other.envelope.to_json()["signatures"]
    assert "signature" in _failed(run.verify(_write_envelope(tmp_path / "mix.jsonl", envelope)))


def test_signed_payload_with_duplicate_keys_is_rejected(tmp_path: Path) -> None:
    run = Run(tmp_path)
    body = json.dumps(run.statement)
    payload = ('{"_type":"https://in-toto.io/Statement/v1",' + body[1:]).encode()
    from runner.attest.dsse import sign
    path = tmp_path / "dup.jsonl"
    path.write_text(sign(payload, load_signer(run.key)).to_line() + "\n")
    verdict = run.verify(path)
    detail = next(c.detail for c in verdict.checks if c.name == "statement")
    assert not verdict.ok and "repeats the key '_type'" in detail


def test_signed_but_malformed_statement_is_rejected(tmp_path: Path) -> None:
    run = Run(tmp_path)
    bad = copy.deepcopy(run.statement)
    bad["predicateType"] = "https://slsa.dev/provenance/v1.0"
    from runner.attest.dsse import sign
    path = tmp_path / "bad.jsonl"
    path.write_text(sign(json.dumps(bad).encode(), load_signer(run.key)).to_line() + "\n")
    verdict = run.verify(path)
    assert _failed(verdict) == {"statement", f"artifact {run.model}", f"artifact {run.metrics}"}


def test_bundle_with_two_signatures_is_rejected(tmp_path: Path) -> None:
    run = Run(tmp_path)
    bundle = json.loads(run.bundle.read_text())
    bundle["dsseEnvelope"]["signatures"] *= 2
    path = tmp_path / "two.sigstore.json"
    path.write_text(json.dumps(bundle))
    verdict = run.verify(path)
    assert _failed(verdict) == {"format"} and "exactly one signature" in verdict.checks[0].detail


@pytest.mark.parametrize("content, message", [
    ("", "no DSSE envelope"),
    ("not json\n", "line 1"),
    ('{"mediaType": "application/vnd.dev.sigstore.bundle.v0.1+json"}', "unsupported bundle mediaType"),
    ('{"mediaType": "' + BUNDLE_MEDIA_TYPE + '", "verificationMaterial": {}, "messageSignature": {}}',
     "not a dsseEnvelope"),
    ('{"payload": "e30=", "signatures": []}', "payloadType"),
    ('{"payload": "e30=", "payload": "e30=", "payloadType": "x", "signatures": []}', "repeats the key 'payload'"),
    ("[" * 100_000 + "]" * 100_000, "nests arrays or objects too deeply"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "nests arrays or objects too deeply"),
])
def test_malformed_attestation_files_fail_the_format_check(tmp_path: Path, content: str, message: str) -> None:
    run = Run(tmp_path)
    path = tmp_path / "broken.jsonl"
    path.write_text(content)
    verdict = run.verify(path)
    assert not verdict.ok and verdict.checks[0].name == "format" and message in verdict.checks[0].detail


def test_jsonl_with_two_envelopes_checks_each(tmp_path: Path) -> None:
    run = Run(tmp_path / "a")
    second = Run(tmp_path / "b", tag="b")
    path = tmp_path / "both.jsonl"
    path.write_text(run.jsonl.read_text() + "\n" + second.jsonl.read_text())
    verdict = verify_attestation(path, [run.pub, second.pub], [run.model, second.model], None, NOW)
    assert verdict.ok, verdict.lines()
    assert {"envelope 1: signature", "envelope 2: signature"} <= {c.name for c in verdict.checks}
    verdict = verify_attestation(path, [run.pub], [run.model], None, NOW)
    assert _failed(verdict) == {"envelope 2: signature", "envelope 2: payloadType", "envelope 2: statement"}


def test_unknown_artifact_names_the_subject_count(tmp_path: Path) -> None:
    run = Run(tmp_path)
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"?")
    verdict = run.verify(artifacts=[stray])
    assert "not among the 2 subjects" in verdict.checks[-1].detail


# --- bad inputs are usage errors, not verdicts -----------------------------------------------------

def test_bad_inputs_raise_usage_errors(tmp_path: Path) -> None:
    run = Run(tmp_path)
    with pytest.raises(UsageError, match="no such artifact"):
        run.verify(artifacts=[tmp_path / "missing"])
    with pytest.raises(UsageError, match="directory"):
        run.verify(artifacts=[tmp_path])
    with pytest.raises(UsageError, match="no such key"):
        run.verify(keys=[tmp_path / "missing.pub"])
    with pytest.raises(UsageError, match="no such attestation"):
        run.verify(tmp_path / "missing.jsonl")


# --- atomic writes -------------------------------------------------------------------------------

def test_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path / "setup")
    out = tmp_path / "out"
    out.mkdir()
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(EnvironmentProblem, match="nothing was written"):
        write_attestation(run.statement, load_signer(run.key), out / "provenance.intoto.jsonl",
                          out / "provenance.sigstore.json")
    assert list(out.iterdir()) == []


def test_a_faulty_signature_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path / "setup")
    signer = load_signer(run.key)
    monkeypatch.setattr(type(signer), "sign", lambda self, data: b"\x30\x06\x02\x01\x01\x02\x01\x01")
    out = tmp_path / "out"
    out.mkdir()
    from runner.errors import IntegrityError
    with pytest.raises(IntegrityError):
        write_attestation(run.statement, signer, out / "a.jsonl", out / "b.json")
    assert list(out.iterdir()) == []


def test_serialized_payload_is_compact_utf8(tmp_path: Path) -> None:
    statement = build_statement(sample_subjects(1), sample_facts())
    statement["predicate"]["buildDefinition"]["externalParameters"]["manifest"]["description"] = "Zürich"
    payload = sign_module.serialize_statement(statement)
    assert "Zürich".encode() in payload and b", " not in payload[:40]


def test_verify_of_deeply_nested_json_is_a_fail_line_and_exit_3(tmp_path: Path, capsys) -> None:
    """A hostile file or payload nested 100,000 deep: FAIL lines and exit 3, never an internal error (70)."""
    import base64

    from runner.cli import main

    payload = base64.b64encode(("[" * 100_000 + "]" * 100_000).encode()).decode()
    envelope = tmp_path / "nested-payload.jsonl"
    envelope.write_text(json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload,
                                    "signatures": []}))
    whole = tmp_path / "nested.jsonl"
    whole.write_text("[" * 100_000 + "]" * 100_000)
    for path, check in ((whole, "FAIL  format"), (envelope, "FAIL  statement")):
        capsys.readouterr()
        assert main(["verify", str(path), "--allow-unsigned"]) == 3
        out, err = capsys.readouterr()
        assert check in out + err and "too deeply" in out + err and "internal error" not in err, (out, err)
