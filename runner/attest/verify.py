"""Verify an attestation offline: trusted signature, payload type, structure, artifacts, policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runner.attest.bundle import from_bundle, is_bundle
from runner.attest.dsse import PAYLOAD_TYPE, Envelope, verify_signatures
from runner.attest.keys import Verifier, load_verifier
from runner.attest.models import Check, Verdict
from runner.attest.policy import CLOCK_SKEW, Policy, TimestampRequirement
from runner.attest.statement import loads_strict, parse_rfc3339, parse_statement, statement_problems
from runner.attest.timestamp import Timestamp, TrustedTsa, rfc3339, verify_timestamp
from runner.attest.vsa import is_vsa, summary_checks
from runner.errors import UsageError
from runner.userfiles import read_user_file
from runner.hashing import sha256_file

MAX_ATTESTATION_FILE = 64 << 20
NOT_AUTHENTICATED = "not checked: the payload is not authenticated (see the signature check)"


@dataclass(frozen=True)
class Attestation:
    """The envelopes read from a .intoto.jsonl file, a single envelope, or a Sigstore bundle."""

    source: str
    format: str  # "jsonl", "envelope" or "bundle"
    envelopes: tuple[Envelope, ...]
    hint: str = ""  # the bundle's publicKey.hint
    timestamps: tuple[bytes, ...] = ()  # the bundle's RFC 3161 replies (DER), over the one signature


@dataclass(frozen=True)
class EnvelopeResult:
    """The checks of one envelope, and its statement when it is authenticated and well formed."""

    checks: list[Check]
    statement: dict[str, Any] | None
    timestamp: Timestamp | None = None


def read_attestation(path: Path | str) -> Attestation:
    """Read the attestation file; UsageError when unreadable, ValueError when malformed."""
    path = Path(path)
    data = read_user_file(path, "attestation file", max_bytes=MAX_ATTESTATION_FILE,
                          hint="; give provenance.intoto.jsonl or provenance.sigstore.json")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        whole = loads_strict(data, "the file") if text.strip().startswith("{") else None
    except ValueError:
        whole = None  # several JSON lines (or broken JSON): read line by line below
    if whole is not None and is_bundle(whole):
        content = from_bundle(whole)
        return Attestation(str(path), "bundle", (content.envelope,), content.hint, content.timestamps)
    if whole is not None:
        kind = "jsonl" if "\n" not in text.strip() else "envelope"
        return Attestation(str(path), kind, (Envelope.from_json(whole),))
    envelopes = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            envelopes.append(Envelope.from_json(loads_strict(line.encode("utf-8"), "the envelope")))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    if not envelopes:
        raise ValueError("no DSSE envelope in the file")
    return Attestation(str(path), "jsonl", tuple(envelopes))


def verify_attestation(attestation: Path | str, keys: list[Path], artifacts: list[Path],
                       policy: Policy | None = None, now: datetime | None = None, *,
                       allow_unsigned: bool = False, tsas: list[TrustedTsa] | None = None) -> Verdict:
    """Every check of the attestation; bad inputs (keys, artifacts, file) raise UsageError.

    `tsas` are the Time-Stamping Authorities trusted for the bundle's RFC 3161 timestamp.
    """
    verifiers = [load_verifier(k) for k in keys]
    digests = [(Path(a), _artifact_digest(Path(a))) for a in artifacts]
    now = now or datetime.now(timezone.utc)
    try:
        att = read_attestation(attestation)
    except ValueError as exc:
        return Verdict((Check("format", False, f"{attestation}: {exc}"),), str(attestation))
    count = len(att.envelopes)
    checks = [Check("format", True, f"{count} DSSE envelope{'s' if count > 1 else ''} ({_format_name(att.format)})")]
    statements = []
    timestamp = None
    time = TimeEvidence(att.timestamps, att.format, tsas or [], policy.timestamp_requirement() if policy else None)
    for i, envelope in enumerate(att.envelopes):
        result = verify_envelope(envelope, verifiers, policy, now, allow_unsigned=allow_unsigned, hint=att.hint,
                                 time=time)
        prefix = f"envelope {i + 1}: " if count > 1 else ""
        checks += [Check(prefix + c.name, c.ok, c.detail) for c in result.checks]
        if result.statement is not None:
            statements.append(result.statement)
        timestamp = timestamp or result.timestamp
    checks += [artifact_check(path, digest, statements) for path, digest in digests]
    return Verdict(tuple(checks), str(attestation), statements[0] if len(statements) == 1 else None, timestamp)


@dataclass(frozen=True)
class TimeEvidence:
    """What trusted time can be checked: the bundle's timestamps, the trusted TSAs, the policy's demand."""

    replies: tuple[bytes, ...] = ()
    format: str = "bundle"
    trusted: list[TrustedTsa] = field(default_factory=list)
    requirement: TimestampRequirement | None = None

    @property
    def asked(self) -> bool:
        """True when there is anything to check or report."""
        return bool(self.replies or self.trusted or self.requirement)


def verify_envelope(envelope: Envelope, verifiers: list[Verifier], policy: Policy | None, now: datetime, *,
                    allow_unsigned: bool = False, hint: str = "", time: TimeEvidence = TimeEvidence()) -> EnvelopeResult:
    """The checks of one envelope, in DSSE order: signature, timestamp, payload type, then the parsed statement."""
    signature = signature_check(envelope, verifiers, allow_unsigned, hint)
    # The payload type is signed (it is part of the PAE): without a verified signature it says nothing.
    payload_type = (Check("payloadType", envelope.payload_type == PAYLOAD_TYPE,
                          f"{envelope.payload_type!r}" + ("" if envelope.payload_type == PAYLOAD_TYPE
                                                          else f", expected {PAYLOAD_TYPE!r}"))
                    if signature.ok else Check("payloadType", False, NOT_AUTHENTICATED))
    timestamp, time_checks = timestamp_checks(envelope, signature.ok and bool(envelope.signatures), time, now)
    checks = [signature, *time_checks, payload_type]
    rules = policy.rules(now) if policy is not None else []
    if not (signature.ok and payload_type.ok):
        skipped = NOT_AUTHENTICATED if not signature.ok else "not checked: unsupported payloadType"
        checks.append(Check("statement", False, skipped))
        checks += [Check(r.name, False, skipped) for r in rules]
        return EnvelopeResult(checks, None)
    summary = _vsa_checks(envelope.payload, policy)
    if summary is not None:  # a VSA: the provenance rules do not apply, its own result does
        return EnvelopeResult(checks + summary[1], summary[0], timestamp)
    statement, structure = statement_check(envelope.payload)
    checks.append(structure)
    if statement is None:
        checks += [Check(r.name, False, "not checked: the statement is malformed") for r in rules]
        return EnvelopeResult(checks, None)
    checks += [rule.check(statement) for rule in rules]
    if timestamp is not None:
        checks.append(finished_before_check(statement, timestamp))
    return EnvelopeResult(checks, statement, timestamp)


def timestamp_checks(envelope: Envelope, authenticated: bool, time: TimeEvidence,
                     now: datetime) -> tuple[Timestamp | None, list[Check]]:
    """The RFC 3161 timestamp over the signature, verified against trusted TSAs; then the policy's age limit."""
    if not time.asked:
        return None, []
    stamp, check = _timestamp_check(envelope, authenticated, time)
    if time.requirement is None:
        return stamp, [check]
    age = (time.requirement.age_check(stamp.time, now) if stamp is not None
           else Check("policy: timestamp age", False, "not checked: no verified timestamp"))
    return stamp, [check, age]


