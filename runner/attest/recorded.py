"""An xrun attestation read back: the one reader of its statement, and the statement's fields as types.

`read_statement` is the only place that decodes a statement from an attestation file, and it does so
strictly (no duplicate keys, no NaN): a statement that two parsers could read differently is refused,
whoever reads it. Nothing here searches the statement: a user's manifest (externalParameters) may hold
any key, so a depth-first search for a field name can find the user's value instead of xrun's record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.attest.statement import parse_statement
from runner.errors import IntegrityError, UsageError


def read_statement(path: Path) -> dict[str, Any]:
    """The in-toto statement of the attestation's first envelope, parsed strictly; its signature is not checked."""
    from runner.attest.verify import read_attestation  # the verifier's imports are not needed to read fields

    try:
        payload = read_attestation(path).envelopes[0].payload
    except (ValueError, IndexError):
        raise IntegrityError(f"{path}: not a DSSE envelope or Sigstore bundle holding an in-toto statement") from None
    try:
        statement = parse_statement(payload)
    except ValueError as exc:
        raise IntegrityError(f"{path}: {exc}; the attestation was not written by xrun or was changed") from None
    if "predicate" not in statement:
        raise IntegrityError(f"{path}: the envelope's payload is not an in-toto statement")
    return statement


NOT_VERIFIED = "attestation NOT verified (--no-verify): what it records was taken on trust"


def verified_statement(attestation: Path, keys: list[Path], *, verify: bool, action: str) -> dict[str, Any]:
    """The statement, verified against the trusted keys; unverified only when the caller said so (verify=False).

    Nothing unverified is used silently: without keys and without verify=False this is a usage error,
    and a statement that does not verify is an IntegrityError (exit 3) before anything is `action`.
    """
    if not verify:
        if keys:
            raise UsageError("--trust and --no-verify exclude each other: give the trusted key, or say not to verify")
        return read_statement(attestation)
    if not keys:
        raise UsageError(f"{attestation}: give the trusted public key with --trust PUB to verify the attestation, "
                         f"or --no-verify to use it unverified; nothing was {action}")
    from runner.attest.verify import verify_attestation  # as in read_statement: only the verbs that verify load it

    verdict = verify_attestation(attestation, keys, [], None)
    if not verdict.ok or verdict.statement is None:
        failed = [f"{c.name}: {c.detail}" for c in verdict.failures]
        raise IntegrityError(f"{attestation}: the attestation does not verify; nothing was {action}", lines=failed)
    return verdict.statement


@dataclass(frozen=True)
class RecordedBase:
    """The base image a run's image was built on: pinned by digest, or bootstrapped from a package set."""

    image_id: str  # "sha256:…"
    reference: str | None  # REPO@sha256:… as pinned in the manifest; None for a bootstrapped base
    bootstrap: dict[str, Any] | None  # {suite, packages, variant, architecture}; None for a pinned base
    debs: tuple[str, ...]  # pkg:deb purls installed in a bootstrapped base


@dataclass(frozen=True)
class RecordedWheel:
    """One wheel laid out in the image: what it is (purl, sha256) and where it was fetched from."""

    name: str
    version: str
    filename: str
    purl: str
    sha256: str
    download_location: str | None  # None for a local wheel (a path means nothing elsewhere)


@dataclass(frozen=True)
class RecordedImage:
    """The image the run used: its ID, its layers' diff IDs (base first) and, when pushed, its manifest digest."""

    id: str  # "sha256:…"
    layers: tuple[str, ...]
    build_digest: str | None
    manifest_digest: str | None
    repository: str | None


@dataclass(frozen=True)
class RecordedRun:
    """What a statement records about a run: outputs, manifest, inputs, hardware, metrics, engine."""

    subjects: dict[str, str]  # output path → sha256
    manifest: Any  # externalParameters.manifest, as the user wrote it
    manifest_digest: str  # hex sha256
    dependencies: dict[str, dict[str, Any]]  # resolvedDependencies by name
    hardware_class: str | None
    hardware_mismatch: tuple[str, ...]  # shortfalls of the host that xrun accepted
    metrics: dict[str, dict[str, float]]
    gpus: tuple[str, ...]
    engine: str | None  # the docker-engine builder dependency's URI
    base: RecordedBase | None = None
    image: RecordedImage | None = None
    wheels: tuple[RecordedWheel, ...] = ()
    code_digest: str | None = None  # "sha256:…" tree digest
    xrun_version: str | None = None
    listings: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset name → {relpath: sha256}
    seed: int | None = None  # externalParameters.seed: the seed given on the command line, when one was
    builder_id: str | None = None  # runDetails.builder.id: who ran it (a host, a Slurm cluster)
    manifest_path: str | None = None  # externalParameters.manifestPath: the manifest's path in its git repository

    @classmethod
    def from_statement(cls, statement: dict[str, Any]) -> "RecordedRun":
        """Read the fields of an in-toto statement with xrun's SLSA predicate."""
        predicate = _dict(statement.get("predicate"))
        definition = _dict(predicate.get("buildDefinition"))
        details = _dict(predicate.get("runDetails"))
        external = _dict(definition.get("externalParameters"))
        byproducts: dict[str, Any] = {str(b.get("name")): b for b in details.get("byproducts") or []
                                      if isinstance(b, dict)}
        deps = {d.get("name") or d.get("uri", "?"): d for d in definition.get("resolvedDependencies") or []
                if isinstance(d, dict)}
        return cls(
            subjects={s["name"]: _dict(s.get("digest")).get("sha256", "") for s in statement.get("subject") or []
                      if isinstance(s, dict) and "name" in s},
            manifest=external.get("manifest"),
            manifest_digest=_digest_hex(external.get("manifestDigest")),
            dependencies=deps,
            hardware_class=_hardware_class(external.get("manifest"), details),
            hardware_mismatch=tuple(_dict(definition.get("internalParameters")).get("hardwareMismatch")
                                    or details.get("xrun_hardware_mismatch") or ()),
            metrics=_metrics(byproducts, details),
            gpus=_gpus(byproducts),
            engine=_builder_dependency(details, "docker-engine"),
            base=_base(deps),
            image=_image(deps.get("image")),
            wheels=tuple(w for w in (_wheel(d) for n, d in deps.items() if str(n).startswith("wheel/")) if w),
            code_digest=_prefixed(_dict(_dict(deps.get("code")).get("digest")).get("sha256")),
            xrun_version=_str(_dict(_dict(details.get("builder")).get("version")).get("xrun")),
            listings=_listings(byproducts),
            seed=external.get("seed") if isinstance(external.get("seed"), int) else None,
            builder_id=_str(_dict(details.get("builder")).get("id")),
            manifest_path=_str(external.get("manifestPath")),
        )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _digest_hex(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("sha256", ""))
    return str(value or "").removeprefix("sha256:")


