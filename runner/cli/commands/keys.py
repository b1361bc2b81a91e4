"""`xrun keygen` and `xrun verify`: signing keys and offline verification."""

from __future__ import annotations

import argparse

from runner.attest import generate_keypair, load_policy, load_verifier, verify_attestation
from runner.cli.options import key_password
from runner.errors import UsageError
from runner.report import text
from runner.report.json import render
from runner.report.views import KeyPair


def keygen(args: argparse.Namespace) -> int:
    """Write xrun.key (0600; encrypted with $XRUN_KEY_PASSWORD when set) and xrun.pub."""
    password = key_password()
    key_path, pub_path = generate_keypair(args.kind, args.out, password)
    pair = KeyPair(key_path, pub_path, load_verifier(pub_path).keyid, args.kind, bool(password))
    print(render(pair) if args.json else text.keypair(pair))
    return 0


def verify(args: argparse.Namespace) -> int:
    """Verify an attestation: signature, structure, artifacts, policy; exit 3 when a check fails."""
    if not args.keys and not args.allow_unsigned:
        raise UsageError("give at least one trusted public key with --key xrun.pub (or --allow-unsigned)")
    policy = load_policy(args.policy) if args.policy else None
    verdict = verify_attestation(args.attestation, args.keys, args.artifacts, policy,
                                 allow_unsigned=args.allow_unsigned)
    print(render(verdict) if args.json else "\n".join(verdict.lines()))
    return verdict.exit_code
