"""The dependency layers, reused by content: built once per (base, wheel set, Python target), then held by the engine.

Under /opt/xrun go one layer with the seed hook and the venv itself, then one layer per wheel, the
largest wheel first (so a bumped small package rewrites only the small layers above it; past the
engine's 127-layer limit the smallest wheels share the last layer). They depend on the base, the
wheels and the interpreter only, never on the code. Each layer has a chain key (its content and every
layer under it, as the engine's chain ID has); after a build, a record per key in the cache
(`layers/<ab>/<key>.json`) keeps its diff ID and the images loaded with it. When the engine still
holds a prefix of them by chain ID through one of those images, the build writes and loads only the
layers above it (a code edit: the code layer alone): `docker load` looks a layer up by chain ID before
it reads the file, and the archive leaves it out. The config, hence the image ID, is the same as a
build from scratch: it names the same diff IDs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.build.layers import Layer, canonical
from runner.build.wheels import PythonTarget, ResolvedWheel
from runner.errors import EnvironmentProblem
from runner.progress import human_bytes
from runner.rundir import write_json
from runner.wire import fields_to_wire

# Part of the key: a change to how the layers are laid out must not reuse a layer laid out the old way.
LAYOUT = 4
MAX_LAYERS = 127  # the engine's limit on an image's layers
HOLDERS_KEPT = 8
# Free space a build leaves on the disk it writes to (XRUN_BUILD_DISK_RESERVE, bytes).
DEFAULT_RESERVE = 1 << 30


@dataclass(frozen=True)
class DepsRecord:
    """A dependency layer built before: its diff ID, size and the images loaded with it."""

    key: str
    diff_id: str
    size: int
    images: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The record's wire form."""
        return fields_to_wire(self)


@dataclass(frozen=True)
class DepsGroup:
    """One dependency layer: the seed hook and the venv (no wheels), or one wheel (the last may hold several)."""

    key: str  # chain key: this layer's inputs and those of every layer under it
    wheels: tuple[tuple[ResolvedWheel, Path], ...]

    @property
    def note(self) -> str:
        """What the layer holds, for the image's history."""
        if not self.wheels:
            return "the seed hook and the venv"
        names = ", ".join(f"{w.name} {w.version}" for w, _ in self.wheels)
        return f"{names} (sha256 {self.wheels[0][0].sha256[:12]}…)" if len(self.wheels) == 1 else names


def plan_groups(base_image_id: str, base_layers: int, python: PythonTarget | None,
                wheels: list[tuple[ResolvedWheel, Path]], site: bytes) -> list[DepsGroup]:
    """The dependency layers of these inputs, bottom first, each with its chain key."""
    import installer

    target = None if python is None else {"executable": python.executable, "version": python.version,
                                           "paths": dict(python.paths)}
    inputs = {"layout": LAYOUT, "installer": installer.__version__, "base": base_image_id, "python": target,
              "venv": bool(wheels), "site": hashlib.sha256(site).hexdigest()}
    key = hashlib.sha256(canonical(inputs)).hexdigest()
    groups = [DepsGroup(key, ())]
    # The wheel's size is a property of its bytes (its sha256): the order is a function of the inputs.
    ordered = sorted(wheels, key=lambda item: (-item[1].stat().st_size, item[0].name, item[0].version,
                                               item[0].sha256))
    room = max(1, MAX_LAYERS - base_layers - 2)  # the skeleton and the code layer
    chunks = [[item] for item in ordered[:room - 1]] + ([ordered[room - 1:]] if ordered[room - 1:] else [])
    for chunk in chunks:
        key = hashlib.sha256(canonical([key, sorted([w.name, w.version, w.sha256] for w, _ in chunk)])).hexdigest()
        groups.append(DepsGroup(key, tuple(chunk)))
    return groups


def record_path(cache: Any, key: str) -> Path:
    """<cache>/layers/<ab>/<key>.json."""
    return cache.root / "layers" / key[:2] / f"{key}.json"