def _hardware_class(manifest: Any, details: dict[str, Any]) -> str | None:
    """The class the run applied: the manifest's hardware.class (runDetails.xrun_hardware_class before 0.2)."""
    value = _dict(_dict(manifest).get("hardware")).get("class") or details.get("xrun_hardware_class")
    return value if isinstance(value, str) else None


def _metrics(byproducts: dict[str, Any], details: dict[str, Any]) -> dict[str, dict[str, float]]:
    value = _dict(_dict(byproducts.get("metrics")).get("annotations")).get("values")
    if value is None:
        value = details.get("xrun_metrics")  # attestations before 0.2
    return value if isinstance(value, dict) else {}


def _listings(byproducts: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per dataset, the files its `data/<name>/listing` byproduct lists (when it lists them)."""
    out: dict[str, dict[str, str]] = {}
    for name, entry in byproducts.items():
        if not (isinstance(name, str) and name.startswith("data/") and name.endswith("/listing")):
            continue
        entries = _dict(entry.get("annotations")).get("entries")
        if isinstance(entries, list):
            out[name[len("data/"):-len("/listing")]] = {str(e[0]): str(e[2]) for e in entries
                                                        if isinstance(e, list) and len(e) == 3}
    return out


def _gpus(byproducts: dict[str, Any]) -> tuple[str, ...]:
    host = _dict(_dict(byproducts.get("host")).get("annotations"))
    return tuple(f"{g.get('name')} (driver {g.get('driver_version')})" for g in host.get("gpus") or []
                 if isinstance(g, dict))


def _builder_dependency(details: dict[str, Any], name: str) -> str | None:
    for dep in _dict(details.get("builder")).get("builderDependencies") or []:
        if isinstance(dep, dict) and dep.get("name") == name:
            uri = dep.get("uri")
            return uri if isinstance(uri, str) else None
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _prefixed(hexdigest: Any) -> str | None:
    return f"sha256:{hexdigest}" if isinstance(hexdigest, str) and hexdigest else None


def _base(deps: dict[str, dict[str, Any]]) -> RecordedBase | None:
    dep = deps.get("base-image")
    if not isinstance(dep, dict):
        return None
    notes = _dict(dep.get("annotations"))
    bootstrap = notes.get("bootstrap")
    image_id = _str(notes.get("imageId")) or _prefixed(_dict(dep.get("digest")).get("sha256"))
    if image_id is None:
        return None
    debs = tuple(str(d.get("uri")) for n, d in deps.items() if str(n).startswith("deb/") and d.get("uri"))
    return RecordedBase(image_id=image_id, reference=None if bootstrap else _str(notes.get("reference")),
                        bootstrap=bootstrap if isinstance(bootstrap, dict) else None, debs=debs)


def _image(dep: Any) -> RecordedImage | None:
    if not isinstance(dep, dict):
        return None
    image_id = _prefixed(_dict(dep.get("digest")).get("sha256"))
    if image_id is None:
        return None
    notes = _dict(dep.get("annotations"))
    return RecordedImage(id=image_id, layers=tuple(str(x) for x in notes.get("layers") or ()),
                         build_digest=_str(notes.get("buildDigest")), manifest_digest=_str(notes.get("manifestDigest")),
                         repository=_str(notes.get("repository")))


def _wheel(dep: dict[str, Any]) -> RecordedWheel | None:
    """A wheel/<name> dependency: pkg:pypi/NAME@VERSION, its sha256, filename and download location."""
    uri, sha256 = _str(dep.get("uri")) or "", _str(_dict(dep.get("digest")).get("sha256"))
    filename = _str(_dict(dep.get("annotations")).get("filename"))
    if not uri.startswith("pkg:pypi/") or not sha256 or not filename:
        return None
    from packageurl import PackageURL

    parsed = PackageURL.from_string(uri)
    return RecordedWheel(name=parsed.name, version=parsed.version or "", filename=filename, purl=uri, sha256=sha256,
                         download_location=_str(dep.get("downloadLocation")))
