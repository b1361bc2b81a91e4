"""Hash the declared outputs of a run (by the runner, never by the training code) and read metrics."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import TrainingFailed, UsageError
from runner.hashing import FileDigest, hash_files, list_tree
from runner.manifest import OutputSpec


@dataclass(frozen=True)
class Outputs:
    """Every output file (declared files, and the files of declared folders) and the metrics read."""

    files: tuple[FileDigest, ...]  # paths relative to /outputs, sorted
    metrics: dict[str, dict[str, float]]  # metrics file path → flattened numbers

    def digests(self) -> dict[str, str]:
        """path → sha256 hex."""
        return {f.path: f.sha256 for f in self.files}


def collect_outputs(specs: tuple[OutputSpec, ...], outputs_dir: Path) -> Outputs:
    """Check every declared output exists, expand folders, hash files, parse metrics files."""
    root = outputs_dir.resolve()
    missing = [s.path for s in specs if not os.path.lexists(root / s.path)]
    if missing:
        raise TrainingFailed(f"the run did not produce the declared output(s) {', '.join(missing)} under /outputs; "
                             "make the training command write them or fix `outputs` in the manifest")
    found: dict[str, Path] = {}
    for spec in specs:
        target = root / spec.path
        _refuse_escape(target, root, spec.path)
        if target.is_dir():
            try:
                for rel, path in list_tree(target, follow_inside_links=True):
                    found[f"{spec.path}/{rel}"] = path
            except UsageError as exc:
                raise TrainingFailed(f"output {spec.path!r}: {exc.message}") from None
        elif target.is_file():
            found[spec.path] = target
        else:
            raise TrainingFailed(f"output {spec.path!r} is neither a file nor a folder; write a regular file")
    files = hash_files(sorted(found.items()))
    metrics = {s.path: read_metrics(root / s.path, s.path) for s in specs if s.metrics}
    return Outputs(files=tuple(files), metrics=metrics)


def _refuse_escape(target: Path, root: Path, name: str) -> None:
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise TrainingFailed(f"output {name!r} is a symlink pointing outside /outputs (to {resolved}); "
                             "outputs must be files written under /outputs")


def read_metrics(path: Path, name: str) -> dict[str, float]:
    """A metrics file: a JSON object of numbers (nested objects flatten to dotted keys)."""
    if path.is_dir():
        raise TrainingFailed(f"metrics output {name!r} is a folder; metrics must be one JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainingFailed(f"metrics output {name!r} is not valid JSON ({exc}); write a JSON object of numbers") from None
    if not isinstance(data, dict):
        raise TrainingFailed(f"metrics output {name!r} is not a JSON object; write {{\"name\": number, …}}")
    flat: dict[str, float] = {}
    _flatten(data, "", flat, name)
    return flat


def _flatten(value: Any, prefix: str, out: dict[str, float], name: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}", out, name)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrainingFailed(f"metrics output {name!r}: {prefix!r} is {json.dumps(value)[:40]}, not a finite number; "
                             "metrics files hold numbers only")
    out[prefix] = float(value) if isinstance(value, float) else value