def load_record(cache: Any, key: str) -> DepsRecord | None:
    """The record of a layer built with these inputs, or None."""
    try:
        data = json.loads(record_path(cache, key).read_text(encoding="utf-8"))
        return DepsRecord(key, str(data["diffId"]), int(data["size"]), tuple(str(i) for i in data["images"]))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def save_record(cache: Any, key: str, layer: Layer, image_id: str) -> None:
    """Remember the layer and one more image that holds it (the newest first)."""
    old = load_record(cache, key)
    images = (image_id,) + tuple(i for i in (old.images if old else ()) if i != image_id)
    path = record_path(cache, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, DepsRecord(key, layer.diff_id, layer.size, images[:HOLDERS_KEPT]).to_json())


def list_records(cache: Any) -> list[DepsRecord]:
    """Every dependency layer built with this cache, largest first (`xrun cache ls`)."""
    root = cache.root / "layers"
    records = (load_record(cache, path.stem) for path in sorted(root.glob("*/*.json"))) if root.is_dir() else ()
    return sorted((r for r in records if r is not None), key=lambda r: (-r.size, r.key))


def held_prefix(client: Any, cache: Any, groups: list[DepsGroup], base_diff_ids: tuple[str, ...]) -> list[Layer]:
    """The longest run of these layers, from the bottom, that the engine holds on this base (through an image
    recorded with them); their diff IDs, with no file."""
    import docker.errors

    records: list[DepsRecord] = []
    for group in groups:
        record = load_record(cache, group.key)
        if record is None:
            break
        records.append(record)
    while records:
        chain = list(base_diff_ids) + [r.diff_id for r in records]
        for image_id in records[-1].images:
            try:
                layers = client.images.get(image_id).attrs.get("RootFS", {}).get("Layers") or []
            except docker.errors.NotFound:
                continue
            if layers[:len(chain)] == chain:
                return [Layer(None, r.diff_id, r.size) for r in records]
        records.pop()
    return []


def save_records(cache: Any, groups: list[DepsGroup], layers: tuple[Layer, ...], image_id: str) -> None:
    """Remember every dependency layer of a loaded image (layers: the image's own, bottom first)."""
    for group, layer in zip(groups, layers, strict=False):
        save_record(cache, group.key, layer, image_id)


def reserve_bytes() -> int:
    """XRUN_BUILD_DISK_RESERVE: free space a build must leave (default 1 GiB)."""
    try:
        return max(0, int(os.environ.get("XRUN_BUILD_DISK_RESERVE", DEFAULT_RESERVE)))
    except ValueError:
        return DEFAULT_RESERVE


def check_disk(work: Path, engine_root: str | None, layer_bytes: int) -> None:
    """Exit 4 before writing when the disks cannot take the layer: its tar in work, the engine's two copies.

    `docker load` unpacks the archive into its own temporary folder and then applies the layer, so the
    engine needs about twice the layer; our tar is removed as soon as it is sent, so on one disk the
    peak is about twice the layer too."""
    needs: dict[Path, int] = {work: layer_bytes}
    if engine_root and os.path.isdir(engine_root):
        root = Path(engine_root)
        if os.stat(root).st_dev == os.stat(work).st_dev:
            needs[work] = 2 * layer_bytes
        else:
            needs[root] = 2 * layer_bytes
    reserve = reserve_bytes()
    for folder, need in needs.items():
        free = shutil.disk_usage(folder).free
        if free < need + reserve:
            raise EnvironmentProblem(
                f"{folder}: {human_bytes(free)} free, the dependency layers need about {human_bytes(need)} there "
                f"(+ {human_bytes(reserve)} kept free, XRUN_BUILD_DISK_RESERVE); free some space (xrun cache gc, "
                "docker image prune) or point XRUN_CACHE_DIR at a larger disk")
