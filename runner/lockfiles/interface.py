"""The lockfile interface: one parser per format, all producing the same LockEntry records.

A parser only reads its format and checks what can be checked without a target: every package
pinned to one version, every artifact hash-locked, nothing from VCS or a bare URL. Which entries
apply to a given base image (markers, the dependency graph of uv.lock) is decided later, by
`select_for_environment`, once the image's interpreter is known.
"""

from __future__ import annotations

import abc
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from runner.errors import ManifestError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The digests a lock may carry that xrun can verify (what runner.fetch checks while streaming).
VERIFIABLE = ("sha256", "sha512")
_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128, "md5": 32}
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class LockedPackage:
    """One package of the lockfile: exact version and the hashes any of its artifacts may have."""

    name: str  # normalised (PEP 503)
    version: str
    hashes: tuple[str, ...]  # "sha256:<hex>" strings
    source: str  # file:line or table path, for error messages
    url: str | None = None  # a direct URL when the lock gives one
    artifacts: tuple[dict[str, Any], ...] = ()  # pylock/uv: [{"url","filename","hashes":{...}}]


@dataclass(frozen=True)
class Lockfile:
    path: Path
    format: str  # "requirements" | "pylock" | "uv"
    sha256: str
    packages: tuple[LockedPackage, ...]


@dataclass(frozen=True)
class Edge:
    """A dependency edge of a graph lock (uv.lock): `name` (and `version` when forked) under `marker`."""

    name: str
    version: str | None = None
    marker: str | None = None
    extras: tuple[str, ...] = ()  # extras of the target this edge turns on
    parent: str | None = None  # key of the package declaring it; None: a root (the project itself)
    parent_extra: str | None = None  # the edge only counts when the parent has this extra on


@dataclass(frozen=True)
class LockEntry(LockedPackage):
    """A LockedPackage plus what choosing and installing it needs (fields the plan does not digest)."""

    marker: str | None = None  # PEP 508 environment marker; the entry applies only where it is true
    requires_python: str | None = None
    index: str | None = None  # simple-API index to find the artifact by hash (requirements files)
    line: int | None = None
    needed_by: tuple[Edge, ...] = ()  # graph locks: incoming edges; empty = always wanted (flat locks)
    groups: tuple[str, ...] = ()  # pylock: the default dependency groups its markers may test

    @property
    def key(self) -> str:
        """name==version: unique inside one lock even when uv forks a package into two versions."""
        return f"{self.name}=={self.version}"


class LockfileFormat(abc.ABC):
    """One lock format: recognises its file names and parses its text into LockEntry records."""

    name: str = ""

    @abc.abstractmethod
    def matches(self, filename: str) -> bool:
        """Whether a file with this name is, by convention, in this format."""

    @abc.abstractmethod
    def parse(self, text: str, shown: str, base_dir: Path) -> list[LockEntry]:
        """Every locked package; raise ManifestError naming `shown:line` for anything unpinned or unhashed."""


def lock_error(shown: str, line: int | None, message: str) -> ManifestError:
    """A one-line lockfile error: `file:line: message`."""
    where = f"{shown}:{line}" if line else shown
    return ManifestError(f"{where}: {message}")


def normalize_hash(algo: str, value: str, shown: str, line: int | None) -> str:
    """'algo:hex' lowercased, after checking the hex length; unknown algorithms are an error."""
    algo = algo.lower().strip()
    hexdigest = value.lower().strip()
    if algo not in _HEX_LEN:
        raise lock_error(shown, line, f"hash algorithm {algo!r} is not supported; lock with sha256 hashes")
    if len(hexdigest) != _HEX_LEN[algo] or not _HEX.match(hexdigest):
        raise lock_error(shown, line, f"{algo} hash {value!r} is not {_HEX_LEN[algo]} hex digits; "
                         "regenerate the lock")
    return f"{algo}:{hexdigest}"


