"""`xrun reproduce`: re-run what an attestation records and compare the outputs one by one."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from runner.attest.recorded import NOT_VERIFIED, RecordedRun, read_statement, verified_statement
from runner.errors import IntegrityError, UsageError
from runner.manifest import MAX_MANIFEST_BYTES
from runner.rundir import reproduce_runs_dir
from runner.runs.record import RunRecord

if TYPE_CHECKING:
    from runner.context import RunOptions
    from runner.plan import CodeTree


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
    verified: bool = True  # False only with --no-verify: the attestation was re-run on trust
    notes: tuple[str, ...] = ()

    @property
    def reproduced(self) -> bool:
        return all(r.state in ("identical", "within-tolerance") for r in self.outputs)

    def to_json(self) -> dict[str, Any]:
        """The `--json` report."""
        return {
            "reproduced": self.reproduced, "attestation": self.attestation, "runId": self.run_id,
            "runDir": self.run_dir,
            "outputs": [{"path": r.path, "state": r.state, "recorded": r.recorded, "now": r.now,
                         "metrics": [{"key": m.key, "recorded": m.recorded, "now": m.now, "absDiff": m.abs_diff,
                                      "relDiff": m.rel_diff, "ok": m.ok} for m in r.metrics]}
                        for r in self.outputs],
            "changedInputs": [{"name": c.name, "recorded": c.recorded, "now": c.now} for c in self.changes],
            "verified": self.verified, "notes": list(self.notes),
        }


# --- choosing the manifest -------------------------------------------------------------------------


def manifest_for(statement: dict[str, Any], attestation: Path, given: Path | None, code: Path | None,
                 manifest_hint: str = "; or pass --manifest FILE to re-run a changed one", *,
                 recorded: RecordedRun | None = None) -> Path:
    """The manifest to re-run: the given one, else the recorded one found (or, outside the code tree, written).

    A given manifest whose digest differs from the record is still run: the report then names the
    manifest fields that changed, and the outputs decide the verdict. Otherwise the code tree comes
    from a stated place (`code`: the code folder, or the repository's root when the attestation records
    the manifest's path in it; else the recorded run's own folder) and nothing is written into it.
    `manifest_hint` ends the error when no manifest is found (a command without --manifest drops it).
    `recorded`: the statement already read as a RecordedRun, when the caller has it.
    """
    params = statement["predicate"]["buildDefinition"]["externalParameters"]
    recorded_digest = _digest_value(params.get("manifestDigest"))
    if given is not None:
        if code is not None:
            raise UsageError("--code and --manifest exclude each other: a given manifest names its own code.path")
        _read_bytes(given)
        return given
    raw = params.get("manifest") if isinstance(params.get("manifest"), dict) else {}
    code_rel = Path(os.path.normpath(str((raw.get("code") or {}).get("path", "."))))
    original = _recorded_manifest_path(attestation)
    if code is None:
        if original is None:
            raise UsageError(f"{attestation}: no run.json beside it records where the experiment's code is; "
                             "pass --code DIR (the code folder the attestation was made from)")
        code = original.parent / code_rel
    if not code.is_dir():
        raise UsageError(f"{code}: the code folder is not there; pass --code DIR (the code folder the attestation "
                         "was made from)")
    # A repository root: the attestation records where the manifest sits in its repository.
    where = (recorded or RecordedRun.from_statement(statement)).manifest_path
    in_repo = _in_repository(code, where, recorded_digest)
    if in_repo is not None:
        return in_repo
    # Relative paths of the manifest resolve against its folder, code.path levels above the code tree.
    root = code.resolve()
    for _ in code_rel.parts if str(code_rel) != "." else ():
        root = root.parent
    found = _find_manifest(root, recorded_digest, original.name if original else None)
    if found is not None:
        return found
    if str(code_rel) == ".":
        raise UsageError(f"{root}: no file there is the recorded manifest (sha256 {recorded_digest[:12]}…), and a "
                         "copy written there would change the code tree; pass --code with the repository's root"
                         + (f" (the attestation records the manifest at {where})" if where else "")
                         + " or the experiment's folder, or put the manifest back" + manifest_hint)
    fd, tmp = tempfile.mkstemp(prefix=".xrun-reproduce-", suffix=".yaml", dir=root)  # root is outside the code tree
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return Path(tmp)


def _in_repository(root: Path, manifest_path: str | None, digest: str) -> Path | None:
    """The recorded manifest at its recorded path under a repository root, when it is there with its digest."""
    if not manifest_path or Path(manifest_path).is_absolute() or ".." in Path(manifest_path).parts:
        return None
    path = root / manifest_path
    return path if _is_recorded(path, digest) else None


def _is_recorded(path: Path, digest: str) -> bool:
    """Whether path is a file of manifest size whose sha256 is digest; one that cannot be read is not."""
    try:
        return path.is_file() and path.stat().st_size <= MAX_MANIFEST_BYTES \
            and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _recorded_manifest_path(attestation: Path) -> Path | None:
    """The manifest path run.json beside the attestation records, when there is one."""
    record = RunRecord.load(attestation.parent / "run.json")
    value = record.manifest if record is not None else None
    return Path(value) if isinstance(value, str) and value else None


def _find_manifest(root: Path, digest: str, name: str | None) -> Path | None:
    """The file directly in root whose sha256 is the recorded manifest's (the recorded name tried first)."""
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_file())
    except OSError:
        return None
    if name in names:
        names.remove(name)
        names.insert(0, name)
    return next((root / n for n in names if _is_recorded(root / n, digest)), None)


