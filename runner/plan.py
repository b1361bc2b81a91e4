"""Resolve a Manifest into a Plan: everything pinned, nothing executed."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import __version__
from runner.errors import ManifestError
from runner.hardware import HardwareClass
from runner.hardware import lookup as lookup_class
from runner.hashing import FileDigest, hash_tree, tree_digest
from runner.lockfiles import Lockfile, load_lockfile
from runner.manifest import DEFAULT_EXCLUDES, BootstrapSpec, CodeSpec, DataItem, Manifest, OutputSpec


@dataclass(frozen=True)
class ImageRef:
    """A parsed `REPO[:TAG]@sha256:…` reference; the digest wins over the tag."""

    registry: str
    repository: str
    tag: str | None
    digest: str  # "sha256:<64 hex>"

    @property
    def name(self) -> str:
        """registry/repository as Docker spells it (no default registry added)."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def pinned(self) -> str:
        """The reference Docker pulls and matches: name@sha256:…"""
        return f"{self.name}@{self.digest}"


@dataclass(frozen=True)
class CodeTree:
    """The code folder as content: digest over sorted relative paths and file digests."""

    root: Path
    digest: str  # "sha256:<hex>"
    files: tuple[FileDigest, ...]  # sorted by path; FileDigest(path, sha256, size, mode)
    git_commit: str | None
    git_dirty: bool | None


@dataclass(frozen=True)
class PlannedData:
    """A data item with where it will live: the container path under /data."""

    item: DataItem
    container_path: str  # "/data/<path>"
    source: dict[str, Any] | None = None  # a directory/dvc/lfs item: what its source pins (DataSource.describe)


