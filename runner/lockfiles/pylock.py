"""PEP 751 `pylock.toml` (lock-version 1.x): packages with hash-locked wheels, each with its marker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from runner.lockfiles.interface import (LockEntry, LockfileFormat, as_str_map, check_marker, check_specifier,
                                        check_version, key_line, load_toml, local_wheel, lock_error, normalize_hash,
                                        spans)

_NAME = re.compile(r"^pylock\.([^.]+\.)?toml$")


class PylockFormat(LockfileFormat):
    """`[[packages]]` with `wheels = [{url|path, hashes}]`; vcs, directory and sdist-only entries are refused."""

    name = "pylock"

    def matches(self, filename: str) -> bool:
        """pylock.toml or pylock.NAME.toml (PEP 751's file names)."""
        return bool(_NAME.match(filename))

    def parse(self, text: str, shown: str, base_dir: Path) -> list[LockEntry]:
        """Every package of the lock; markers stay unevaluated until the target is known."""
        doc = load_toml(text, shown)
        version = doc.get("lock-version")
        if not isinstance(version, str) or version.split(".")[0] != "1":
            raise lock_error(shown, key_line(text, (1, len(text.splitlines()) + 1), "lock-version"),
                             f"lock-version {version!r} is not supported; xrun reads PEP 751 lock-version 1.x")
        requires_python = check_specifier(doc.get("requires-python"), shown, None)
        groups = tuple(str(g) for g in doc.get("default-groups") or ())
        packages = doc.get("packages") or []
        if not isinstance(packages, list):
            raise lock_error(shown, None, "`packages` must be an array of tables ([[packages]])")
        places = spans(text, "packages")
        out = []
        for i, pkg in enumerate(packages):
            span = places[i] if i < len(places) else None
            out.append(_entry(as_str_map(pkg), text, span, shown, base_dir, requires_python, groups))
        return out


def _entry(pkg: Any, text: str, span: tuple[int, int] | None, shown: str, base_dir: Path,
           requires_python: str | None, groups: tuple[str, ...]) -> LockEntry:
    line = key_line(text, span, "name") or (span[0] if span else None)
    raw_name = pkg.get("name")
    if not isinstance(raw_name, str) or not raw_name:
        raise lock_error(shown, span[0] if span else None, "a [[packages]] entry has no name")
    name = canonicalize_name(raw_name)
    if "vcs" in pkg:
        raise lock_error(shown, key_line(text, span, "vcs") or line, f"{raw_name}: a VCS package cannot be verified "
                         "by hash; build a wheel from it and lock that wheel")
    if "directory" in pkg:
        raise lock_error(shown, key_line(text, span, "directory") or line, f"{raw_name}: a local directory cannot be "
                         "hash-locked; build a wheel (or put the code in code.path)")
    version = check_version(pkg.get("version"), raw_name, shown, key_line(text, span, "version") or line)
    marker = check_marker(pkg.get("marker"), shown, key_line(text, span, "marker") or line)
    artifacts: list[dict[str, Any]] = []
    for wheel in pkg.get("wheels") or ():
        artifacts.append(_artifact(as_str_map(wheel), raw_name, text, span, shown, base_dir, "wheels"))
    if "archive" in pkg:
        archive = _artifact(as_str_map(pkg["archive"]), raw_name, text, span, shown, base_dir, "archive")
        if archive["filename"].endswith(".whl"):
            artifacts.append(archive)
    if not artifacts and "sdist" in pkg:
        raise lock_error(shown, key_line(text, span, "sdist") or line, f"{raw_name} {version}: only an sdist is "
                         "locked; xrun installs wheels only (the build has no network): lock a wheel")
    if not artifacts:
        raise lock_error(shown, line, f"{raw_name} {version}: no wheel is locked; regenerate the lock")
    for artifact in artifacts:
        _check_wheel_name(artifact["filename"], name, version, raw_name, shown, line)
    hashes = tuple(dict.fromkeys(f"{a}:{h}" for art in artifacts for a, h in art["hashes"].items()))
    return LockEntry(
        name=name, version=version, hashes=hashes, source=f"{shown}:{line}" if line else shown,
        artifacts=tuple(artifacts), marker=marker,
        requires_python=check_specifier(pkg.get("requires-python"), shown, line) or requires_python,
        index=str(pkg["index"]) if pkg.get("index") else None, line=line, groups=groups,
    )


def _artifact(art: Any, raw_name: str, text: str, span: tuple[int, int] | None, shown: str, base_dir: Path,
              key: str) -> dict[str, Any]:
    line = key_line(text, span, key) or (span[0] if span else None)
    url, path = art.get("url"), art.get("path")
    if not url and not path:
        raise lock_error(shown, line, f"{raw_name}: a {key} entry has neither url nor path")
    if url and urlsplit(str(url)).scheme.lower() == "file":
        url, path = None, unquote(urlsplit(str(url)).path)
    location = str(url) if url else local_wheel(str(path), base_dir, shown, line, must_exist=False)
    filename = art.get("name") or urlsplit(str(url or path)).path.rstrip("/").rsplit("/", 1)[-1]
    raw_hashes = as_str_map(art.get("hashes"))
    if not raw_hashes:
        raise lock_error(shown, line, f"{raw_name}: {filename} has no hashes; PEP 751 requires them: regenerate "
                         "the lock")
    hashes = dict(normalize_hash(a, str(h), shown, line).split(":", 1) for a, h in raw_hashes.items())
    return {"url": location, "filename": str(filename), "hashes": hashes,
            **({"size": art["size"]} if isinstance(art.get("size"), int) else {})}


def _check_wheel_name(filename: str, name: str, version: str, raw_name: str, shown: str, line: int | None) -> None:
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        raise lock_error(shown, line, f"{raw_name}: {filename!r} is not a wheel file name") from None
    if wheel_name != name or wheel_version != Version(version):
        raise lock_error(shown, line, f"{raw_name} {version}: the wheel {filename} is for {wheel_name} "
                         f"{wheel_version}; regenerate the lock")
