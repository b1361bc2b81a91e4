"""uv's `uv.lock`: a dependency graph from the workspace members down, wheels hash-locked per package.

The members themselves (sources `virtual`/`editable`) are the experiment's code, not installed; the
packages they reach through `dependencies` (optional extras followed when an edge asks for them,
dev groups left out) are. Which edges hold is only known for a target interpreter, so every entry
keeps its incoming edges and the selection walks them once the base image is inspected.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from runner.lockfiles.interface import (Edge, LockEntry, LockfileFormat, as_str_map, check_marker, check_specifier,
                                        check_version, key_line, load_toml, lock_error, normalize_hash, spans)

ROOT_SOURCES = ("virtual", "editable")


class UvLockFormat(LockfileFormat):
    """uv.lock version 1."""

    name = "uv"

    def matches(self, filename: str) -> bool:
        """uv.lock."""
        return filename == "uv.lock"

    def parse(self, text: str, shown: str, base_dir: Path) -> list[LockEntry]:
        """The packages reachable from the workspace members, each with its incoming edges."""
        doc = load_toml(text, shown)
        if doc.get("version") != 1:
            raise lock_error(shown, key_line(text, (1, 2 + len(text.splitlines())), "version"),
                             f"uv.lock version {doc.get('version')!r} is not supported; xrun reads version 1 "
                             "(regenerate it with a current uv)")
        requires_python = check_specifier(doc.get("requires-python"), shown, None)
        packages = [as_str_map(p) for p in doc.get("package") or ()]
        places = spans(text, "package")
        lines = [(key_line(text, places[i], "name") or places[i][0]) if i < len(places) else None
                 for i in range(len(packages))]
        # Without a workspace member every package is wanted, as in a flat lock.
        members = {i for i, p in enumerate(packages) if any(k in as_str_map(p.get("source")) for k in ROOT_SOURCES)}
        by_name: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(packages):
            by_name[canonicalize_name(str(p.get("name", "")))].append(i)
        incoming: dict[int, list[Edge]] = defaultdict(list)
        for i, p in enumerate(packages):
            parent = None if i in members else _key(p)
            for dep in p.get("dependencies") or ():
                self._link(as_str_map(dep), parent, None, by_name, packages, incoming, shown, lines[i])
            for extra, deps in as_str_map(p.get("optional-dependencies")).items():
                if i in members:
                    continue  # the project's own extras are not installed unless asked for
                for dep in deps or ():
                    self._link(as_str_map(dep), parent, str(extra), by_name, packages, incoming, shown, lines[i])
        wanted = _reachable(packages, members, incoming) if members else set(range(len(packages)))
        out = []
        for i in sorted(wanted):
            out.append(_entry(packages[i], text, places[i] if i < len(places) else None, lines[i], shown, base_dir,
                              requires_python, tuple(incoming.get(i, ())) if members else ()))
        return out

    @staticmethod
    def _link(dep: Any, parent: str | None, parent_extra: str | None, by_name: dict[str, list[int]],
              packages: list[Any], incoming: dict[int, list[Edge]], shown: str, line: int | None) -> None:
        name = canonicalize_name(str(dep.get("name", "")))
        version = str(dep["version"]) if dep.get("version") else None
        targets = [j for j in by_name.get(name, ())
                   if version is None or _version_eq(packages[j].get("version"), version)]
        if not targets:
            raise lock_error(shown, line, f"dependency {dep.get('name')!r}{' ' + version if version else ''} is not "
                             "in the lock; regenerate it with `uv lock`")
        edge = Edge(name=name, version=version, marker=check_marker(dep.get("marker"), shown, line),
                    extras=tuple(str(e) for e in dep.get("extra") or ()), parent=parent, parent_extra=parent_extra)
        for j in targets:
            incoming[j].append(edge)


def _key(pkg: Any) -> str:
    return f"{canonicalize_name(str(pkg.get('name', '')))}=={pkg.get('version')}"


def _version_eq(a: Any, b: str) -> bool:
    try:
        return Version(str(a)) == Version(b)
    except Exception:  # noqa: BLE001 - an unparsable version just does not match
        return str(a) == b


def _reachable(packages: list[Any], members: set[int], incoming: dict[int, list[Edge]]) -> set[int]:
    """Indices reachable from the members' edges, markers ignored (dev-only packages drop out)."""
    children: dict[str | None, list[int]] = defaultdict(list)
    for j, edges in incoming.items():
        for edge in edges:
            children[edge.parent].append(j)
    seen: set[int] = set()
    stack = list(children[None])
    while stack:
        j = stack.pop()
        if j in seen or j in members:
            continue
        seen.add(j)
        stack.extend(children.get(_key(packages[j]), ()))
    return seen


