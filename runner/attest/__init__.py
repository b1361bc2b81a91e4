"""Attestation: describe a run (in-toto Statement v1 + SLSA Provenance v1), sign it (DSSE), verify it.

Verbs are modules: `sign` writes `provenance.intoto.jsonl` and a Sigstore bundle, `verify` checks
them offline against trusted keys, artifacts and a `policy`. `statement` builds the payload from
plain facts and imports no other stage.

The names below are loaded on first use (PEP 562): `xrun run` signs but never evaluates a policy,
and importing every verb up front cost a warm re-run tens of milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "BUNDLE_MEDIA_TYPE": "bundle",
    "PAYLOAD_TYPE": "dsse", "Envelope": "dsse", "pae": "dsse",
    "KEY_KINDS": "keys", "Signer": "keys", "Verifier": "keys", "generate_keypair": "keys", "key_password": "keys",
    "is_public_key_file": "keys", "keyid": "keys", "load_signer": "keys", "load_verifier": "keys",
    "Check": "models", "Verdict": "models",
    "Policy": "policy", "load_policy": "policy",
    "WrittenAttestation": "sign", "sign_statement": "sign", "write_attestation": "sign",
    "BUILD_TYPE": "statement", "PREDICATE_TYPE": "statement", "STATEMENT_TYPE": "statement",
    "ProvenanceFacts": "statement", "ResourceDescriptor": "statement", "Subject": "statement",
    "build_statement": "statement", "builder_id_for_host": "statement",
    "read_attestation": "verify", "verify_attestation": "verify",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'runner.attest' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"runner.attest.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from runner.attest.bundle import BUNDLE_MEDIA_TYPE
    from runner.attest.dsse import PAYLOAD_TYPE, Envelope, pae
    from runner.attest.keys import (KEY_KINDS, Signer, Verifier, generate_keypair, is_public_key_file, key_password,
                                    keyid, load_signer, load_verifier)
    from runner.attest.models import Check, Verdict
    from runner.attest.policy import Policy, load_policy
    from runner.attest.sign import WrittenAttestation, sign_statement, write_attestation
    from runner.attest.statement import (BUILD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, ProvenanceFacts,
                                         ResourceDescriptor, Subject, build_statement, builder_id_for_host)
    from runner.attest.verify import read_attestation, verify_attestation
