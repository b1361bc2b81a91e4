"""`xrun rebuild`: assemble the image an attestation records from the inputs it records, compare the IDs.

The inputs are taken by content: the base by digest (or bootstrapped again from the recorded package
set), every wheel by its sha256 through the cache, the code tree from a stated folder checked against
the recorded tree digest. The image is assembled by the same code as `xrun build`
(runner.build.image.assemble_image) and never loaded: the verdict is the image ID. When it differs,
the report names what: the base (package by package for a bootstrapped one), a wheel, the code tree,
then layer by layer (diff IDs) and, for small layers, file by file against the recorded image when
the engine holds it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.attest.recorded import (NOT_VERIFIED, RecordedBase, RecordedImage, RecordedRun, RecordedWheel,
                                    verified_statement)
from runner.build.bootstrap import DebPackage
from runner.build.image import ResolvedBase, assemble_image, bootstrap_base, code_layer, resolve_pinned_base
from runner.build.layers import image_exists, list_layer, write_layer
from runner.errors import BuildError, FetchError, IntegrityError, ManifestError, UsageError
from runner.fetch.interface import FetchOptions
from runner.plan import CodeTree
from runner.wire import fields_to_wire

__all__ = ["FileChange", "LayerComparison", "RebuildReport", "rebuild", "render_text"]

# Layers up to this size are compared file by file (tar listings); larger ones by diff ID only.
SMALL_LAYER_BYTES = 512 << 20
MAX_FILES_SHOWN = 20


@dataclass(frozen=True)
class FileChange:
    """One path of a layer that differs: 'SIZE sha256:HEX' (or 'dir'/'link:…') recorded vs rebuilt."""

    path: str
    recorded: str | None
    rebuilt: str | None


@dataclass(frozen=True)
class LayerComparison:
    """One layer position: recorded and rebuilt diff IDs, and the files that differ when they were compared."""

    index: int  # 1-based
    role: str  # "base", "deps (/opt/xrun)", "code (/workspace)"
    recorded: str | None
    rebuilt: str | None
    files: tuple[FileChange, ...] = ()
    note: str | None = None

    @property
    def same(self) -> bool:
        """Whether the diff IDs are equal."""
        return self.recorded == self.rebuilt


@dataclass(frozen=True)
class RebuildReport:
    """The verdict of `xrun rebuild`."""

    attestation: str
    identical: bool
    recorded_image_id: str
    rebuilt_image_id: str | None
    base_image_id: str | None
    code: str
    code_digest: str
    wheels: int
    differences: tuple[str, ...] = ()
    layers: tuple[LayerComparison, ...] = ()
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    verified: bool = True  # False only with --no-verify: the recorded inputs were taken on trust

    def to_json(self) -> dict[str, Any]:
        """The `--json` object (camelCase)."""
        out: dict[str, Any] = fields_to_wire(self)
        for row, layer in zip(out["layers"], self.layers, strict=True):
            row["same"] = layer.same
        return out


# --- the inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeSource:
    """The code tree found for the rebuild, and the lockfile beside the manifest when there is one."""

    tree: CodeTree
    lockfile: Path | None


def locate_code(statement: dict[str, Any], attestation: Path, code: Path | None) -> CodeSource:
    """The code tree from --code DIR, else the recorded run's folder, hashed as `xrun build` hashes it."""
    from runner.manifest import load_manifest
    from runner.plan import resolve_code
    from runner.reproduce import manifest_for

    path = manifest_for(statement, attestation, None, code, manifest_hint="")
    temporary = path.name.startswith(".xrun-reproduce-")
    try:
        manifest = load_manifest(path)
        tree = resolve_code(manifest.code, manifest.file)
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    return CodeSource(tree, manifest.image.lockfile)


def _base(recorded: RecordedBase, client: Any, cache: Any, quiet: bool) -> ResolvedBase:
    """The recorded base in the engine: by digest (pulled when absent), or bootstrapped from its package set."""
    from runner.manifest import BootstrapSpec
    from runner.plan import parse_image_ref

    if recorded.reference:
        return resolve_pinned_base(parse_image_ref(recorded.reference), client, quiet=quiet)
    boot = recorded.bootstrap or {}
    try:
        spec = BootstrapSpec(suite=str(boot["suite"]), packages=tuple(str(p) for p in boot.get("packages") or ()),
                             variant=str(boot.get("variant") or "minbase"), architecture=boot.get("architecture"),
                             image_id=recorded.image_id if image_exists(client, recorded.image_id) else None)
    except KeyError:
        raise UsageError("the attestation's base-image records neither a reference nor a bootstrap suite; "
                         "it was not written by xrun") from None
    try:
        return bootstrap_base(spec, client, cache, quiet=quiet)
    except BuildError as exc:
        raise FetchError(f"base: bootstrapping {spec.suite} with {', '.join(spec.packages)} failed, so the "
                         "recorded base cannot be had here: " + exc.message, lines=exc.lines) from None


