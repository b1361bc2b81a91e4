"""Attestation: describe a run (in-toto Statement v1 + SLSA Provenance v1), sign it (DSSE), verify it.

Verbs are modules: `sign` writes `provenance.intoto.jsonl` and a Sigstore bundle, `verify` checks
them offline against trusted keys, artifacts and a `policy`. `statement` builds the payload from
plain facts and imports no other stage.
"""

from __future__ import annotations

from runner.attest.bundle import BUNDLE_MEDIA_TYPE
from runner.attest.dsse import PAYLOAD_TYPE, Envelope, pae
from runner.attest.keys import (
    KEY_KINDS,
    Signer,
    Verifier,
    generate_keypair,
    key_password,
    keyid,
    load_signer,
    load_verifier,
)
from runner.attest.models import Check, Verdict
from runner.attest.policy import Policy, load_policy
from runner.attest.sign import WrittenAttestation, sign_statement, write_attestation
from runner.attest.statement import (
    BUILD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    ProvenanceFacts,
    ResourceDescriptor,
    Subject,
    build_statement,
    builder_id_for_host,
)
from runner.attest.verify import read_attestation, verify_attestation

__all__ = [
    "BUILD_TYPE", "BUNDLE_MEDIA_TYPE", "KEY_KINDS", "PAYLOAD_TYPE", "PREDICATE_TYPE", "STATEMENT_TYPE",
    "Check", "Envelope", "Policy", "ProvenanceFacts", "ResourceDescriptor", "Signer", "Subject", "Verdict",
    "Verifier", "WrittenAttestation", "build_statement", "builder_id_for_host", "generate_keypair", "key_password",
    "keyid",
    "load_policy", "load_signer", "load_verifier", "pae", "read_attestation", "sign_statement",
    "verify_attestation", "write_attestation",
]
