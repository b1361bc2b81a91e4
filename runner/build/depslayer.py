"""The dependency layer, reused by content: built once per (base, wheel set, Python target), then held by the engine.

The layer under /opt/xrun (the seed hook and the venv of the locked wheels) depends on the base, the
wheels and the interpreter only, never on the code. After a build, a record in the cache
(`layers/<ab>/<key>.json`) keeps its diff ID and the images loaded with it. When only the code
changed, the engine still holds that layer by chain ID (base layers + this diff ID) through one of
those images, so the build writes and loads the code layer alone: `docker load` looks a layer up by
chain ID before it reads the file, and the archive leaves it out. The config, hence the image ID, is
the same as a build from scratch: it names the same diff IDs.
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

# Part of the key: a change to how the layer is laid out must not reuse a layer laid out the old way.
LAYOUT = 2
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
        return {"key": self.key, "diffId": self.diff_id, "size": self.size, "images": list(self.images)}


def deps_key(base_image_id: str, python: PythonTarget | None, wheels: list[ResolvedWheel], site: bytes) -> str:
    """The layer's inputs as one digest: the base, the interpreter's layout, the wheel set, the seed hook."""
    import installer

    target = None if python is None else {"executable": python.executable, "version": python.version,
                                           "paths": dict(python.paths)}
    inputs = {"layout": LAYOUT, "installer": installer.__version__, "base": base_image_id, "python": target,
              "wheels": sorted([w.name, w.version, w.sha256] for w in wheels),
              "site": hashlib.sha256(site).hexdigest()}
    return hashlib.sha256(canonical(inputs)).hexdigest()


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


def held_layer(client: Any, cache: Any, key: str, base_diff_ids: tuple[str, ...]) -> Layer | None:
    """The recorded layer when the engine holds it on this base (an image it was loaded with is still there)."""
    import docker.errors

    record = load_record(cache, key)
    if record is None:
        return None
    chain = list(base_diff_ids) + [record.diff_id]
    for image_id in record.images:
        try:
            layers = client.images.get(image_id).attrs.get("RootFS", {}).get("Layers") or []
        except docker.errors.NotFound:
            continue
        if layers[:len(chain)] == chain:
            return Layer(None, record.diff_id, record.size)
    return None


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
                f"{folder}: {human_bytes(free)} free, the dependency layer needs about {human_bytes(need)} there "
                f"(+ {human_bytes(reserve)} kept free, XRUN_BUILD_DISK_RESERVE); free some space (xrun cache gc, "
                "docker image prune) or point XRUN_CACHE_DIR at a larger disk")