@dataclass(frozen=True)
class Plan:
    """Everything resolved and pinned for one run; `digest` is the sha256 of `to_json()`."""

    manifest: Manifest
    base: ImageRef | BootstrapSpec  # a registry image pinned by digest, or one built from Debian packages
    lockfile: Lockfile | None
    data: tuple[PlannedData, ...]
    code: CodeTree
    hardware: HardwareClass
    seed: int
    apply_seeds: bool
    command: tuple[str, ...]
    env: dict[str, str]  # the run environment as given plus the seed variables
    timeout_s: int | None
    outputs: tuple[OutputSpec, ...]

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON-able data (stable, used for the digest and `xrun plan`); do not mutate."""
        return self._json

    @functools.cached_property
    def _json(self) -> dict[str, Any]:
        # Computed once: it reads the bootstrap sources file and is asked for by several stages.
        return plan_to_json(self)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 hex of the canonical JSON of the plan."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    @functools.cached_property
    def build_digest(self) -> str:
        """sha256 hex over only what goes into the image (base, lock, code): keys the image cache."""
        j = self.to_json()
        # The image also depends on xrun's own templates, hence the version.
        # Content only: the code tree's digest, not its git commit or folder name, so a checkout without
        # .git or a commit that touches no built file gives the same image (the commit is attested).
        keyed = {k: j[k] for k in ("image", "lockfile")} | {"code": j["code"]["digest"], "xrun": __version__}
        return hashlib.sha256(canonical_json(keyed)).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes digests are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- resolution ------------------------------------------------------------------------------------

SEED_ENV = ("XRUN_SEED", "PYTHONHASHSEED")
# cuBLAS needs a fixed workspace for deterministic GEMMs; harmless on CPU-only runs.
DETERMINISM_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
_REF = re.compile(r"^(?P<name>[^@\s]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$")


def parse_image_ref(reference: str) -> ImageRef:
    """Split NAME[:TAG]@sha256:… into registry, repository, tag and digest (the digest wins)."""
    match = _REF.match(reference)
    if not match:
        raise ManifestError(f"image.base: {reference!r} is not NAME[:TAG]@sha256:<64 hex>")
    name = match["name"]
    first, _, rest = name.partition("/")
    # Docker's rule: the first component is a registry when it has a '.' or ':' or is 'localhost'.
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "", name
    return ImageRef(registry=registry, repository=repository, tag=match["tag"], digest=match["digest"])


def resolve_code(spec: CodeSpec, manifest_file: Path | None = None) -> CodeTree:
    """Hash the code tree (excludes applied, mtimes ignored) and read its git commit if any."""
    exclude = DEFAULT_EXCLUDES + spec.exclude
    if manifest_file is not None and spec.path in manifest_file.resolve().parents:
        # The manifest is recorded on its own; inside the image it would make every seed change a rebuild.
        exclude += ("/" + manifest_file.resolve().relative_to(spec.path).as_posix(),)
    exclude = tuple(dict.fromkeys(exclude))
    files = hash_tree(spec.path, exclude)
    commit, dirty = git_state(spec.path)
    return CodeTree(root=spec.path, digest=tree_digest(files), files=tuple(files), git_commit=commit, git_dirty=dirty)


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, dirty) when folder is inside a git work tree, else (None, None)."""
    git = shutil.which("git")
    if not git:
        return None, None
    try:
        head = subprocess.run([git, "-C", str(folder), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, None
        status = subprocess.run([git, "-C", str(folder), "status", "--porcelain", "--", "."],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None


def repo_path(file: Path) -> str | None:
    """file's path relative to the top of its git work tree (posix), or None outside one."""
    git = shutil.which("git")
    if not git:
        return None
    try:
        top = subprocess.run([git, "-C", str(file.resolve().parent), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if top.returncode != 0 or not top.stdout.strip():
        return None
    try:
        return file.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    except ValueError:
        return None


def run_env(manifest: Manifest) -> dict[str, str]:
    """The container's environment: the manifest's env plus the seed and determinism variables."""
    env = dict(manifest.run.env)
    seed = str(manifest.seeds.global_seed)
    env.update({"XRUN_SEED": seed, "PYTHONHASHSEED": seed, "XRUN_APPLY_SEEDS": "1" if manifest.seeds.apply else "0"})
    env.update(DETERMINISM_ENV)
    return dict(sorted(env.items()))


def resolve_plan(manifest: Manifest) -> Plan:
    """Pin everything the manifest names (reads files, runs git); executes nothing."""
    lockfile = None
    if manifest.image.lockfile is not None:

        lockfile = load_lockfile(manifest.image.lockfile, manifest.image.lockfile_format)
    return Plan(
        manifest=manifest,
        base=manifest.image.base if isinstance(manifest.image.base, BootstrapSpec)
        else parse_image_ref(manifest.image.base),
        lockfile=lockfile,
        data=tuple(_planned_data(item, manifest.root) for item in manifest.data),
        code=resolve_code(manifest.code, manifest.file),
        hardware=lookup_class(manifest.hardware_class),
        seed=manifest.seeds.global_seed,
        apply_seeds=manifest.seeds.apply,
        command=manifest.run.command,
        env=run_env(manifest),
        timeout_s=manifest.run.timeout_s,
        outputs=manifest.outputs,
    )


def _planned_data(item: DataItem, root: Path) -> PlannedData:
    """A data item with its mount point; a source item also with what its source pins (reads .dvc files)."""
    if item.source is None:
        return PlannedData(item, f"/data/{item.path}")
    from runner.fetch.sources import source_for

    return PlannedData(item, f"/data/{item.path}", source_for(item, root).describe())


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """Plain data of a plan; relative paths only, so the digest does not depend on the machine."""
    m = plan.manifest
    image: dict[str, Any] = {"base": None, "bootstrap": None}
    if isinstance(plan.base, ImageRef):
        image["base"] = {"reference": plan.base.pinned, "registry": plan.base.registry,
                         "repository": plan.base.repository, "tag": plan.base.tag, "digest": plan.base.digest}
    else:
        b = plan.base
        sources = None
        if b.sources:
            sources = {"path": _rel(Path(b.sources), m.root),
                       "sha256": hashlib.sha256(Path(b.sources).read_bytes()).hexdigest()}
        image["bootstrap"] = {"suite": b.suite, "packages": list(b.packages), "variant": b.variant,
                              "architecture": b.architecture, "sources": sources, "imageId": b.image_id}
    lock = None
    if plan.lockfile:
        lock = {"path": _rel(plan.lockfile.path, m.root), "format": plan.lockfile.format,
                "sha256": plan.lockfile.sha256,
                "packages": [{"name": p.name, "version": p.version, "hashes": sorted(p.hashes)}
                             for p in plan.lockfile.packages]}
    return {
        "apiVersion": "xrun/plan/v1",
        "name": m.name,
        "image": image,
        "lockfile": lock,
        "code": {"digest": plan.code.digest, "files": len(plan.code.files), "path": _rel(plan.code.root, m.root),
                 "gitCommit": plan.code.git_commit, "gitDirty": plan.code.git_dirty},
        "data": [{"name": d.item.name, "uri": d.item.uri, "digests": dict(sorted(d.item.digests.items())),
                  "containerPath": d.container_path, "unpack": d.item.unpack,
                  **({"source": d.source} if d.source is not None else {})} for d in plan.data],
        "hardware": plan.hardware.to_json(),
        "seeds": {"global": plan.seed, "apply": plan.apply_seeds},
        "run": {"command": list(plan.command), "env": plan.env, "timeoutSeconds": plan.timeout_s,
                "workdir": m.run.workdir},
        "outputs": [{"path": o.path, "metrics": o.metrics, **({"tolerance": o.tolerance} if o.tolerance else {})}
                    for o in plan.outputs],
    }


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return path.as_posix()