def package_changes(recorded: tuple[str, ...], now: tuple[DebPackage, ...]) -> list[str]:
    """Package by package: what a bootstrapped base holds now against the recorded pkg:deb list."""
    from packageurl import PackageURL

    was: dict[tuple[str, str], str] = {}
    for uri in recorded:
        p = PackageURL.from_string(uri)
        was[(p.name, (p.qualifiers or {}).get("arch", ""))] = p.version or ""
    has = {(d.name, d.arch): d.version for d in now}
    out = []
    for key in sorted(set(was) | set(has)):
        name = f"{key[0]}:{key[1]}" if key[1] else key[0]
        a, b = was.get(key), has.get(key)
        if a is None:
            out.append(f"package {name}: not recorded, now {b}")
        elif b is None:
            out.append(f"package {name}: recorded {a}, now not installed")
        elif a != b:
            out.append(f"package {name}: recorded {a}, now {b}")
    return out


def _wheels(recorded: tuple[RecordedWheel, ...], lockfile: Path | None, python: Any, cache: Any,
            quiet: bool) -> list[Any]:
    """Every recorded wheel by its sha256 through the cache: from its download location, or a local wheel
    from the lock beside the manifest (the same file name); a different file is an integrity error."""
    from runner.build.wheels import Candidate, Chosen, fetch_wheels
    from runner.lockfiles.interface import LockEntry

    if not recorded:
        return []
    if python is None:
        raise IntegrityError("the attestation records wheels, but the base image has no Python to lay them out "
                             "for; the base is not the recorded one")
    local = _local_wheels(lockfile) if any(w.download_location is None for w in recorded) else {}
    chosen = []
    for w in recorded:
        url = w.download_location or local.get(w.filename)
        if url is None:
            raise FetchError(f"wheel/{w.name} ({w.purl}, sha256 {w.sha256[:12]}…): a local wheel {w.filename}, and "
                             f"{'the lockfile ' + str(lockfile) if lockfile else 'no lockfile'} beside the manifest "
                             "names no such file; put the wheel back beside the lockfile")
        entry = LockEntry(name=w.name, version=w.version, hashes=(f"sha256:{w.sha256}",),
                          source=f"the attestation's wheel/{w.name}")
        chosen.append(Chosen(entry, Candidate(w.filename, url, {"sha256": w.sha256})))
    base_dir = lockfile.parent if lockfile is not None else Path.cwd()
    try:
        return fetch_wheels(chosen, cache, base_dir=base_dir, options=FetchOptions(quiet=quiet))
    except IntegrityError as exc:
        names = [f"wheel/{w.name} ({w.purl})" for w in recorded if w.filename in exc.message]
        raise IntegrityError(f"{names[0] if names else 'a wheel'}: not the wheel the attestation records: "
                             + exc.message, lines=exc.lines) from None


def _local_wheels(lockfile: Path | None) -> dict[str, str]:
    """file name → location of the local wheels the lockfile names."""
    from runner.lockfiles import load_lockfile

    if lockfile is None or not lockfile.is_file():
        return {}
    try:
        lock = load_lockfile(lockfile, None)
    except ManifestError:
        return {}
    out: dict[str, str] = {}
    for entry in lock.packages:
        for artifact in getattr(entry, "artifacts", ()) or ():
            if artifact.get("filename") and artifact.get("url"):
                out.setdefault(str(artifact["filename"]), str(artifact["url"]))
        if entry.url:
            out.setdefault(entry.url.rsplit("/", 1)[-1], entry.url)
    return out


# --- comparing -------------------------------------------------------------------------------------


def _recorded_layers(client: Any, image: RecordedImage, wanted: set[str], work: Path) -> dict[str, Path]:
    """The recorded image's layers from the engine (docker save) when it holds the image; else none."""
    from runner.build.export import save_layers

    if not wanted or not image_exists(client, image.id):
        return {}
    return save_layers(client, image.id, work / "recorded", wanted).layers


