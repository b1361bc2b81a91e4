"""Hash the declared outputs of a run (by the runner, never by the training code) and read metrics."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import TrainingFailed
from runner.hashing import FileDigest, hash_files
from runner.manifest import OutputSpec
from runner.progress import ProgressSink, StderrProgress


@dataclass(frozen=True)
class Outputs:
    """Every output file (declared files, and the files of declared folders) and the metrics read."""

    files: tuple[FileDigest, ...]  # paths relative to /outputs, sorted
    metrics: dict[str, dict[str, float]]  # metrics file path → flattened numbers (a list's last value)
    steps: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # file → key → [[step, value], …]

    def digests(self) -> dict[str, str]:
        """path → sha256 hex."""
        return {f.path: f.sha256 for f in self.files}


UNDECLARED = "undeclared"  # beside outputs/: what the run wrote but did not declare (kept, never attested)
# Folders nested deeper than this are refused before any walk: no real output needs it, and a
# 10,000-deep tree would exhaust recursion and PATH_MAX in every tool that reads it later.
MAX_DEPTH = 256


@dataclass(frozen=True)
class Dropped:
    """An entry under /outputs that was not hashed: why, and where it went (removed or set aside)."""

    path: str  # relative to /outputs
    reason: str


def collect_outputs(specs: tuple[OutputSpec, ...], outputs_dir: Path,
                    progress: ProgressSink | None = None) -> Outputs:
    """Check every declared output exists, expand folders, hash files, parse metrics files.

    Afterwards outputs/ holds only what was hashed: FIFOs, sockets, devices and symlinks that lead
    out of /outputs are removed, undeclared files are moved to ../undeclared/; each with a warning.
    """
    progress = progress or StderrProgress()
    root = outputs_dir.resolve()
    _check_depth(root)
    missing = [s.path for s in specs if not os.path.lexists(root / s.path)]
    if missing:
        raise TrainingFailed(f"the run did not produce the declared output(s) {', '.join(missing)} under /outputs; "
                             "make the training command write them or fix `outputs` in the manifest")
    found: dict[str, Path] = {}
    dropped: list[Dropped] = []
    for spec in specs:
        target = root / spec.path
        problem = _refusal(target, root)
        if problem is not None:
            _remove(target)
            raise TrainingFailed(f"output {spec.path!r} {problem}; it was removed from outputs/: outputs must be "
                                 "regular files (or folders of them) written under /outputs")
        if target.is_dir():
            found.update(_walk(target, root, spec.path, dropped, set()))
        else:
            found[spec.path] = target
    for item in dropped:
        _remove(root / item.path)
        progress.warn(f"output {item.path} {item.reason}: not hashed, removed from outputs/")
    _set_aside_undeclared(root, specs, found, progress)
    files = hash_files(sorted(found.items()))
    read = {s.path: read_metric_file(root / s.path, s.path) for s in specs if s.metrics}
    return Outputs(files=tuple(files), metrics={p: m.values for p, m in read.items()},
                   steps={p: m.steps for p, m in read.items() if m.steps})


def _check_depth(root: Path) -> None:
    """TrainingFailed when a folder under /outputs is nested deeper than MAX_DEPTH (an iterative walk)."""
    stack = [(str(root), 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as entries:
                subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # unreadable: the walks below name it
        if subdirs and depth + 1 > MAX_DEPTH:
            shown = Path(subdirs[0]).relative_to(root).as_posix()
            raise TrainingFailed(f"outputs: {shown[:60]}… is nested more than {MAX_DEPTH} folders deep; nothing was "
                                 "hashed. Write a flatter tree under /outputs")
        stack.extend((d, depth + 1) for d in subdirs)


def _refusal(path: Path, root: Path) -> str | None:
    """Why an entry cannot be an output (None: a regular file or folder inside /outputs)."""
    if path.is_symlink():
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            return f"is a symlink pointing outside /outputs (to {resolved})"
        if not resolved.exists():
            return "is a dangling symlink"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return f"is a {_KINDS.get(stat.S_IFMT(mode), 'special file')}, not a regular file"


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device"}


def _walk(folder: Path, root: Path, prefix: str, dropped: list[Dropped], seen: set[Path]) -> dict[str, Path]:
    """rel → path of the regular files under a declared folder; what cannot be hashed goes to `dropped`."""
    real = folder.resolve()
    if real in seen:  # a link back up the tree: its files are hashed under their own path
        return {}
    seen = seen | {real}
    out: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            rel, path = f"{prefix}/{entry.name}", Path(entry.path)
            problem = _refusal(path, root)
            if problem is not None:
                dropped.append(Dropped(rel, problem))
            elif path.is_dir():
                out.update(_walk(path, root, rel, dropped, seen))
            else:
                out[rel] = path
    return out


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
    except FileNotFoundError:
        pass


def _set_aside_undeclared(root: Path, specs: tuple[OutputSpec, ...], found: dict[str, Path],
                          progress: ProgressSink) -> None:
    """Move what no declared output covers to ../undeclared/, so outputs/ holds only hashed files."""
    declared = {s.path for s in specs}
    hashed = {p.resolve() for p in found.values()}
    moved: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in [*dirnames, *filenames]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if any(rel == d or rel.startswith(d + "/") or d.startswith(rel + "/") for d in declared):
                continue  # declared (walked above), inside a declared folder, or holding a declared output
            path = Path(dirpath) / name
            # An undeclared file that a kept symlink points at stays: its bytes were hashed.
            if any(h == path or path in h.parents for h in hashed):
                continue
            problem = _refusal(path, root)
            if problem is not None:  # a FIFO, device or a link out of /outputs is removed, as for declared ones
                _remove(path)
                progress.warn(f"output {rel} {problem}: not hashed, removed from outputs/")
                continue
            if path.is_dir() and not path.is_symlink():
                _drop_specials(path, root, rel, progress)
            destination = root.parent / UNDECLARED / rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
            moved.append(rel)
        # Only folders that hold a declared output need a look inside; moved ones are gone.
        dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).is_dir()
                       and any(x.startswith(f"{rel_dir}/{d}/".removeprefix("./")) for x in declared)]
    if moved:
        shown = ", ".join(moved[:5]) + (f" (+{len(moved) - 5} more)" if len(moved) > 5 else "")
        progress.warn(f"the run wrote undeclared output(s) {shown}: not hashed, not attested; moved to "
             f"{UNDECLARED}/ beside outputs/ (declare them in `outputs` to attest them)")


def _drop_specials(folder: Path, root: Path, prefix: str, progress: ProgressSink) -> None:
    """Remove the FIFOs, devices and links out of /outputs inside an undeclared folder before it is set aside."""
    stack = [(folder, prefix)]
    while stack:
        current, rel_dir = stack.pop()
        with os.scandir(current) as entries:
            found = sorted(entries, key=lambda e: e.name)
        for entry in found:
            path, rel = Path(entry.path), f"{rel_dir}/{entry.name}"
            problem = _refusal(path, root)
            if problem is not None:
                _remove(path)
                progress.warn(f"output {rel} {problem}: not hashed, removed from outputs/")
            elif entry.is_dir(follow_symlinks=False):
                stack.append((path, rel))


@dataclass(frozen=True)
class MetricFile:
    """One metrics file read: final values, and the per-step series of keys that held lists."""

    values: dict[str, float]  # flattened key → number (for a list: its last value)
    steps: dict[str, list[list[float]]]  # flattened key → [[step, value], …], only keys that held lists


def read_metric_file(path: Path, name: str) -> MetricFile:
    """A metrics file: a JSON object of numbers; nested objects flatten to dotted keys, and a list of numbers
    (or of objects, each with an optional "step") is a per-step series whose last value is the metric."""
    if path.is_dir():
        raise TrainingFailed(f"metrics output {name!r} is a folder; metrics must be one JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainingFailed(f"metrics output {name!r} is not valid JSON ({exc}); write a JSON object of numbers") from None
    except RecursionError:
        raise TrainingFailed(f"metrics output {name!r} nests objects too deeply; write a flat JSON object of "
                             "numbers") from None
    if not isinstance(data, dict):
        raise TrainingFailed(f"metrics output {name!r} is not a JSON object; write {{\"name\": number, …}}")
    flat: dict[str, float] = {}
    steps: dict[str, list[list[float]]] = {}
    try:
        _flatten(data, "", flat, name, steps)
    except RecursionError:
        raise TrainingFailed(f"metrics output {name!r} nests objects too deeply; write a flat JSON object of "
                             "numbers") from None
    for key, series in steps.items():
        series.sort(key=lambda pair: pair[0])
        flat[key] = series[-1][1]
    return MetricFile(values=flat, steps=steps)


def _flatten(value: Any, prefix: str, out: dict[str, float], name: str,
             steps: dict[str, list[list[float]]] | None = None, step: float | None = None) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if step is not None and key == "step":
                continue
            _flatten(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}", out, name, steps, step)
        return
    if isinstance(value, list) and steps is not None and step is None and prefix:
        for index, item in enumerate(value):
            at = item.get("step", index) if isinstance(item, dict) else index
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
                raise TrainingFailed(f"metrics output {name!r}: {prefix}[{index}].step is not a number; "
                                     "give each entry's step as a number (or leave it out)")
            _flatten(item, prefix, out, name, steps, at)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrainingFailed(f"metrics output {name!r}: {prefix!r} is {json.dumps(value)[:40]}, not a finite number; "
                             "metrics files hold numbers, lists of numbers (per step) or lists of objects of numbers")
    number = float(value) if isinstance(value, float) else value
    if step is not None and steps is not None:
        steps.setdefault(prefix, []).append([step, number])
    else:
        out[prefix] = number
