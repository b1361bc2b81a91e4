"""An xrun attestation read back as typed fields, each from the one place xrun writes it.

Nothing here searches the statement: a user's manifest (externalParameters) may hold any key, so
a depth-first search for a field name can find the user's value instead of xrun's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    seed: int | None = None  # externalParameters.seed: the seed given on the command line, when one was

    @classmethod
    def from_statement(cls, statement: dict[str, Any]) -> "RecordedRun":
        """Read the fields of an in-toto statement with xrun's SLSA predicate."""
        predicate = _dict(statement.get("predicate"))
        definition = _dict(predicate.get("buildDefinition"))
        details = _dict(predicate.get("runDetails"))
        external = _dict(definition.get("externalParameters"))
        byproducts = {b.get("name"): b for b in details.get("byproducts") or [] if isinstance(b, dict)}
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
            seed=external.get("seed") if isinstance(external.get("seed"), int) else None,
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