def _timestamp_check(envelope: Envelope, authenticated: bool, time: TimeEvidence) -> tuple[Timestamp | None, Check]:
    name, required = "timestamp", time.requirement is not None
    if not authenticated:
        return None, Check(name, False, "not checked: no authenticated signature to timestamp")
    if not time.replies:
        where = "" if time.format == "bundle" else " (a .intoto.jsonl has no room for one: give provenance.sigstore.json)"
        return None, Check(name, not (required or time.trusted),
                           f"the attestation carries no RFC 3161 timestamp{where}; runs get one with --tsa URL")
    count = f"{len(time.replies)} RFC 3161 timestamp{'s' if len(time.replies) > 1 else ''}"
    if not time.trusted:
        return None, Check(name, not required, f"the bundle carries {count}, NOT CHECKED: trust its TSA with "
                                               "--tsa-cert CHAIN.pem or --trusted-root trusted_root.json")
    problems = []
    for reply in time.replies:
        try:
            stamp = verify_timestamp(reply, envelope.signatures[0].sig, time.trusted)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        return stamp, Check(name, True, f"signed no later than {rfc3339(stamp.time)} (RFC 3161, {stamp.authority}, "
                                        f"trusted via {stamp.source})")
    return None, Check(name, False, f"{count}, none valid for this signature: {'; '.join(problems)}")


