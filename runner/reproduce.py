"""`xrun reproduce`: re-run what an attestation records and compare the outputs one by one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import IntegrityError, UsageError
from runner.attest.statement import recorded_metrics


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 0.0
    atol: float = 0.0

    def accepts(self, recorded: float, now: float) -> bool:
        """numpy.isclose semantics: |now - recorded| <= atol + rtol * |recorded|."""
        return abs(now - recorded) <= self.atol + self.rtol * abs(recorded)


@dataclass(frozen=True)
class MetricRow:
    key: str
    recorded: float | None
    now: float | None
    ok: bool

    @property
    def abs_diff(self) -> float | None:
        return None if self.recorded is None or self.now is None else abs(self.now - self.recorded)

    @property
    def rel_diff(self) -> float | None:
        d = self.abs_diff
        if d is None:
            return None
        return d / abs(self.recorded) if self.recorded else (0.0 if d == 0 else math.inf)


@dataclass(frozen=True)
class OutputRow:
    path: str
    state: str  # identical | different | within-tolerance | missing | new
    recorded: str | None
    now: str | None
    metrics: tuple[MetricRow, ...] = ()


@dataclass(frozen=True)
class InputChange:
    name: str
    recorded: Any
    now: Any


@dataclass(frozen=True)
class Report:
    """The comparison of a re-run with the attestation it reproduces."""

    attestation: str
    run_id: str
    run_dir: str
    outputs: tuple[OutputRow, ...]
    changes: tuple[InputChange, ...] = field(default_factory=tuple)

    @property
    def reproduced(self) -> bool:
        return all(r.state in ("identical", "within-tolerance") for r in self.outputs)

    def to_json(self) -> dict[str, Any]:
        """The `--json` report."""
        return {
            "reproduced": self.reproduced, "attestation": self.attestation, "run_id": self.run_id,
            "run_dir": self.run_dir,
            "outputs": [{"path": r.path, "state": r.state, "recorded": r.recorded, "now": r.now,
                         "metrics": [{"key": m.key, "recorded": m.recorded, "now": m.now, "absDiff": m.abs_diff,
                                      "relDiff": m.rel_diff, "ok": m.ok} for m in r.metrics]}
                        for r in self.outputs],
            "changedInputs": [{"name": c.name, "recorded": c.recorded, "now": c.now} for c in self.changes],
        }


# --- reading attestations --------------------------------------------------------------------------


def read_statement(path: Path) -> dict[str, Any]:
    """The in-toto statement inside a .intoto.jsonl envelope or a Sigstore bundle (signature not checked)."""
    from runner.attest import read_attestation

    try:
        statement = json.loads(read_attestation(path).envelopes[0].payload)
    except (ValueError, IndexError):
        raise IntegrityError(f"{path}: not a DSSE envelope or Sigstore bundle holding an in-toto statement") from None
    if not isinstance(statement, dict) or "predicate" not in statement:
        raise IntegrityError(f"{path}: the envelope's payload is not an in-toto statement")
    return statement


def recorded_outputs(statement: dict[str, Any]) -> dict[str, str]:
    """subject name → sha256."""
    return {s["name"]: s.get("digest", {}).get("sha256", "") for s in statement.get("subject", [])}


def _hardware_class(statement: dict[str, Any]) -> Any:
    """The hardware class the run applied: the manifest's (externalParameters)."""
    manifest = _external(statement).get("manifest")
    hardware = manifest.get("hardware") if isinstance(manifest, dict) else None
    return hardware.get("class") if isinstance(hardware, dict) else None


