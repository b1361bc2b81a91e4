"""Resolve a Manifest into a Plan: everything pinned, nothing executed."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import __version__
from runner.codetree import CodeSummary, OwnPaths, SizedFile, collect
from runner.errors import ManifestError
from runner.hardware import HardwareClass
from runner.hardware import lookup as lookup_class
from runner.hashing import FileDigest, tree_digest
from runner.lockfiles import Lockfile, load_lockfile
from runner.manifest import BootstrapSpec, CodeSpec, DataItem, Manifest, OutputSpec


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
    source: str = "folder"  # code.from: "folder" | "git"
    left_out: tuple[str, ...] = ()  # xrun's own paths found inside the folder (never part of the digest or plan)

    def summary(self, biggest: int = 5) -> CodeSummary:
        """File count, total size, the `biggest` biggest files, and what of xrun's own was left out."""
        # Not a full sort: every run asks for the summary (for its size warning) of trees of any size.
        top = heapq.nsmallest(biggest, self.files, key=lambda f: (-f.size, f.path))
        return CodeSummary(files=len(self.files), size=sum(f.size for f in self.files),
                           biggest=tuple(SizedFile(f.path, f.size) for f in top), left_out=self.left_out)


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
        return build_digest_of(self.to_json())

    def with_seed(self, seed: int | None) -> "Plan":
        """The plan with seeds.global replaced: same build digest (no rebuild per seed), the seed's environment.

        The one way to make a sweep member's plan: `xrun run --seed` and `xrun submit --seeds` must agree,
        or every node refuses its job (the node re-plans and compares digests).
        """
        if seed is None:
            return self
        # Raw text and manifest digest unchanged: the override is recorded apart (externalParameters.seed).
        manifest = dataclasses.replace(self.manifest, seeds=dataclasses.replace(self.manifest.seeds, global_seed=seed))
        return dataclasses.replace(self, manifest=manifest, seed=seed, env=run_env(manifest))


def build_digest_of(plan_json: dict[str, Any]) -> str:
    """The build digest of a plan as plan.json holds it (what `Plan.build_digest` is; a submitter re-derives it)."""
    # The image also depends on xrun's own templates, hence the version.
    # Content only: the code tree's digest, not its git commit or folder name, so a checkout without
    # .git or a commit that touches no built file gives the same image (the commit is attested).
    keyed = {k: plan_json[k] for k in ("image", "lockfile")} | {"code": plan_json["code"]["digest"],
                                                                   "xrun": __version__}
    return hashlib.sha256(canonical_json(keyed)).hexdigest()


@dataclass(frozen=True)
class PlanRecord:
    """A run directory's plan.json read back: the fields xrun reads from it, and the object as written.

    The one reader of plan.json. A Plan cannot be rebuilt from it (it holds the code tree's digest,
    not its files), so this is the typed view of the file, as RunRecord is of run.json.
    """

    raw: dict[str, Any]  # the object as written: `runs show` prints it, `runs diff` compares it
    name: str | None = None
    seed: int | None = None
    git_commit: str | None = None
    data_digests: dict[str, str] = field(default_factory=dict)  # item name → "algo:hex", the strongest pinned
    outputs: tuple[OutputSpec, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PlanRecord":
        """Read a plan.json object; missing or mistyped fields read as unset."""
        code = _mapping(data.get("code"))
        seed = _mapping(data.get("seeds")).get("global", data.get("seed"))
        commit = code.get("gitCommit") or code.get("git_commit")  # plans before 0.2 spelled it snake_case
        digests = {}
        for item in (i for i in _list(data.get("data")) if isinstance(i, dict)):
            pinned = _mapping(item.get("digests"))
            algorithm = next((a for a in ("sha256", "sha512", "md5") if a in pinned), None)
            if algorithm is not None:
                digests[str(item.get("name"))] = f"{algorithm}:{pinned[algorithm]}"
        outputs = tuple(OutputSpec(str(o["path"]), bool(o.get("metrics", False)), dict(o.get("tolerance") or {}))
                        for o in _list(data.get("outputs")) if isinstance(o, dict) and "path" in o)
        return cls(raw=data, name=data.get("name") if isinstance(data.get("name"), str) else None,
                   seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                   git_commit=commit if isinstance(commit, str) else None, data_digests=digests, outputs=outputs)

    @classmethod
    def read(cls, path: Path) -> "PlanRecord":
        """The plan.json at path; OSError or ValueError (saying what is wrong) when it is not a JSON object."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_json(data)

    @classmethod
    def load(cls, path: Path) -> "PlanRecord | None":
        """The plan.json at path, or None when it is missing or not a JSON object."""
        try:
            return cls.read(path)
        except (OSError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        """The object as written."""
        return self.raw


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes digests are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- resolution ------------------------------------------------------------------------------------

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


def resolve_code(spec: CodeSpec, manifest_file: Path | None = None, own: OwnPaths | None = None) -> CodeTree:
    """Hash what of the code folder goes into the image (codetree.py decides; mtimes ignored), with its git commit."""
    own = own if own is not None else OwnPaths.default(manifest_file.parent if manifest_file else spec.path)
    chosen = collect(spec, own, manifest_file)
    return CodeTree(root=spec.path, digest=tree_digest(chosen.files), files=tuple(chosen.files),
                    git_commit=chosen.git_commit, git_dirty=chosen.git_dirty, source=spec.source,
                    left_out=chosen.left_out)


def run_env(manifest: Manifest) -> dict[str, str]:
    """The container's environment: the manifest's env plus the seed and determinism variables."""
    env = dict(manifest.run.env)
    seed = str(manifest.seeds.global_seed)
    env.update({"XRUN_SEED": seed, "PYTHONHASHSEED": seed, "XRUN_APPLY_SEEDS": "1" if manifest.seeds.apply else "0"})
    env.update(DETERMINISM_ENV)
    return dict(sorted(env.items()))


def resolve_plan(manifest: Manifest, own: OwnPaths | None = None, code: CodeTree | None = None) -> Plan:
    """Pin everything the manifest names (reads files, runs git); executes nothing.

    `own`: this invocation's cache, runs folder and signing key, kept out of the code tree (default:
    OwnPaths.default, what a command without --cache-dir/--runs-dir/--key uses). `code`: the code
    folder already hashed by this process's caller (a compute node's earlier member), used when its root matches.
    """
    lockfile = None
    if manifest.image.lockfile is not None:

        lockfile = load_lockfile(manifest.image.lockfile, manifest.image.lockfile_format)
    return Plan(
        manifest=manifest,
        base=manifest.image.base if isinstance(manifest.image.base, BootstrapSpec)
        else parse_image_ref(manifest.image.base),
        lockfile=lockfile,
        data=tuple(_planned_data(item, manifest.root) for item in manifest.data),
        code=code if code is not None and code.root == manifest.code.path else resolve_code(manifest.code,
                                                                                            manifest.file, own),
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
                 "gitCommit": plan.code.git_commit, "gitDirty": plan.code.git_dirty,
                 # Only when set, so the plans (and plan digests) of folder trees stay as they were.
                 **({"from": plan.code.source} if plan.code.source != "folder" else {})},
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