def finished_before_check(statement: dict[str, Any], stamp: Timestamp) -> Check:
    """The run cannot have finished after the TSA saw its signature (a back-dated or forged finishedOn)."""
    name = "timestamp order"
    finished = (statement.get("predicate", {}).get("runDetails", {}).get("metadata") or {}).get("finishedOn")
    try:
        moment = parse_rfc3339(finished if isinstance(finished, str) else "")
    except ValueError:
        return Check(name, True, "the statement records no finishedOn to compare")
    if moment - stamp.time > CLOCK_SKEW:
        return Check(name, False, f"the statement says the run finished {finished}, after the TSA's time "
                                  f"{rfc3339(stamp.time)}")
    return Check(name, True, f"finished {finished}, timestamped {rfc3339(stamp.time)}")


def signature_check(envelope: Envelope, verifiers: list[Verifier], allow_unsigned: bool, hint: str = "") -> Check:
    """PASS when a trusted key verifies a signature over the PAE (keyids are only hints)."""
    name = "signature"
    accepted = verify_signatures(envelope, verifiers)
    if accepted:
        key, claimed = accepted[0].key, envelope.signatures[accepted[0].index].keyid
        detail = f"{key.kind} key {key.keyid} ({key.source})"
        if claimed not in ("", key.keyid):
            detail += f"; the envelope's keyid hint {claimed!r} differs"
        if hint and hint != key.keyid:
            detail += f"; the bundle's key hint {hint!r} differs"
        return Check(name, True, "signed by " + detail)
    if not envelope.signatures:
        if allow_unsigned:
            return Check(name, True, "UNSIGNED: the envelope has no signature (accepted: --allow-unsigned)")
        return Check(name, False, "UNSIGNED: the envelope has no signature; sign runs with --key or "
                                  "XRUN_SIGNING_KEY, or pass --allow-unsigned to accept an unsigned attestation")
    if not verifiers:
        if allow_unsigned:
            return Check(name, True, f"NOT CHECKED: no trusted key given; {len(envelope.signatures)} signature(s) "
                                     "ignored (--allow-unsigned)")
        return Check(name, False, "no trusted key given; pass the signer's public key with --key")
    keyids = ", ".join(sorted({s.keyid or "(none)" for s in envelope.signatures}))
    trusted = ", ".join(v.keyid for v in verifiers)
    return Check(name, False, f"no signature verifies with a trusted key (signature keyids: {keyids}; "
                              f"trusted: {trusted}); the payload, its type or the signature was changed, "
                              "or it was signed by another key")


def _vsa_checks(payload: bytes, policy: Policy | None) -> tuple[dict[str, Any] | None, list[Check]] | None:
    """The checks of a VSA payload, None when the payload is not a VSA."""
    try:
        parsed = parse_statement(payload)
    except ValueError:
        return None  # statement_check reports it
    if not is_vsa(parsed):
        return None
    checks = summary_checks(parsed, policy.sha256 if policy is not None else None)
    return (parsed if all(c.name != "statement" or c.ok for c in checks) else None), checks


def statement_check(payload: bytes) -> tuple[dict[str, Any] | None, Check]:
    """Parse the exact signed bytes and check them against schemas/statement.schema.json."""
    try:
        statement = parse_statement(payload)
    except ValueError as exc:
        return None, Check("statement", False, str(exc))
    problems = statement_problems(statement)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return None, Check("statement", False, "; ".join(problems[:3]) + more)
    predicate = statement["predicate"]
    detail = (f"in-toto Statement v1, SLSA Provenance v1, {len(statement['subject'])} subject"
              f"{'s' if len(statement['subject']) != 1 else ''}, buildType {predicate['buildDefinition']['buildType']}")
    return statement, Check("statement", True, detail)


def artifact_check(path: Path, digest: str, statements: list[dict[str, Any]]) -> Check:
    """PASS when the artifact's sha256 is a subject of an authenticated statement; says which."""
    name = f"artifact {path}"
    if not statements:
        return Check(name, False, "not checked: no authenticated statement")
    subjects = [s for st in statements for s in st["subject"]]
    for subject in subjects:
        if subject["digest"].get("sha256") == digest:
            return Check(name, True, f"sha256:{digest} is subject {subject['name']!r}")
    same_name = [s for s in subjects if s.get("name") in (path.name, str(path))]
    if same_name:
        recorded = same_name[0]["digest"].get("sha256")
        return Check(name, False, f"sha256:{digest} differs from subject {same_name[0]['name']!r} "
                                  f"(recorded sha256:{recorded}): the file changed after the run")
    return Check(name, False, f"sha256:{digest} is not among the {len(subjects)} subjects")


def _artifact_digest(path: Path) -> str:
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give the artifact files (--artifact FILE, repeatable)")
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such artifact file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied reading the artifact") from None


def _format_name(kind: str) -> str:
    return {"bundle": "Sigstore bundle", "jsonl": "in-toto JSON lines", "envelope": "DSSE JSON"}[kind]