def find_extension(node: Any, key: str) -> Any:
    """An xrun_* extension field wherever the predicate carries it (depth-first)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for value in node.values():
            found = find_extension(value, key)
            if found is not None:
                return found
    return None


def dependencies_by_name(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """resolvedDependencies keyed by their name."""
    deps = statement.get("predicate", {}).get("buildDefinition", {}).get("resolvedDependencies", [])
    return {d.get("name") or d.get("uri", "?"): d for d in deps}


# --- choosing the manifest -------------------------------------------------------------------------


def manifest_for(statement: dict[str, Any], attestation: Path, given: Path | None, workdir: Path) -> Path:
    """The manifest to re-run: the given one, the original file, or the recorded one written beside it.

    A given manifest whose digest differs from the record is still run: the report then names the
    manifest fields that changed, and the outputs decide the verdict.
    """
    params = statement["predicate"]["buildDefinition"]["externalParameters"]
    recorded_digest = _digest_value(params.get("manifestDigest"))
    if given is not None:
        _read_bytes(given)
        return given
    folder = workdir
    record = attestation.parent / "run.json"
    if record.is_file():
        original = Path(json.loads(record.read_text()).get("manifest", ""))
        if original.is_file() and hashlib.sha256(original.read_bytes()).hexdigest() == recorded_digest:
            return original
        if original.parent.is_dir():
            folder = original.parent  # relative paths of the manifest resolve there
    fd, tmp = tempfile.mkstemp(prefix=".xrun-reproduce-", suffix=".yaml", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(params.get("manifest"), f, sort_keys=False)
    return Path(tmp)


def _digest_value(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("sha256", "")
    return str(value or "").removeprefix("sha256:")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc.strerror})") from None


def diff_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Field paths (data[0].sha256 style) whose values differ between two parsed manifests."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += diff_fields(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff_fields(x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [prefix or "(document)"]


# --- comparing -------------------------------------------------------------------------------------


def tolerance_for(key: str, spec: dict[str, Any], rtol: float | None, atol: float | None) -> Tolerance | None:
    """Command-line tolerance wins, then the manifest's per-key, then per-file; None: exact."""
    if rtol is not None or atol is not None:
        return Tolerance(rtol or 0.0, atol or 0.0)
    per_key = (spec.get("keys") or {}).get(key)
    if per_key:
        return Tolerance(per_key.get("rtol", 0.0), per_key.get("atol", 0.0))
    if "rtol" in spec or "atol" in spec:
        return Tolerance(spec.get("rtol", 0.0), spec.get("atol", 0.0))
    return None


def compare_metrics(recorded: dict[str, float], now: dict[str, float], spec: dict[str, Any],
                    rtol: float | None, atol: float | None) -> tuple[MetricRow, ...]:
    """One row per metric key; ok when equal, or within the tolerance that applies."""
    rows = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if a is None or b is None:
            ok = False
        elif a == b:
            ok = True
        else:
            tol = tolerance_for(key, spec, rtol, atol)
            ok = tol is not None and tol.accepts(a, b)
        rows.append(MetricRow(key, a, b, ok))
    return tuple(rows)


def compare_outputs(recorded: dict[str, str], now: dict[str, str], *, metrics_recorded: dict[str, dict[str, float]],
                    metrics_now: dict[str, dict[str, float]], tolerances: dict[str, dict[str, Any]],
                    rtol: float | None, atol: float | None) -> tuple[OutputRow, ...]:
    """identical / different / within-tolerance / missing / new, per output path."""
    rows = []
    for path in sorted(set(recorded) | set(now)):
        a, b = recorded.get(path), now.get(path)
        if a is None:
            rows.append(OutputRow(path, "new", None, b))
        elif b is None:
            rows.append(OutputRow(path, "missing", a, None))
        elif a == b:
            rows.append(OutputRow(path, "identical", a, b))
        elif path in metrics_now and path in metrics_recorded:
            mrows = compare_metrics(metrics_recorded[path], metrics_now[path], tolerances.get(path, {}), rtol, atol)
            state = "within-tolerance" if all(m.ok for m in mrows) else "different"
            rows.append(OutputRow(path, state, a, b, mrows))
        else:
            rows.append(OutputRow(path, "different", a, b))
    return tuple(rows)


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> tuple[InputChange, ...]:
    """Name each recorded input that differs in the re-run: deps, hardware class, GPUs, engine."""
    changes: list[InputChange] = []
    a, b = dependencies_by_name(old), dependencies_by_name(new)
    for name in sorted(set(a) | set(b)):
        if name in ("image", "attestation/reproduced"):
            continue  # the built image follows from the others; the reproduced link is new by design
        da, db = a.get(name), b.get(name)
        if da is None or db is None or da.get("digest") != db.get("digest") or da.get("uri") != db.get("uri"):
            changes.append(InputChange(name, _short_dep(da), _short_dep(db)))
    va, vb = _hardware_class(old), _hardware_class(new)
    if va != vb:
        changes.append(InputChange("hardware class", va, vb))
    ga, gb = _gpus(old), _gpus(new)
    if ga != gb:
        changes.append(InputChange("detected GPUs", ga, gb))
    ea, eb = _builder_dep(old, "docker-engine"), _builder_dep(new, "docker-engine")
    if ea != eb:
        changes.append(InputChange("docker engine", ea, eb))
    pa, pb = _external(old), _external(new)
    if pa.get("manifestDigest") != pb.get("manifestDigest"):
        for path in diff_fields(pa.get("manifest"), pb.get("manifest")):
            changes.append(InputChange(f"manifest {path}", None, None))
    return tuple(changes)


