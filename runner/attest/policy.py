"""Verification policies: a YAML/JSON file → small rules, each checking one thing of a statement."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jsonschema

from runner.attest.models import Check
from runner.attest.statement import parse_rfc3339
from runner.errors import ManifestError
from runner.userfiles import read_user_file
from runner.resources import resource_dir
from runner.yamlfile import field_path, parse_yaml

SCHEMA_FILE = "policy.schema.json"
# Clocks disagree a little; a statement from further in the future than this is suspect.
CLOCK_SKEW = timedelta(minutes=5)
_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1),
          "m": timedelta(minutes=1), "s": timedelta(seconds=1)}
MAX_POLICY_FILE = 1 << 20


class Rule(Protocol):
    """One policy rule: it looks at a (verified) statement and says PASS or FAIL."""

    @property
    def name(self) -> str: ...

    def check(self, statement: dict[str, Any]) -> Check: ...


# --- reading the statement -------------------------------------------------------------------

def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def dependencies_named(statement: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """resolvedDependencies entries with this exact name (see docs/buildtype.md for the names)."""
    deps = _dig(statement, "predicate", "buildDefinition", "resolvedDependencies") or []
    return [d for d in deps if isinstance(d, dict) and d.get("name") == name]


def split_digest(text: str) -> tuple[str, str]:
    """`sha256:abc…` → ("sha256", "abc…")."""
    algorithm, _, value = text.partition(":")
    return algorithm, value.lower()


# --- the rules -------------------------------------------------------------------------------

@dataclass(frozen=True)
class AllowedBuilders:
    """runDetails.builder.id equals one of the ids or matches one of the globs (`*`, `?`, `[…]`)."""

    patterns: tuple[str, ...]

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return "policy: builder"

    def check(self, statement: dict[str, Any]) -> Check:
        builder = _dig(statement, "predicate", "runDetails", "builder", "id")
        if not isinstance(builder, str):
            return Check(self.name, False, "the statement names no builder id")
        for pattern in self.patterns:
            if builder == pattern or (_is_glob(pattern) and fnmatch.fnmatchcase(builder, pattern)):
                return Check(self.name, True, f"{builder} is allowed by {pattern}")
        return Check(self.name, False, f"{builder} is not among the allowed builders ({', '.join(self.patterns)})")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True)
class AllowedBaseImages:
    """The `base-image` dependency's sha256 is one of the allowed digests."""

    digests: tuple[str, ...]  # "sha256:<hex>"

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return "policy: base image"

    def check(self, statement: dict[str, Any]) -> Check:
        found = dependencies_named(statement, "base-image")
        if len(found) != 1:
            return Check(self.name, False, f"expected one resolvedDependency named base-image, found {len(found)}")
        value = _dig(found[0], "digest", "sha256")
        shown = found[0].get("uri") or "base-image"
        if not isinstance(value, str):
            return Check(self.name, False, f"{shown} has no sha256 digest")
        if f"sha256:{value}" in self.digests:
            return Check(self.name, True, f"{shown} has an allowed digest")
        return Check(self.name, False, f"{shown}: sha256:{value} is not an allowed base image digest")


@dataclass(frozen=True)
class RequiredData:
    """The data item `data/<item>` was verified with exactly this digest."""

    item: str
    digest: str  # "<algorithm>:<hex>"

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return f"policy: data {self.item}"

    def check(self, statement: dict[str, Any]) -> Check:
        found = dependencies_named(statement, f"data/{self.item}")
        if len(found) != 1:
            what = "no data item" if not found else f"{len(found)} data items"
            return Check(self.name, False, f"{what} named {self.item!r} recorded; the policy requires {self.digest}")
        algorithm, expected = split_digest(self.digest)
        field = found[0].get("digest")
        recorded: dict[str, Any] = field if isinstance(field, dict) else {}
        actual = recorded.get(algorithm)
        if not isinstance(actual, str):
            have = ", ".join(sorted(recorded)) or "none"
            return Check(self.name, False,
                         f"recorded without a {algorithm} digest (has: {have}); the policy requires {self.digest}")
        if actual.lower() == expected:
            return Check(self.name, True, f"{algorithm}:{actual} as required")
        return Check(self.name, False, f"recorded {algorithm}:{actual}, the policy requires {self.digest}")


@dataclass(frozen=True)
class ManifestDigest:
    """externalParameters.manifestDigest.sha256 is exactly this digest."""

    digest: str  # "sha256:<hex>"

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return "policy: manifest digest"

    def check(self, statement: dict[str, Any]) -> Check:
        value = _dig(statement, "predicate", "buildDefinition", "externalParameters", "manifestDigest", "sha256")
        if not isinstance(value, str):
            return Check(self.name, False, "the statement records no manifest sha256")
        if f"sha256:{value}" == self.digest:
            return Check(self.name, True, f"sha256:{value} as required")
        return Check(self.name, False, f"the run used manifest sha256:{value}, the policy requires {self.digest}")


