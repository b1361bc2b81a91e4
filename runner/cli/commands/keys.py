"""`xrun keygen` and `xrun verify`: signing keys, offline verification, the VSA and the registry gate."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from runner.attest import Verdict, generate_keypair, load_policy, load_signer, load_verifier, verify_attestation
from runner.attest.password import key_password
from runner.attest.timestamp import load_trusted_root, load_tsa_chain, rfc3339
from runner.attest.vsa import read_summary, summarize
from runner.cli.options import split_keys
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
    """Verify an attestation or a VSA; optionally write a VSA and register the model; exit 3 when a check fails."""
    trust, vsa_key = split_keys(args, "the verification summary", "--vsa-key", args.vsa_key)
    if not trust and not args.allow_unsigned:
        raise UsageError("give at least one trusted public key with --trust xrun.pub (or --allow-unsigned)")
    _check_gate_args(args, vsa_key)
    # The verifier's own key is loaded first: a wrong password must not cost a verification.
    signer = load_signer(vsa_key, key_password()) if vsa_key and (args.vsa_out or args.register) else None
    policy = load_policy(args.policy) if args.policy else None
    tsas = [load_tsa_chain(p) for p in args.tsa_certs]
    tsas += load_trusted_root(args.trusted_root) if args.trusted_root else []
    verdict = verify_attestation(args.attestation, trust, args.artifacts, policy,
                                 allow_unsigned=args.allow_unsigned, tsas=tsas)
    out: dict[str, Any] = verdict.to_json()
    lines = verdict.lines()
    if signer is not None:
        target = args.vsa_out or Path(tempfile.mkdtemp(prefix="xrun-vsa-")) / "vsa.intoto.jsonl"
        try:
            statement, vsa = summarize(verdict, Path(args.attestation), policy, signer, target)
            if args.vsa_out:
                out["vsa"] = str(vsa)
                lines.append(f"wrote the {statement['predicate']['verificationResult']} verification summary {vsa}")
            if args.register:
                lines.append(_register(args, verdict, statement, vsa, out))
        finally:
            if not args.vsa_out:  # the VSA only travelled to the registry
                shutil.rmtree(target.parent, ignore_errors=True)
    print(render(out) if args.json else "\n".join(lines))
    return verdict.exit_code


def _check_gate_args(args: argparse.Namespace, vsa_key: Path | None) -> None:
    """The VSA and registry flags' requirements, checked before any work."""
    if (args.vsa_out or args.register) and not vsa_key:
        raise UsageError("--vsa-out/--register sign a verification summary: give the verifier's private key with "
                         "--key KEY")
    if args.register and not args.mlflow:
        raise UsageError("--register NAME needs the MLflow server: --mlflow URI")
    if args.register and not args.artifacts:
        raise UsageError("--register NAME registers the verified model files: give them with --artifact FILE")


def _register(args: argparse.Namespace, verdict: Verdict, vsa_statement: dict[str, Any], vsa: Path,
              out: dict[str, Any]) -> str:
    """The registry gate: only a passed verification reaches the registry."""
    from runner.trackers.registry import Evidence, register_verified

    if not verdict.ok:
        out["registered"] = None
        return f"NOT REGISTERED: the verification failed; nothing was sent to {args.mlflow}"
    summary = read_summary(vsa_statement)
    evidence = Evidence(model_files=tuple(args.artifacts), attestation=Path(args.attestation), vsa=vsa,
                        result=summary.result, policy_sha256=summary.policy_sha256, levels=summary.levels,
                        signed_at=rfc3339(verdict.timestamp.time) if verdict.timestamp else None)
    registered = register_verified(args.mlflow, args.register, evidence)
    out["registered"] = registered.to_json()
    state = "already registered as" if registered.existing else "registered as"
    return f"{state} model {registered.name!r} version {registered.version} at {args.mlflow}"