def _entry(pkg: Any, text: str, span: tuple[int, int] | None, line: int | None, shown: str, base_dir: Path,
           requires_python: str | None, needed_by: tuple[Edge, ...]) -> LockEntry:
    raw_name = str(pkg.get("name", ""))
    name = canonicalize_name(raw_name)
    source = as_str_map(pkg.get("source"))
    if "git" in source:
        raise lock_error(shown, key_line(text, span, "source") or line, f"{raw_name}: a git dependency cannot be "
                         "verified by hash; build a wheel and depend on it by URL or from an index")
    if "directory" in source or ("path" in source and not str(source["path"]).endswith(".whl")
                                 and not pkg.get("wheels")):
        raise lock_error(shown, key_line(text, span, "source") or line, f"{raw_name}: a local source tree cannot be "
                         "hash-locked; build a wheel or make it a workspace member")
    version = check_version(pkg.get("version"), raw_name, shown, key_line(text, span, "version") or line)
    artifacts = [_artifact(as_str_map(w), source, raw_name, shown, line, base_dir) for w in pkg.get("wheels") or ()]
    if not artifacts:
        where = key_line(text, span, "sdist") or line
        raise lock_error(shown, where, f"{raw_name} {version}: no wheel is locked (sdist only); xrun installs "
                         "wheels only, with the network off: pick a version with wheels")
    for art in artifacts:
        try:
            wheel_name, wheel_version, _, _ = parse_wheel_filename(art["filename"])
        except InvalidWheelFilename:
            raise lock_error(shown, line, f"{raw_name}: {art['filename']!r} is not a wheel file name") from None
        if wheel_name != name or wheel_version != Version(version):
            raise lock_error(shown, line, f"{raw_name} {version}: the wheel {art['filename']} is for "
                             f"{wheel_name} {wheel_version}; regenerate the lock")
    index = source.get("registry") if isinstance(source.get("registry"), str) else None
    hashes = tuple(dict.fromkeys(f"{a}:{h}" for art in artifacts for a, h in art["hashes"].items()))
    return LockEntry(name=name, version=version, hashes=hashes, source=f"{shown}:{line}" if line else shown,
                     url=str(source["url"]) if "url" in source else None, artifacts=tuple(artifacts),
                     requires_python=requires_python, index=index, line=line, needed_by=needed_by)


def _artifact(wheel: Any, source: Any, raw_name: str, shown: str, line: int | None, base_dir: Path) -> dict[str, Any]:
    value = wheel.get("hash")
    if not isinstance(value, str) or ":" not in value:
        raise lock_error(shown, line, f"{raw_name}: a wheel has no hash; regenerate the lock with `uv lock`")
    algo, _, hexdigest = value.partition(":")
    algo, hexdigest = normalize_hash(algo, hexdigest, shown, line).split(":", 1)
    registry = source.get("registry") if isinstance(source.get("registry"), str) else ""
    local_registry = bool(registry) and "://" not in registry
    if wheel.get("url"):
        location = str(wheel["url"])
    elif wheel.get("path"):
        # Wheels of a find-links folder are listed relative to that folder.
        location = _local(str(wheel["path"]), _local(registry, base_dir) if local_registry else base_dir)
    elif source.get("path"):
        location = _local(str(source["path"]), base_dir)
    elif local_registry and wheel.get("filename"):
        location = str(Path(_local(registry, base_dir)) / str(wheel["filename"]))
    elif source.get("url"):
        location = str(source["url"])
    else:
        raise lock_error(shown, line, f"{raw_name}: a wheel has neither url nor path; regenerate the lock")
    filename = str(wheel.get("filename") or location.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    return {"url": location, "filename": filename, "hashes": {algo: hexdigest},
            **({"size": wheel["size"]} if isinstance(wheel.get("size"), int) else {})}


def _local(path: str, base: Path | str) -> str:
    """An absolute path for a lock-relative one."""
    return str(Path(path) if Path(path).is_absolute() else Path(base) / path)