@dataclass(frozen=True)
class AllowedHardwareClasses:
    """The manifest's hardware class (the one the run applied) is an allowed one."""

    classes: tuple[str, ...]

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return "policy: hardware class"

    def check(self, statement: dict[str, Any]) -> Check:
        manifest = _dig(statement, "predicate", "buildDefinition", "externalParameters", "manifest")
        declared = _dig(manifest, "hardware", "class")
        if not isinstance(declared, str):
            return Check(self.name, False, "the manifest in the statement names no hardware class")
        if declared in self.classes:
            return Check(self.name, True, f"{declared} is allowed")
        return Check(self.name, False, f"{declared} is not among the allowed classes ({', '.join(self.classes)})")


@dataclass(frozen=True)
class HardwareMatched:
    """The host met the hardware class: internalParameters.hardwareMismatch is recorded and empty."""

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return "policy: hardware match"

    def check(self, statement: dict[str, Any]) -> Check:
        mismatch = _dig(statement, "predicate", "buildDefinition", "internalParameters", "hardwareMismatch")
        if mismatch is None:
            # Fail closed: a statement without the field cannot show the class was met.
            return Check(self.name, False, "the statement does not record whether the host met its hardware class")
        if not mismatch:
            return Check(self.name, True, "the host met the hardware class")
        shown = "; ".join(map(str, mismatch)) if isinstance(mismatch, list) else str(mismatch)
        return Check(self.name, False, f"the run was allowed despite a hardware mismatch: {shown}")


@dataclass(frozen=True)
class MaxAge:
    """runDetails.metadata.finishedOn is at most `limit` before `now` (and not in the future)."""

    limit: timedelta
    now: datetime
    text: str  # the limit as written, for messages

    @property
    def name(self) -> str:
        """The check's name in the verdict."""
        return "policy: max age"

    def check(self, statement: dict[str, Any]) -> Check:
        finished = _dig(statement, "predicate", "runDetails", "metadata", "finishedOn")
        try:
            moment = parse_rfc3339(finished)
        except ValueError:
            return Check(self.name, False, "the statement records no valid finishedOn time")
        age = self.now - moment
        if age < -CLOCK_SKEW:
            return Check(self.name, False, f"finished {finished}, which is {format_duration(-age)} in the future")
        if age > self.limit:
            return Check(self.name, False, f"finished {finished}, {format_duration(age)} ago: older than {self.text}")
        shown = format_duration(max(age, timedelta(0)))
        return Check(self.name, True, f"finished {finished}, {shown} ago (limit {self.text})")


@dataclass(frozen=True)
class TimestampRequirement:
    """The policy's `timestamp`: a verified RFC 3161 timestamp is required, at most `max_age` old."""

    max_age: timedelta | None
    text: str  # the limit as written

    def age_check(self, moment: datetime, now: datetime) -> Check:
        """PASS when the TSA's time is within the limit (and not in the future)."""
        name = "policy: timestamp age"
        shown = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        age = now - moment
        if age < -CLOCK_SKEW:
            return Check(name, False, f"the TSA's time {shown} is {format_duration(-age)} in the future")
        if self.max_age is not None and age > self.max_age:
            return Check(name, False, f"timestamped {shown}, {format_duration(age)} ago: older than {self.text}")
        limit = f" (limit {self.text})" if self.text else ""
        return Check(name, True, f"timestamped {shown}, {format_duration(max(age, timedelta(0)))} ago{limit}")


# --- the policy ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """A parsed policy file; `rules(now)` turns it into rules."""

    source: str
    allowed_builders: tuple[str, ...] = ()
    allowed_base_images: tuple[str, ...] = ()
    required_data: tuple[tuple[str, str], ...] = ()
    manifest_digest: str | None = None
    allowed_hardware_classes: tuple[str, ...] = ()
    allow_hardware_mismatch: bool | None = None  # None: not said
    max_age: str | None = None
    timestamp_required: bool = False
    timestamp_max_age: str | None = None
    sha256: str | None = None  # of the policy file's bytes (what a VSA names the policy by)

    def rules(self, now: datetime) -> list[Rule]:
        """The rules this policy asks for, in a stable order."""
        rules: list[Rule] = []
        if self.allowed_builders:
            rules.append(AllowedBuilders(self.allowed_builders))
        if self.allowed_base_images:
            rules.append(AllowedBaseImages(self.allowed_base_images))
        rules += [RequiredData(item, digest) for item, digest in self.required_data]
        if self.manifest_digest:
            rules.append(ManifestDigest(self.manifest_digest))
        if self.allowed_hardware_classes:
            rules.append(AllowedHardwareClasses(self.allowed_hardware_classes))
        strict = self.allow_hardware_mismatch is False
        if strict or (self.allowed_hardware_classes and not self.allow_hardware_mismatch):
            rules.append(HardwareMatched())
        if self.max_age:
            rules.append(MaxAge(parse_duration(self.max_age), now, self.max_age))
        return rules

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<policy>") -> Policy:
        """A Policy from an already validated document."""
        return cls(
            source=source,
            allowed_builders=tuple(data.get("allowedBuilders", ())),
            allowed_base_images=tuple(data.get("allowedBaseImages", ())),
            required_data=tuple(sorted(data.get("requiredData", {}).items())),
            manifest_digest=data.get("manifestDigest"),
            allowed_hardware_classes=tuple(data.get("allowedHardwareClasses", ())),
            allow_hardware_mismatch=data.get("allowHardwareMismatch"),
            max_age=data.get("maxAge"),
            timestamp_required=bool(_dig(data, "timestamp", "required") or _dig(data, "timestamp", "maxAge")),
            timestamp_max_age=_dig(data, "timestamp", "maxAge"),
        )

    def timestamp_requirement(self) -> TimestampRequirement | None:
        """What the policy asks of the RFC 3161 timestamp (None: nothing)."""
        if not self.timestamp_required:
            return None
        limit = parse_duration(self.timestamp_max_age) if self.timestamp_max_age else None
        return TimestampRequirement(limit, self.timestamp_max_age or "")