def _listing(path: Path) -> dict[str, str]:
    """path → 'SIZE sha256:HEX MODE' / 'dir MODE' / 'link:TARGET' of a layer tar."""
    import tarfile

    sizes = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            sizes[member.name] = member.size
    return {name: (f"{sizes[name]} {value}" if value.startswith("sha256:") else value)
            for name, value in list_layer(path).items()}


def file_changes(recorded: Path, rebuilt: Path) -> tuple[FileChange, ...]:
    """Path by path: entries of two layer tars that differ (size, sha256, mode, link target), or only in one."""
    a, b = _listing(recorded), _listing(rebuilt)
    return tuple(FileChange(p, a.get(p), b.get(p)) for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p))


def compare_layers(recorded: tuple[str, ...], rebuilt: tuple[str, ...], ours: dict[str, Path], theirs: dict[str, Path],
                   n_base: int) -> tuple[LayerComparison, ...]:
    """Layer by layer: diff IDs, and for differing small layers both at hand, the files that differ."""
    out = []
    count = max(len(recorded), len(rebuilt))
    for i in range(count):
        a = recorded[i] if i < len(recorded) else None
        b = rebuilt[i] if i < len(rebuilt) else None
        # base layers, the dependency layers (seed hook and venv, then one per wheel), the code last
        role = "base" if i < n_base else "code (/workspace)" if i == count - 1 else "deps (/opt/xrun)"
        files: tuple[FileChange, ...] = ()
        note = None
        if a != b and b in ours:
            if a not in theirs:
                note = "the recorded layer is not at hand (the engine does not hold the recorded image): files not compared"
            elif max(ours[b].stat().st_size, theirs[a].stat().st_size) > SMALL_LAYER_BYTES:
                note = "large layer: compared by diff ID only"
            else:
                files = file_changes(theirs[a], ours[b])
        out.append(LayerComparison(i + 1, role, a, b, files, note))
    return tuple(out)


def _layer_lines(layers: tuple[LayerComparison, ...]) -> list[str]:
    lines = []
    for layer in layers:
        if layer.same:
            continue
        lines.append(f"layer {layer.index} ({layer.role}): recorded {layer.recorded}, rebuilt {layer.rebuilt}")
        for change in layer.files[:MAX_FILES_SHOWN]:
            lines.append(f"  file /{change.path}: recorded {change.recorded or 'absent'}, "
                         f"rebuilt {change.rebuilt or 'absent'}")
        if len(layer.files) > MAX_FILES_SHOWN:
            lines.append(f"  … and {len(layer.files) - MAX_FILES_SHOWN} more files")
        if layer.note:
            lines.append(f"  ({layer.note})")
    return lines


# --- the verb --------------------------------------------------------------------------------------


def rebuild(attestation: Path, *, code: Path | None = None, keys: list[Path] | None = None, client: Any = None,
            cache: Any = None, quiet: bool = False, verify: bool = True) -> RebuildReport:
    """Verify (verify=False: explicitly not), rebuild the recorded image from its recorded inputs, compare;
    exceptions for exit 2/3/4."""
    report = _verify_and_rebuild(attestation, code, list(keys or []), client, cache, quiet, verify)
    return report if verify else replace(report, verified=False, notes=(NOT_VERIFIED, *report.notes))


