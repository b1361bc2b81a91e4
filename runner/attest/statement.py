"""The in-toto Statement v1 with a SLSA Provenance v1 predicate, built from plain facts.

This module imports no other stage: the pipeline maps its stage results into `ProvenanceFacts`
(see runner/provenance.py), so the statement's shape is decided here alone. Field meanings are
documented in docs/buildtype.md.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from runner.resources import resource_dir
from runner.yamlfile import field_path

if TYPE_CHECKING:  # loaded by the first check (prepare_check: while a run's training runs, off its critical path)
    import jsonschema

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://xrun.dev/buildtypes/experiment/v1"
BUILDER_ID_PREFIX = "https://xrun.dev/builders/host/v1/"
SCHEMA_FILE = "statement.schema.json"

_HEX = re.compile(r"^[0-9a-f]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$")


@dataclass(frozen=True)
class ResourceDescriptor:
    """in-toto ResourceDescriptor v1: at least one of uri, digest, content must be set."""

    name: str | None = None
    uri: str | None = None
    digest: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    download_location: str | None = None
    media_type: str | None = None
    content: bytes | None = None  # small inline content (< 1 KB per the spec)

    def to_json(self) -> dict[str, Any]:
        """camelCase keys, empty fields omitted (unset, null and empty mean the same in SLSA)."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.uri:
            out["uri"] = self.uri
        if self.digest:
            out["digest"] = dict(self.digest)
        if self.content is not None:
            out["content"] = base64.b64encode(self.content).decode("ascii")
        if self.download_location:
            out["downloadLocation"] = self.download_location
        if self.media_type:
            out["mediaType"] = self.media_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Subject:
    """One output file: its path relative to /outputs and its sha256 (hex)."""

    name: str
    sha256: str


@dataclass(frozen=True)
class ProvenanceFacts:
    """Everything the predicate says, as plain data from the pipeline."""

    manifest: dict[str, Any]  # parsed manifest as the user wrote it
    manifest_sha256: str  # digest of the manifest file bytes
    internal: dict[str, Any]  # internalParameters: what xrun decided
    dependencies: tuple[ResourceDescriptor, ...]  # resolvedDependencies
    builder_id: str
    xrun_version: str
    builder_dependencies: tuple[ResourceDescriptor, ...]
    invocation_id: str
    started_on: datetime  # aware
    finished_on: datetime  # aware
    byproducts: tuple[ResourceDescriptor, ...] = ()
    seed: int | None = None  # a seed given on the command line (seed sweeps): overrides the manifest's seeds.global
    manifest_path: str | None = None  # the manifest's path in its git repository (from the top-level), when in one


