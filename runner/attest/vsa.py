"""SLSA Verification Summary Attestations: a signed "this passed policy P" to hand on, and reading one back.

`xrun verify … --vsa-out FILE --vsa-key KEY` writes an in-toto Statement v1 whose predicate is a
VSA v1 (https://slsa.dev/spec/v1.0/verification_summary): the verifier, when, the policy and the
input attestation by digest, PASSED or FAILED, the SLSA levels verified, and as subjects the
artifacts the verified provenance names (the model files). It holds only the fields the in-toto
attestation protobuf bindings define, so strict parsers accept it. A consumer checks its signature
with `xrun verify FILE --trust PUB` instead of re-running the whole verification.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner.attest.files import replace_all
from runner.attest.keys import Signer
from runner.attest.models import Check, Verdict
from runner.attest.policy import Policy
from runner.attest.sign import sign_statement
from runner.attest.statement import STATEMENT_TYPE, parse_rfc3339
from runner.errors import UsageError

VSA_PREDICATE_TYPE = "https://slsa.dev/verification_summary/v1"
VERIFIER_ID = "https://xrun.dev/verifiers/xrun/v1"
RESOURCE_PREFIX = "urn:xrun:run:"
PASSED, FAILED = "PASSED", "FAILED"
_LEVEL = re.compile(r"^(SLSA_[A-Z]+_LEVEL_[0-4]|FAILED)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SummaryFacts:
    """What a VSA states besides the verdict: what was verified against what, and when."""

    attestation_name: str  # the input attestation's file name (no host path)
    attestation_sha256: str
    policy_name: str | None  # the policy file's name, None when no policy was given
    policy_sha256: str | None
    trusted_signature: bool  # a trusted key verified the provenance's signature
    builders_pinned: bool  # the policy restricts the builder ids
    time_verified: datetime


@dataclass(frozen=True)
class Summary:
    """A VSA read back: its verdict, levels, policy digest, time and subjects."""

    result: str
    levels: tuple[str, ...]
    policy_sha256: str | None
    time_verified: str
    resource_uri: str
    subjects: int


def summary_facts(attestation: Path, policy_source: Path | None, policy_sha256: str | None, verdict: Verdict,
                  builders_pinned: bool, now: datetime | None = None) -> SummaryFacts:
    """The facts of a VSA for this verification of this attestation file."""
    signature = [c for c in verdict.checks if c.name.endswith("signature")]
    trusted = bool(signature) and all(c.ok and c.detail.startswith("signed by") for c in signature)
    return SummaryFacts(
        attestation_name=attestation.name, attestation_sha256=hashlib.sha256(attestation.read_bytes()).hexdigest(),
        policy_name=policy_source.name if policy_source else None, policy_sha256=policy_sha256,
        trusted_signature=trusted, builders_pinned=builders_pinned,
        time_verified=now or datetime.now(timezone.utc))


def verified_levels(verdict: Verdict, facts: SummaryFacts) -> list[str]:
    """FAILED; else Build L2 for a trusted signature from builders the policy pins, else Build L1.

    SLSA Build L2 also asks for a hosted build platform: xrun cannot see that, so it claims L2 only
    when the policy names the allowed builders (the auditor vouches for them).
    """
    if not verdict.ok:
        return [FAILED]
    level = 2 if facts.trusted_signature and facts.builders_pinned else 1
    return [f"SLSA_BUILD_LEVEL_{level}"]


def build_vsa(verdict: Verdict, facts: SummaryFacts) -> dict[str, Any]:
    """The VSA statement; its subjects are the verified provenance's subjects (none when it did not verify)."""
    statement = verdict.statement or {}
    subjects = [{"name": s["name"], "digest": dict(s["digest"])} for s in statement.get("subject", [])]
    invocation = (statement.get("predicate", {}).get("runDetails", {}).get("metadata") or {}).get("invocationId")
    predicate: dict[str, Any] = {
        "verifier": {"id": VERIFIER_ID},
        "timeVerified": facts.time_verified.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resourceUri": RESOURCE_PREFIX + quote(str(invocation or facts.attestation_name), safe=""),
        "inputAttestations": [{"uri": facts.attestation_name, "digest": {"sha256": facts.attestation_sha256}}],
        "verificationResult": PASSED if verdict.ok else FAILED,
        "verifiedLevels": verified_levels(verdict, facts),
        "slsaVersion": "1.0",
    }
    if facts.policy_sha256 is not None:
        predicate["policy"] = {"uri": facts.policy_name, "digest": {"sha256": facts.policy_sha256}}
    # A VSA must name what it is about; a failed verification has no authenticated subjects, so it
    # names the attestation file itself.
    if not subjects:
        subjects = [{"name": facts.attestation_name, "digest": {"sha256": facts.attestation_sha256}}]
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": VSA_PREDICATE_TYPE, "predicate": predicate}


def is_vsa(statement: dict[str, Any]) -> bool:
    """True when the statement's predicate is a VSA v1."""
    return statement.get("predicateType") == VSA_PREDICATE_TYPE


