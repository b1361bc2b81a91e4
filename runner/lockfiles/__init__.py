"""Lockfiles → locked packages: pip requirements with hashes, PEP 751 pylock.toml, uv.lock.

- `load_lockfile(path, fmt=None) -> Lockfile` (fmt None: by file name)
- `select_for_environment(lockfile, environment, *, shown=None) -> list[LockEntry]`: the entries that
  apply to one interpreter (markers, requires-python, uv's dependency graph)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from packaging.markers import Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from runner.errors import ManifestError
from runner.userfiles import read_user_file
from runner.lockfiles.interface import Edge, LockedPackage, LockEntry, Lockfile, LockfileFormat, lock_error
from runner.lockfiles.pylock import PylockFormat
from runner.lockfiles.requirements import RequirementsFormat
from runner.lockfiles.uvlock import UvLockFormat

FORMATS: dict[str, LockfileFormat] = {f.name: f for f in (PylockFormat(), UvLockFormat(), RequirementsFormat())}
MAX_LOCK_BYTES = 32 * 2**20

__all__ = ["FORMATS", "Edge", "LockEntry", "LockedPackage", "Lockfile", "LockfileFormat", "detect_format", "load_lockfile",
           "select_for_environment"]


def detect_format(path: Path) -> str:
    """The format a file name implies: pylock.toml / pylock.*.toml, uv.lock, else requirements."""
    for name, fmt in FORMATS.items():
        if fmt.matches(path.name):
            return name
    raise ManifestError(f"{path}: cannot tell the lock format from the name; set image.lockfileFormat")


def load_lockfile(path: Path, fmt: str | None = None) -> Lockfile:
    """Read and parse a lockfile; ManifestError naming file:line for anything unpinned or unhashed."""
    path = Path(path)
    shown = str(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ManifestError(f"{shown}: unknown lockfile format {fmt!r}; use one of {', '.join(FORMATS)}")
    data = read_user_file(path, "lockfile", max_bytes=MAX_LOCK_BYTES, hint="; fix image.lockfile", error=ManifestError)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{shown}: not UTF-8 text; save the lockfile as UTF-8") from None
    entries = FORMATS[fmt].parse(text, shown, path.absolute().parent)
    return Lockfile(path=path.absolute(), format=fmt, sha256=hashlib.sha256(data).hexdigest(),
                    packages=tuple(entries))


def select_for_environment(lockfile: Lockfile, environment: Mapping[str, str]) -> list[LockEntry]:
    """The entries to install for an interpreter whose PEP 508 environment is given, in lock order."""
    shown = str(lockfile.path)
    entries = [_as_entry(p) for p in lockfile.packages]
    python = Version(environment["python_full_version"])
    graph = any(e.needed_by for e in entries)
    active: dict[str, set[str]] = {}  # key -> extras turned on
    changed = True
    while changed:
        changed = False
        for entry in entries:
            if entry.marker and not _holds(entry.marker, environment, entry, shown):
                continue
            extras = active.get(entry.key)
            wanted, more = (True, set()) if not graph else _wanted(entry, active, environment, shown)
            if not wanted:
                continue
            if extras is None or not more <= extras:
                active[entry.key] = (extras or set()) | more
                changed = True
    chosen = [e for e in entries if e.key in active]
    seen: dict[str, LockEntry] = {}
    for entry in chosen:
        if entry.name in seen:
            raise lock_error(shown, entry.line, f"{entry.name} is locked twice for this interpreter "
                             f"({seen[entry.name].version} at {seen[entry.name].source} and {entry.version}); "
                             "their markers overlap: fix the markers or regenerate the lock")
        seen[entry.name] = entry
        if entry.requires_python and python not in SpecifierSet(entry.requires_python):
            raise lock_error(shown, entry.line, f"{entry.name} {entry.version} requires Python "
                             f"{entry.requires_python} but the base image has {python}; lock for that Python "
                             "or pick another base image")
    return chosen


def _wanted(entry: LockEntry, active: dict[str, set[str]], environment: Mapping[str, str],
            shown: str) -> tuple[bool, set[str]]:
    wanted, extras = False, set()
    for edge in entry.needed_by:
        if edge.parent is not None and edge.parent not in active:
            continue
        if edge.parent_extra is not None and edge.parent_extra not in active.get(edge.parent or "", set()):
            continue
        if edge.marker and not _holds(edge.marker, environment, entry, shown):
            continue
        wanted = True
        extras |= set(edge.extras)
    return wanted, extras


def _holds(marker: str, environment: Mapping[str, str], entry: LockEntry, shown: str) -> bool:
    env: dict[str, object] = {**environment, "extra": "", "extras": frozenset(),
                              "dependency_groups": frozenset(entry.groups)}
    try:
        try:
            return Marker(marker).evaluate(env, context="lock_file")  # type: ignore[arg-type]
        except TypeError:  # packaging < 25 has no context (and no PEP 751 marker names)
            return Marker(marker).evaluate(env)  # type: ignore[arg-type]
    except (UndefinedComparison, UndefinedEnvironmentName) as exc:
        raise lock_error(shown, entry.line, f"{entry.name}: cannot evaluate marker {marker!r}: {exc}") from None


def _as_entry(package: object) -> LockEntry:
    if isinstance(package, LockEntry):
        return package
    # A LockedPackage built elsewhere (a plan from JSON): no marker, no graph.
    fields = {k: getattr(package, k) for k in ("name", "version", "hashes", "source", "url", "artifacts")}
    return LockEntry(**fields)