def parse_duration(text: str) -> timedelta:
    """`7d`, `12h`, `1d12h`, `90m`, `2w`, `30s` → timedelta; ValueError otherwise."""
    if not re.fullmatch(r"([0-9]+[wdhms])+", text or ""):
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 1d12h)")
    total = sum((int(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)([wdhms])", text)), timedelta(0))
    if total <= timedelta(0):
        raise ValueError(f"the duration {text!r} is zero")
    return total


def format_duration(delta: timedelta) -> str:
    """A short human duration: 3d 4h, 5h 2m, 40s."""
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v]
    return " ".join(parts[:2]) if parts else f"{secs}s"


# --- loading ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((resource_dir("schemas") / SCHEMA_FILE).read_text(encoding="utf-8"))
    return schema


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema())


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy (YAML or JSON); ManifestError lists `file:line: field: problem`."""
    path = Path(path)
    shown = str(path)
    text = read_user_file(path, "policy file", max_bytes=MAX_POLICY_FILE)
    if not text.strip():
        raise ManifestError(f"{shown}: the policy file is empty; start from examples/policy.yaml")
    # Policies are short: anchors/aliases are refused outright (they are how YAML bombs are built).
    data, lines = parse_yaml(text, shown, allow_aliases=False)
    problems = policy_problems(data, lines)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ManifestError(f"{shown}: invalid policy ({count})", lines=[f"{shown}{p}" for p in problems])
    return dataclasses.replace(Policy.from_json(data, shown), sha256=hashlib.sha256(text).hexdigest())


def policy_problems(data: Any, lines: dict[str, int] | None = None) -> list[str]:
    """Every problem of a parsed policy as `:line: field: message` (line omitted when unknown)."""
    lines = lines or {}
    if not isinstance(data, dict):
        return [": the policy must be a mapping (apiVersion: xrun/v1, kind: Policy, rules…)"]
    problems = []
    for error in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = field_path(error.absolute_path)
        hint = error.schema.get("x-hint") if isinstance(error.schema, dict) else None
        if error.validator == "additionalProperties" and not error.absolute_path:
            fields = list(_schema()["properties"])
            extra = sorted(set(data) - set(fields))
            known = ", ".join(fields)
            for key in extra:
                close = difflib.get_close_matches(key, fields, n=1)
                fix = f"did you mean {close[0]}?" if close else f"known fields: {known}"
                problems.append(f"{_where(lines, key)}: {key}: unknown field; {fix}")
            continue
        if error.validator == "required":
            message = error.message
        else:
            message = f"{error.message}; {hint}" if hint else error.message
        problems.append(f"{_where(lines, path)}: {path or '(policy)'}: {message}")
    for field in ("maxAge", "timestamp.maxAge"):
        value = _dig(data, *field.split("."))
        if problems or value is None:
            continue
        try:
            parse_duration(value)
        except ValueError as exc:
            problems.append(f"{_where(lines, field)}: {field}: {exc}")
    if not problems:
        problems += _unknown_classes(data.get("allowedHardwareClasses", ()), lines)
    return problems


def _unknown_classes(names: Any, lines: dict[str, int]) -> list[str]:
    """A class the catalog lacks would silently allow nothing: name it, with the closest known one."""
    from runner.hardware import catalog, closest_class

    known = sorted(catalog())
    problems = []
    for i, name in enumerate(names):
        if name in known:
            continue
        path = f"allowedHardwareClasses[{i}]"
        close = closest_class(name)
        fix = f"did you mean {close}?" if close else f"known classes: {', '.join(known)}"
        where = _where(lines, path) or _where(lines, "allowedHardwareClasses")
        problems.append(f"{where}: {path}: unknown hardware class {name!r}; {fix} (`xrun hardware` lists them)")
    return problems


def _where(lines: dict[str, int], path: str) -> str:
    line = lines.get(path)
    return f":{line}" if line else ""