def _verify_and_rebuild(attestation: Path, code: Path | None, keys: list[Path], client: Any, cache: Any,
                        quiet: bool, verify: bool) -> RebuildReport:
    started = time.perf_counter()
    statement = verified_statement(attestation, keys, verify=verify, action="rebuilt")
    recorded = RecordedRun.from_statement(statement)
    if recorded.image is None or recorded.base is None or recorded.code_digest is None:
        raise UsageError(f"{attestation}: the attestation records no image, base or code tree digest "
                         "(resolvedDependencies image, base-image, code); it was not written by xrun")
    if client is None:
        from runner.engine.client import docker_client

        client = docker_client()
    if cache is None:
        from runner.fetch import Cache

        cache = Cache.default()
    source = locate_code(statement, attestation, code)
    work = cache.work_dir("rebuild")
    try:
        if source.tree.digest != recorded.code_digest:
            return _code_differs(attestation, recorded, source.tree, client, work, started)
        return _rebuild(attestation, recorded, source, client, cache, work, quiet, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _code_differs(attestation: Path, recorded: RecordedRun, tree: CodeTree, client: Any, work: Path,
                  started: float) -> RebuildReport:
    """The code tree is not the recorded one: name both digests and, against the recorded image's code layer
    when the engine holds it, the files that differ. Nothing else is fetched."""
    assert recorded.image is not None
    ours = write_layer(code_layer(tree), work / "code.tar")
    recorded_code = recorded.image.layers[-1] if recorded.image.layers else None
    theirs = _recorded_layers(client, recorded.image, {recorded_code} if recorded_code else set(), work)
    index = len(recorded.image.layers) or 1
    layer = compare_layers((recorded_code,) if recorded_code else (), (ours.diff_id,), {ours.diff_id: ours.file()},
                           theirs, 0)[0]
    layer = LayerComparison(index, "code (/workspace)", layer.recorded, layer.rebuilt, layer.files, layer.note)
    differences = (f"code {tree.root}: tree digest {tree.digest}, the attestation records {recorded.code_digest}",)
    return RebuildReport(attestation=str(attestation), identical=False, recorded_image_id=recorded.image.id,
                         rebuilt_image_id=None, base_image_id=None, code=str(tree.root), code_digest=tree.digest,
                         wheels=len(recorded.wheels), differences=differences, layers=(layer,),
                         seconds=time.perf_counter() - started)



def _rebuild(attestation: Path, recorded: RecordedRun, source: CodeSource, client: Any, cache: Any, work: Path,
             quiet: bool, started: float) -> RebuildReport:
    from runner.build.wheels import inspect_python

    assert recorded.image is not None and recorded.base is not None
    base = _base(recorded.base, client, cache, quiet)
    differences: list[str] = []
    if base.image_id != recorded.base.image_id:
        where = recorded.base.reference or f"bootstrap {recorded.base.bootstrap}"
        differences.append(f"base {where}: image {base.image_id}, the attestation records {recorded.base.image_id}")
        if recorded.base.bootstrap is not None:
            differences += package_changes(recorded.base.debs, base.debs)
    python = inspect_python(client, base.image_id, cache)
    wheels = _wheels(recorded.wheels, source.lockfile, python, cache, quiet)
    if not quiet:
        import sys

        print(f"xrun: rebuilding {recorded.image.id} on {base.image_id} ({len(wheels)} wheels, "
              f"{len(source.tree.files)} code files)", file=sys.stderr)
    assembly = assemble_image(source.tree, client, base, python, wheels, work)
    identical = assembly.image_id == recorded.image.id
    layers: tuple[LayerComparison, ...] = ()
    if not identical:
        rebuilt_ids = assembly.config.diff_ids
        ours = {layer.diff_id: layer.file() for layer in assembly.layers}
        wanted = {d for i, d in enumerate(recorded.image.layers)
                  if i >= len(base.layers) and (i >= len(rebuilt_ids) or rebuilt_ids[i] != d)}
        theirs = _recorded_layers(client, recorded.image, wanted, work)
        layers = compare_layers(recorded.image.layers, rebuilt_ids, ours, theirs, len(base.layers))
        if recorded.image.layers and all(layer.same for layer in layers):
            differences.append("every layer is identical: the image config differs (environment, workdir or labels "
                               "of another xrun version?)")
        elif not recorded.image.layers:
            differences.append("the attestation records no layer diff IDs (an older xrun): only the IDs compared")
    return RebuildReport(attestation=str(attestation), identical=identical, recorded_image_id=recorded.image.id,
                         rebuilt_image_id=assembly.image_id, base_image_id=base.image_id, code=str(source.tree.root),
                         code_digest=source.tree.digest, wheels=len(wheels), differences=tuple(differences),
                         layers=layers, seconds=time.perf_counter() - started)


def mismatch_lines(report: RebuildReport) -> list[str]:
    """What differs, one line each: inputs first, then layer by layer and file by file."""
    return list(report.differences) + _layer_lines(report.layers)


def render_text(report: RebuildReport) -> str:
    """The report as a person reads it."""
    notes = [f"  {note}" for note in report.notes]
    if report.identical:
        return "\n".join([f"IDENTICAL  {report.recorded_image_id}",
                          f"  rebuilt from base {report.base_image_id}, {report.wheels} wheels, code {report.code} "
                          f"({report.code_digest}) in {report.seconds:.1f} s", *notes])
    head = (f"DIFFERENT  recorded {report.recorded_image_id}, rebuilt {report.rebuilt_image_id or '(not rebuilt)'}")
    return "\n".join([head, *(f"  {line}" for line in mismatch_lines(report)), *notes])
