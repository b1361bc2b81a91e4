"""Independent verifiers: securesystemslib (>= 1.0) and the in-toto package (>= 3.0) accept our envelopes.

Finding: both libraries only try a key whose keyid equals the signature's keyid, and their default
keyid is the hex sha256 of the canonical JSON of their key dict, not our OpenSSH-style fingerprint.
Loaded with our keyid (`SSlibKey.from_crypto(public_key, keyid=...)`), they verify our envelopes.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from runner.attest import generate_keypair, load_verifier, verify_attestation
from runner.attest.dsse import pae
from runner.attest.keys import KEY_KINDS
from signedmodel import signed_model

sslib_dsse = pytest.importorskip("securesystemslib.dsse")
sslib_signer = pytest.importorskip("securesystemslib.signer")
sslib_exceptions = pytest.importorskip("securesystemslib.exceptions")
intoto_metadata = pytest.importorskip("in_toto.models.metadata")
intoto_exceptions = pytest.importorskip("in_toto.exceptions")


def _run(tmp_path: Path, kind: str) -> tuple[dict, dict, Path, Path, Path]:
    signed = signed_model(tmp_path, kind, stem="a")
    envelope = json.loads(signed.jsonl.read_text())
    bundle = json.loads(signed.bundle.read_text())
    return envelope, bundle, signed.key, signed.pub, signed.model


def _sslib_key(pub: Path, keyid: str | None):
    return sslib_signer.SSlibKey.from_crypto(load_pem_public_key(pub.read_bytes()), keyid=keyid)


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_securesystemslib_verifies_our_envelope_and_bundle(tmp_path: Path, kind: str) -> None:
    envelope, bundle, _, pub, _ = _run(tmp_path, kind)
    our_keyid = load_verifier(pub).keyid
    for candidate in (envelope, bundle["dsseEnvelope"]):
        parsed = sslib_dsse.Envelope.from_dict(copy.deepcopy(candidate))  # from_dict mutates its input
        assert parsed.pae() == pae(candidate["payloadType"], parsed.payload)
        accepted = parsed.verify([_sslib_key(pub, our_keyid)], 1)
        assert list(accepted) == [our_keyid]


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_securesystemslib_default_keyid_differs_and_skips_our_signature(tmp_path: Path, kind: str) -> None:
    envelope, _, _, pub, _ = _run(tmp_path, kind)
    default = _sslib_key(pub, None)
    assert default.keyid != load_verifier(pub).keyid and len(default.keyid) == 64  # hex of canonical key JSON
    with pytest.raises(sslib_exceptions.VerificationError):
        sslib_dsse.Envelope.from_dict(copy.deepcopy(envelope)).verify([default], 1)


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_securesystemslib_rejects_a_tampered_payload(tmp_path: Path, kind: str) -> None:
    envelope, _, _, pub, _ = _run(tmp_path, kind)
    parsed = sslib_dsse.Envelope.from_dict(copy.deepcopy(envelope))
    parsed.payload = parsed.payload.replace(b"model.pkl", b"model.pkm")
    with pytest.raises(sslib_exceptions.VerificationError):
        parsed.verify([_sslib_key(pub, load_verifier(pub).keyid)], 1)


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_in_toto_verifies_our_envelope(tmp_path: Path, kind: str) -> None:
    envelope, bundle, _, pub, _ = _run(tmp_path, kind)
    key = _sslib_key(pub, load_verifier(pub).keyid)
    key_dict = {"keyid": key.keyid, **key.to_dict()}
    for candidate in (envelope, bundle["dsseEnvelope"]):
        metadata = intoto_metadata.Metadata.from_dict(copy.deepcopy(candidate))
        assert isinstance(metadata, intoto_metadata.Envelope)  # chosen by payloadType application/vnd.in-toto+json
        metadata.verify_signature(key_dict)  # raises on failure


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_in_toto_rejects_tampering_and_other_keys(tmp_path: Path, kind: str) -> None:
    envelope, _, _, pub, _ = _run(tmp_path, kind)
    key = _sslib_key(pub, load_verifier(pub).keyid)
    key_dict = {"keyid": key.keyid, **key.to_dict()}
    tampered = intoto_metadata.Metadata.from_dict(copy.deepcopy(envelope))
    tampered.payload = tampered.payload.replace(b"cpu-2", b"cpu-9")
    with pytest.raises(intoto_exceptions.SignatureVerificationError):
        tampered.verify_signature(key_dict)
    _, other_pub = generate_keypair(kind, tmp_path / "other")
    other = _sslib_key(other_pub, load_verifier(pub).keyid)  # same keyid claimed, other material
    with pytest.raises(intoto_exceptions.SignatureVerificationError):
        intoto_metadata.Metadata.from_dict(copy.deepcopy(envelope)).verify_signature({"keyid": other.keyid,
                                                                                      **other.to_dict()})


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_we_verify_an_envelope_signed_by_securesystemslib_with_our_key(tmp_path: Path, kind: str) -> None:
    envelope, _, key, pub, model = _run(tmp_path, kind)
    private = load_pem_private_key(key.read_bytes(), password=None)
    signer = sslib_signer.CryptoSigner(private)  # its default (hex) keyid: only a hint for us
    theirs = sslib_dsse.Envelope(payload=sslib_dsse.Envelope.from_dict(copy.deepcopy(envelope)).payload,
                                 payload_type="application/vnd.in-toto+json", signatures={})
    theirs.sign(signer)
    path = tmp_path / "theirs.jsonl"
    path.write_text(json.dumps(theirs.to_dict()) + "\n")
    verdict = verify_attestation(path, [pub], [model], None, datetime.now(timezone.utc))
    assert verdict.ok, verdict.lines()
    assert signer.public_key.keyid != load_verifier(pub).keyid