def vsa_problems(statement: dict[str, Any]) -> list[str]:
    """Structure problems of a VSA statement, as `field: message`; empty when valid."""
    problems = []
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type: must be {STATEMENT_TYPE}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        problems.append("subject: must be a non-empty list")
    else:
        for i, s in enumerate(subjects):
            digest = s.get("digest") if isinstance(s, dict) else None
            if not isinstance(digest, dict) or not _SHA256.match(str(digest.get("sha256", ""))):
                problems.append(f"subject[{i}].digest.sha256: must be 64 lowercase hex")
    allowed = {"_type", "subject", "predicateType", "predicate"}
    problems += [f"{k}: unknown field" for k in sorted(set(statement) - allowed)]
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        return problems + ["predicate: must be an object"]
    known = {"verifier", "timeVerified", "resourceUri", "policy", "inputAttestations", "verificationResult",
             "verifiedLevels", "dependencyLevels", "slsaVersion"}
    problems += [f"predicate.{k}: unknown field" for k in sorted(set(predicate) - known)]
    verifier = predicate.get("verifier")
    if not isinstance(verifier, dict) or not isinstance(verifier.get("id"), str) or not verifier["id"]:
        problems.append("predicate.verifier.id: required")
    stamp = predicate.get("timeVerified")
    try:
        parse_rfc3339(stamp if isinstance(stamp, str) else "")
    except ValueError:
        problems.append("predicate.timeVerified: must be an RFC 3339 time")
    if not isinstance(predicate.get("resourceUri"), str) or not predicate["resourceUri"]:
        problems.append("predicate.resourceUri: required")
    if predicate.get("verificationResult") not in (PASSED, FAILED):
        problems.append("predicate.verificationResult: must be PASSED or FAILED")
    levels = predicate.get("verifiedLevels")
    if not isinstance(levels, list) or not all(isinstance(v, str) and _LEVEL.match(v) for v in levels):
        problems.append("predicate.verifiedLevels: must be a list such as [SLSA_BUILD_LEVEL_2]")
    for field in ("policy",):
        value = predicate.get(field)
        if value is not None and not _is_descriptor(value):
            problems.append(f"predicate.{field}: must be {{uri, digest: {{sha256}}}}")
    inputs = predicate.get("inputAttestations", [])
    if not isinstance(inputs, list) or not all(_is_descriptor(v) for v in inputs):
        problems.append("predicate.inputAttestations: must be a list of {uri, digest: {sha256}}")
    return problems


def _is_descriptor(value: Any) -> bool:
    digest = value.get("digest") if isinstance(value, dict) else None
    return isinstance(digest, dict) and bool(_SHA256.match(str(digest.get("sha256", ""))))


def read_summary(statement: dict[str, Any]) -> Summary:
    """The verdict a (structurally valid) VSA states."""
    predicate = statement["predicate"]
    policy = predicate.get("policy")
    return Summary(result=predicate["verificationResult"], levels=tuple(predicate["verifiedLevels"]),
                   policy_sha256=policy["digest"]["sha256"] if isinstance(policy, dict) else None,
                   time_verified=predicate["timeVerified"], resource_uri=predicate["resourceUri"],
                   subjects=len(statement["subject"]))


def summary_checks(statement: dict[str, Any], policy_sha256: str | None) -> list[Check]:
    """A VSA given as input: its structure, the result it states, and (with --policy) whether it is for that policy."""
    problems = vsa_problems(statement)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return [Check("statement", False, "; ".join(problems[:3]) + more)]
    summary = read_summary(statement)
    checks = [Check("statement", True, f"in-toto Statement v1, SLSA VSA v1 by {statement['predicate']['verifier']['id']}, "
                                       f"{summary.subjects} subject{'s' if summary.subjects != 1 else ''}"),
              Check("summary", summary.result == PASSED,
                    f"{summary.result} at {summary.time_verified}, levels {', '.join(summary.levels) or 'none'}"
                    + (f", policy sha256:{summary.policy_sha256}" if summary.policy_sha256 else ", no policy"))]
    if policy_sha256 is not None:
        same = summary.policy_sha256 == policy_sha256
        checks.append(Check("policy: summary", same,
                            f"the VSA is for policy sha256:{policy_sha256}" if same else
                            f"the VSA is for policy sha256:{summary.policy_sha256}, not the given one "
                            f"(sha256:{policy_sha256})"))
    return checks


def write_vsa(statement: dict[str, Any], signer: Signer, path: Path) -> Path:
    """Sign the VSA (DSSE) and write it as one `.intoto.jsonl` line, atomically."""
    envelope = sign_statement(statement, signer)
    try:
        replace_all([(Path(path), (envelope.to_line() + "\n").encode("ascii"))])
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the VSA ({exc.strerror or exc}); nothing was written") from None
    return Path(path)


def summarize(verdict: Verdict, attestation: Path, policy: Policy | None, signer: Signer, out: Path,
              now: datetime | None = None) -> tuple[dict[str, Any], Path]:
    """Build, sign and write the VSA of this verification; the statement and where it went."""
    facts = summary_facts(attestation, Path(policy.source) if policy else None, policy.sha256 if policy else None,
                          verdict, bool(policy and policy.allowed_builders), now)
    statement = build_vsa(verdict, facts)
    return statement, write_vsa(statement, signer, out)
