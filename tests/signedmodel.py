"""A signed provenance of one small model file: what the attestation, VSA, cosign and interop tests start from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.attest import generate_keypair, load_signer
from runner.attest.samples import sample_facts
from runner.attest.sign import write_attestation
from runner.attest.statement import Subject, build_statement


@dataclass(frozen=True)
class SignedModel:
    key: Path
    pub: Path
    model: Path  # model.pkl, whose bytes are b"weights"
    statement: dict[str, Any]
    jsonl: Path  # the DSSE envelope (.intoto.jsonl)
    bundle: Path  # the Sigstore bundle


def signed_model(folder: Path, kind: str = "ecdsa-p256", stem: str = "p") -> SignedModel:
    """model.pkl in folder, a key pair in folder/keys, its statement signed as STEM.intoto.jsonl + STEM.sigstore.json."""
    key, pub = generate_keypair(kind, folder / "keys")
    model = folder / "model.pkl"
    model.write_bytes(b"weights")
    statement = build_statement([Subject("model.pkl", hashlib.sha256(b"weights").hexdigest())], sample_facts())
    jsonl, bundle = folder / f"{stem}.intoto.jsonl", folder / f"{stem}.sigstore.json"
    write_attestation(statement, load_signer(key), jsonl, bundle)
    return SignedModel(key, pub, model, statement, jsonl, bundle)