def check_code(manifest: Path, recorded: RecordedRun, options: RunOptions | None = None) -> CodeTree:
    """The manifest's code tree, hashed; IntegrityError unless it has the digest the attestation records.

    The tree is chosen as the re-run will choose it (its cache, runs folder and signing key left out),
    so the re-run takes this very tree as RunOptions.code instead of hashing the folder again.
    """
    from runner.manifest import load_manifest
    from runner.plan import resolve_code

    expected = (recorded.code_digest or "").removeprefix("sha256:")
    loaded = load_manifest(manifest)
    own = options.own_paths(loaded.root) if options is not None else None
    tree = resolve_code(loaded.code, loaded.file, own)
    now = tree.digest.removeprefix("sha256:")
    if expected and now != expected:
        raise IntegrityError(f"{loaded.code.path}: the code tree's digest is sha256:{now} but the attestation "
                             f"records sha256:{expected}; pass --code DIR with the code the attestation was made from")
    return tree


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


def changed_inputs(old: RecordedRun, new: RecordedRun) -> tuple[InputChange, ...]:
    """Name each recorded input that differs in the re-run: deps, hardware class, GPUs, engine."""
    changes: list[InputChange] = []
    a, b = old.dependencies, new.dependencies
    for name in sorted(set(a) | set(b)):
        if name in ("image", "attestation/reproduced"):
            continue  # the built image follows from the others; the reproduced link is new by design
        da, db = a.get(name), b.get(name)
        if da is None or db is None or da.get("digest") != db.get("digest") or da.get("uri") != db.get("uri"):
            files = _changed_files(name, old, new) if da is not None and db is not None else []
            changes.extend(files or [InputChange(name, _short_dep(da), _short_dep(db))])
    if old.hardware_class != new.hardware_class:
        changes.append(InputChange("hardware class", old.hardware_class, new.hardware_class))
    if old.gpus != new.gpus:
        changes.append(InputChange("detected GPUs", list(old.gpus), list(new.gpus)))
    if old.engine != new.engine:
        changes.append(InputChange("docker engine", old.engine, new.engine))
    if old.manifest_digest != new.manifest_digest:
        for path in diff_fields(old.manifest, new.manifest):
            changes.append(InputChange(f"manifest {path}", None, None))
    return tuple(changes)


def _changed_files(name: str, old: RecordedRun, new: RecordedRun) -> list[InputChange]:
    """For a dataset both runs list, one change per file that differs: data/<name>/<relpath>."""
    dataset = name[len("data/"):] if name.startswith("data/") else None
    if dataset is None or dataset not in old.listings or dataset not in new.listings:
        return []
    a, b = old.listings[dataset], new.listings[dataset]
    return [InputChange(f"{name}/{rel}", {"sha256": a[rel]} if rel in a else None,
                        {"sha256": b[rel]} if rel in b else None)
            for rel in sorted(a.keys() | b.keys()) if a.get(rel) != b.get(rel)]


def _short_dep(dep: dict[str, Any] | None) -> Any:
    if dep is None:
        return None
    return {"uri": dep.get("uri"), "digest": dep.get("digest")}


# --- the whole verb --------------------------------------------------------------------------------


def reproduce(attestation: Path, *, manifest: Path | None, keys: list[Path], rtol: float | None,
              atol: float | None, options: Any, code: Path | None = None, verify: bool = True) -> Report:
    """Verify (verify=False: explicitly not), re-run the recorded experiment, and compare with the record."""
    from runner.attest.statement import ResourceDescriptor
    from runner.pipeline import run_experiment

    statement = verified_statement(attestation, keys, verify=verify, action="re-run")
    recorded = RecordedRun.from_statement(statement)
    # The re-run goes outside the code folder (xrun run's default, <manifest folder>/.xrun/runs, is inside it).
    options = dataclasses.replace(options, runs_dir=options.runs_dir or reproduce_runs_dir())
    path = manifest_for(statement, attestation, manifest, code, recorded=recorded)
    temporary = manifest is None and path.name.startswith(".xrun-reproduce-")
    if manifest is None:
        try:
            # Hashed once: the re-run plans with this tree (same own paths, so the very tree it would hash).
            options = dataclasses.replace(options, code=check_code(path, recorded, options))
        except BaseException:
            if temporary:
                path.unlink(missing_ok=True)
            raise
    # The new attestation records whether the one it reproduces was verified (--no-verify: it was not).
    link = ResourceDescriptor(name="attestation/reproduced", uri=f"file:{attestation.name}",
                              digest={"sha256": hashlib.sha256(attestation.read_bytes()).hexdigest()},
                              annotations={"verified": verify})
    try:
        # A seed sweep member was run with a seed from the command line: re-run with that seed.
        summary = run_experiment(path, dataclasses.replace(options, reproduces=link, seed=recorded.seed))
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    assert summary.attestation is not None  # a run that returns has written its attestation
    fresh = RecordedRun.from_statement(read_statement(summary.attestation))
    tolerances = {o["path"]: o["tolerance"] for o in (fresh.manifest or {}).get("outputs", []) if o.get("tolerance")}
    rows = compare_outputs(
        recorded.subjects, summary.outputs,
        metrics_recorded=_recorded_metrics(recorded, attestation), metrics_now=summary.metrics,
        tolerances=tolerances, rtol=rtol, atol=atol,
    )
    return Report(attestation=str(attestation), run_id=summary.run_id, run_dir=str(summary.run_dir),
                  outputs=rows, changes=changed_inputs(recorded, fresh), verified=verify,
                  notes=() if verify else (NOT_VERIFIED,))


def _recorded_metrics(recorded: RecordedRun, attestation: Path) -> dict[str, dict[str, float]]:
    """Metrics values as the attestation records them (the run.json beside it as a fallback)."""
    if recorded.metrics:
        return recorded.metrics
    record = RunRecord.load(attestation.parent / "run.json")
    return record.metrics if record is not None else {}