def _short_dep(dep: dict[str, Any] | None) -> Any:
    if dep is None:
        return None
    return {"uri": dep.get("uri"), "digest": dep.get("digest")}


def _external(statement: dict[str, Any]) -> dict[str, Any]:
    return statement.get("predicate", {}).get("buildDefinition", {}).get("externalParameters", {})


def _gpus(statement: dict[str, Any]) -> list[str]:
    for b in statement.get("predicate", {}).get("runDetails", {}).get("byproducts", []):
        if b.get("name") == "host":
            return [f"{g.get('name')} (driver {g.get('driver_version')})" for g in b.get("annotations", {}).get("gpus", [])]
    return []


def _builder_dep(statement: dict[str, Any], name: str) -> str | None:
    builder = statement.get("predicate", {}).get("runDetails", {}).get("builder", {})
    for dep in builder.get("builderDependencies", []):
        if dep.get("name") == name:
            return dep.get("uri")
    return None


# --- the whole verb --------------------------------------------------------------------------------


def reproduce(attestation: Path, *, manifest: Path | None, keys: list[Path], rtol: float | None,
              atol: float | None, options: Any, workdir: Path | None = None) -> Report:
    """Verify (when keys are given), re-run the recorded experiment, and compare with the record."""
    from runner.attest.statement import ResourceDescriptor
    from runner.pipeline import run_experiment

    if keys:
        from runner.attest import verify_attestation

        verdict = verify_attestation(attestation, keys, [], None)
        if not verdict.ok or verdict.statement is None:
            failed = [f"{c.name}: {c.detail}" for c in verdict.failures]
            raise IntegrityError(f"{attestation}: the attestation does not verify; nothing was re-run", lines=failed)
        statement = verdict.statement
    else:
        statement = read_statement(attestation)
    path = manifest_for(statement, attestation, manifest, workdir or Path.cwd())
    temporary = manifest is None and path.name.startswith(".xrun-reproduce-")
    link = ResourceDescriptor(name="attestation/reproduced", uri=f"file:{attestation.name}",
                              digest={"sha256": hashlib.sha256(attestation.read_bytes()).hexdigest()})
    try:
        summary = run_experiment(path, dataclasses.replace(options, reproduces=link))
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    fresh = read_statement(summary.attestation)
    tolerances = {o["path"]: o["tolerance"] for o in fresh["predicate"]["buildDefinition"]
                  ["externalParameters"]["manifest"].get("outputs", []) if o.get("tolerance")}
    rows = compare_outputs(
        recorded_outputs(statement), summary.outputs,
        metrics_recorded=_recorded_metrics(statement, attestation), metrics_now=summary.metrics,
        tolerances=tolerances, rtol=rtol, atol=atol,
    )
    return Report(attestation=str(attestation), run_id=summary.run_id, run_dir=str(summary.run_dir),
                  outputs=rows, changes=changed_inputs(statement, fresh))


def _recorded_metrics(statement: dict[str, Any], attestation: Path) -> dict[str, dict[str, float]]:
    """Metrics values as the attestation records them (the run.json beside it as a fallback)."""
    metrics = recorded_metrics(statement)
    if isinstance(metrics, dict):
        return metrics
    record = attestation.parent / "run.json"
    if record.is_file():
        return json.loads(record.read_text()).get("metrics", {})
    return {}