def builder_id_for_host(hostname: str) -> str:
    """The builder id of "xrun on this host": one id per host, since trust is per machine."""
    host = hostname.strip().lower().rstrip(".") or "unknown"
    return BUILDER_ID_PREFIX + quote(host, safe="")


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`; fractional seconds only when there are some."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    utc = moment.astimezone(timezone.utc)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (as found in statements) into an aware datetime."""
    match = _TIMESTAMP.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micro = int(((match[7] or "") + "000000")[:6])
    offset = timedelta(0)
    if match[9]:
        offset = timedelta(hours=int(match[10]), minutes=int(match[11])) * (-1 if match[9] == "-" else 1)
    # A leap second (…:60) is clamped: one second does not change an age check.
    return datetime(year, month, day, hour, minute, min(second, 59), micro, timezone(offset))


def build_statement(subjects: list[Subject], facts: ProvenanceFacts) -> dict[str, Any]:
    """The Statement dict; raises ValueError when the facts break the contract (a bug upstream)."""
    problems = fact_problems(subjects, facts)
    if problems:
        raise ValueError("cannot describe the run: " + "; ".join(problems))
    run_details: dict[str, Any] = {
        "builder": {
            "id": facts.builder_id,
            "version": {"xrun": facts.xrun_version},
        },
        "metadata": {
            "invocationId": facts.invocation_id,
            "startedOn": rfc3339(facts.started_on),
            "finishedOn": rfc3339(facts.finished_on),
        },
    }
    if facts.builder_dependencies:
        run_details["builder"]["builderDependencies"] = [d.to_json() for d in facts.builder_dependencies]
    if facts.byproducts:
        run_details["byproducts"] = [d.to_json() for d in facts.byproducts]
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in sorted(subjects, key=lambda s: s.name)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "manifest": facts.manifest,
                    "manifestDigest": {"sha256": facts.manifest_sha256},
                    **({"seed": facts.seed} if facts.seed is not None else {}),
                    **({"manifestPath": facts.manifest_path} if facts.manifest_path else {}),
                },
                "internalParameters": facts.internal,
                "resolvedDependencies": [d.to_json() for d in facts.dependencies],
            },
            "runDetails": run_details,
        },
    }
    # Round-trip through strict JSON: a YAML date or a NaN in the manifest must fail here, not at signing.
    try:
        statement = json.loads(json.dumps(statement, allow_nan=False, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot describe the run: a value is not plain JSON ({exc})") from None
    # Never sign what our own verifier would reject.
    problems = statement_problems(statement)
    if problems:
        raise ValueError("the statement does not match schemas/statement.schema.json: " + "; ".join(problems[:5]))
    return statement


def fact_problems(subjects: list[Subject], facts: ProvenanceFacts) -> list[str]:
    """Contract violations in the pipeline's facts, one sentence each."""
    problems: list[str] = []
    if not subjects:
        problems.append("no subjects: a run attests at least one output file")
    names: set[str] = set()
    for s in subjects:
        if not s.name:
            problems.append("a subject has an empty name")
        elif s.name in names:
            problems.append(f"subject {s.name!r} appears twice")
        names.add(s.name)
        if not _SHA256.fullmatch(s.sha256 or ""):
            problems.append(f"subject {s.name!r}: sha256 must be 64 lowercase hex digits")
    if not _SHA256.fullmatch(facts.manifest_sha256 or ""):
        problems.append("manifest_sha256 must be 64 lowercase hex digits")
    if not isinstance(facts.manifest, dict):
        problems.append("the manifest must be a mapping")
    shared = {"manifest", "manifestDigest", "manifestPath", "seed"} & set(facts.internal)
    if shared:
        problems.append(f"internalParameters repeat external keys: {', '.join(sorted(shared))}")
    if not _URI.fullmatch(facts.builder_id or ""):
        problems.append(f"builder id {facts.builder_id!r} is not a URI")
    if not facts.invocation_id:
        problems.append("invocation_id is empty")
    for label, moment in (("started_on", facts.started_on), ("finished_on", facts.finished_on)):
        if moment.tzinfo is None or moment.utcoffset() is None:
            problems.append(f"{label} must be timezone-aware")
    if not problems and facts.finished_on < facts.started_on:
        problems.append("finished_on is before started_on")
    groups = (("resolvedDependencies", facts.dependencies), ("builderDependencies", facts.builder_dependencies),
              ("byproducts", facts.byproducts))
    for label, group in groups:
        problems += descriptor_problems(label, group)
    return problems


def descriptor_problems(label: str, descriptors: tuple[ResourceDescriptor, ...]) -> list[str]:
    """ResourceDescriptor rules: uri, digest or content; hex digests; unique names (policies key on them)."""
    problems: list[str] = []
    names: set[str] = set()
    for d in descriptors:
        shown = f"{label} {d.name or d.uri or '?'!r}"
        if not (d.uri or d.digest or d.content is not None):
            problems.append(f"{shown}: needs a uri, a digest or content (in-toto ResourceDescriptor)")
        for algorithm, value in d.digest.items():
            if not isinstance(value, str) or not _HEX.fullmatch(value):
                problems.append(f"{shown}: digest {algorithm} must be lowercase hex")
        for uri in (d.uri, d.download_location):
            if uri and not _URI.fullmatch(uri):
                problems.append(f"{shown}: {uri!r} is not a URI")
        if d.name:
            if d.name in names:
                problems.append(f"{shown}: the name is used twice")
            names.add(d.name)
    return problems


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    # The schema ships with xrun and is checked against the 2020-12 meta-schema by the test suite
    # (tests/test_attest_statement.py); checking it again on every run cost ~0.2 s of a warm re-run.
    schema: dict[str, Any] = json.loads((resource_dir("schemas") / SCHEMA_FILE).read_text(encoding="utf-8"))
    return schema


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    # Same rules, resolved once: per-instance $ref lookups were half the time on 1,000 subjects.
    import jsonschema

    return jsonschema.Draft202012Validator(inline_refs(_schema()))


@functools.lru_cache(maxsize=1)
def _subject_validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    schema = _schema()
    return jsonschema.Draft202012Validator(inline_refs({"$defs": schema["$defs"], "$ref": "#/$defs/subject"}))


def prepare_check() -> None:
    """Load jsonschema and build the statement's validators now, so that the first check does not wait for them.

    Meant for a background thread: an error here is left for the check itself to raise (nothing is cached then).
    """
    with contextlib.suppress(Exception):
        _validator()
        _subject_validator()


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every local `#/$defs/…` reference replaced by its target (ours has no recursion)."""
    defs = schema.get("$defs", {})

    def inline(node: Any, depth: int) -> Any:
        if depth > 32:
            raise ValueError("recursive $ref in the statement schema")
        if isinstance(node, list):
            return [inline(item, depth) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = inline(defs[ref[len("#/$defs/"):]], depth + 1)
            rest = {k: inline(v, depth) for k, v in node.items() if k != "$ref"}
            return {"allOf": [target], **rest} if rest else target
        return {k: inline(v, depth) for k, v in node.items() if k != "$defs"}

    return inline(schema, 0)


# A subject of exactly the shape xrun writes; the schema's subject definition accepts it.
_PLACEHOLDER_SUBJECT = {"name": "placeholder", "digest": {"sha256": "0" * 64}}


def _is_plain_subject(subject: Any) -> bool:
    if type(subject) is not dict or subject.keys() != {"name", "digest"}:
        return False
    name, digest = subject["name"], subject["digest"]
    return (type(name) is str and name != "" and type(digest) is dict and digest.keys() == {"sha256"}
            and type(digest["sha256"]) is str and _SHA256.fullmatch(digest["sha256"]) is not None)


def statement_problems(statement: Any) -> list[str]:
    """Schema violations of a statement, each as `field.path: message`; empty when valid."""
    found: list[tuple[list[str], str]] = []
    main = statement
    subjects = statement.get("subject") if isinstance(statement, dict) else None
    if isinstance(subjects, list) and subjects:
        # Same verdict, faster: plain subjects pass the schema by construction, so only the others
        # go through jsonschema (1,000 subjects otherwise cost ~100 ms).
        main = {**statement, "subject": [_PLACEHOLDER_SUBJECT]}
        for index, subject in enumerate(subjects):
            if not _is_plain_subject(subject):
                for error in _subject_validator().iter_errors(subject):
                    path = ["subject", index, *error.absolute_path]
                    found.append((list(map(str, path)), f"{field_path(path)}: {_short(error)}"))
    for error in _validator().iter_errors(main):
        path = list(error.absolute_path)
        found.append((list(map(str, path)), f"{field_path(path) or '(statement)'}: {_short(error)}"))
    problems = [text for _, text in sorted(found, key=lambda item: item[0])]
    if not problems:
        definition = statement["predicate"]["buildDefinition"]
        shared = set(definition.get("externalParameters") or {}) & set(definition.get("internalParameters") or {})
        if shared:
            problems.append(f"predicate.buildDefinition: {', '.join(sorted(shared))} "
                            "in both external and internal parameters")
    return problems


def _short(error: jsonschema.ValidationError) -> str:
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


def parse_statement(payload: bytes) -> dict[str, Any]:
    """Parse the signed payload bytes strictly: UTF-8, no duplicate keys, no NaN, an object."""
    return loads_strict(payload, "the payload")


def loads_strict(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from bytes, refusing what two parsers could read differently."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not JSON ({exc})") from None
    except _Ambiguous as exc:
        raise ValueError(f"{what} {exc}") from None
    except RecursionError:  # a hostile file nested thousands deep: the parser's own stack gives out
        raise ValueError(f"{what} nests arrays or objects too deeply to be an attestation") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


class _Ambiguous(ValueError):
    """JSON that strict readers refuse."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a duplicated key: refuse the ambiguity.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Ambiguous(f"repeats the key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Ambiguous(f"contains {name}, which is not JSON")