def local_wheel(path_text: str, base_dir: Path, shown: str, line: int | None, *, must_exist: bool = True) -> str:
    """A local wheel's path relative to the lockfile's folder (POSIX); refuse one outside that folder or missing.

    The relative form keeps host paths out of image labels and attestations, and the lockfile's
    folder is the one root a lock may draw files from: it travels with the experiment. must_exist is
    off where a lock lists wheels for other platforms that need not be here (pylock).
    """
    given = Path(path_text).expanduser()
    full = Path(os.path.normpath(given if given.is_absolute() else base_dir / given))
    root = Path(os.path.normpath(base_dir))
    try:
        rel = full.relative_to(root)
        full.resolve().relative_to(root.resolve())  # a symlink may not lead out either
    except ValueError:
        raise lock_error(shown, line, f"{path_text}: the wheel is outside the lockfile's folder ({root}); copy it "
                         "under that folder (e.g. ./wheels/) and lock it by a relative path") from None
    if must_exist and not full.is_file():
        raise lock_error(shown, line, f"{path_text}: no such file ({full}); put the wheel there or fix the lock line")
    return rel.as_posix()


def is_local(url: str) -> bool:
    """Whether an artifact location is a path or file: URL (not fetched over the network)."""
    return not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", url) or url.lower().startswith("file:")


def verifiable(hashes: Iterable[str]) -> dict[str, str]:
    """The first hash per algorithm xrun can verify, as {algo: hex} (sha256 preferred)."""
    out: dict[str, str] = {}
    for value in hashes:
        algo, _, hexdigest = value.partition(":")
        if algo in VERIFIABLE and algo not in out:
            out[algo] = hexdigest
    return out


def check_marker(marker: str | None, shown: str, line: int | None) -> str | None:
    """A marker string that packaging can parse (None stays None)."""
    if marker is None or not marker.strip():
        return None
    try:
        Marker(marker)
    except InvalidMarker as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid syntax"
        raise lock_error(shown, line, f"invalid environment marker {marker!r}: {reason}") from None
    return marker.strip()


def check_version(version: Any, name: str, shown: str, line: int | None) -> str:
    """A PEP 440 version string; missing or invalid is an 'unpinned' error."""
    if not isinstance(version, str) or not version:
        raise lock_error(shown, line, f"package {name!r} has no version: every package must be pinned "
                         "to one version; regenerate the lock")
    try:
        Version(version)
    except InvalidVersion:
        raise lock_error(shown, line, f"package {name!r}: {version!r} is not a valid version") from None
    return version


def check_specifier(spec: str | None, shown: str, line: int | None) -> str | None:
    """A requires-python specifier that packaging can parse."""
    if not spec:
        return None
    try:
        SpecifierSet(spec)
    except InvalidSpecifier:
        raise lock_error(shown, line, f"invalid requires-python {spec!r}") from None
    return spec


# --- line numbers for TOML (tomllib keeps none) ----------------------------------------------------


def table_lines(text: str, header: str) -> list[int]:
    """1-based line numbers of each `[[header]]` array-of-tables header, in file order."""
    pattern = re.compile(r"^\s*\[\[\s*" + re.escape(header) + r"\s*\]\]\s*(#.*)?$")
    return [i for i, line in enumerate(text.splitlines(), 1) if pattern.match(line)]


def key_line(text: str, span: tuple[int, int] | None, key: str) -> int | None:
    """The line of the first `key = …` or `[….key]` header in lines [start, end) of a table; None if absent."""
    if span is None:
        return None
    start, end = span
    pattern = re.compile(r"^\s*(" + re.escape(key) + r"\s*=|\[\[?\s*[\w.-]*\.\s*" + re.escape(key) + r"\s*\])")
    for number, line in enumerate(text.splitlines()[start - 1:end - 1], start):
        if pattern.match(line):
            return number
    return None


def spans(text: str, header: str) -> list[tuple[int, int]]:
    """[start, end) line spans of each `[[header]]` table, its sub-tables included."""
    starts = table_lines(text, header)
    # A following top-level table that is not a sub-table of this array ends the last span.
    total = len(text.splitlines()) + 1
    other = re.compile(r"^\s*\[\[?\s*(?!" + re.escape(header) + r"\s*[.\]])")
    out = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else total
        for number, line in enumerate(text.splitlines()[start:end - 1], start + 1):
            if other.match(line):
                end = number
                break
        out.append((start, end))
    return out


def load_toml(text: str, shown: str) -> dict[str, Any]:
    """Parse TOML; a syntax error names the file and line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise lock_error(shown, int(line.group(1)) if line else None, f"TOML syntax error: {exc}; fix the file "
                         "or regenerate the lock") from None


def as_str_map(value: Any) -> Mapping[str, Any]:
    """A TOML table or an empty mapping."""
    return value if isinstance(value, Mapping) else {}
