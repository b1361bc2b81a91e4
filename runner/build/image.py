"""The build stage: resolve the base, choose and fetch wheels, assemble the image ourselves, load it, cache.

An image is a pure function of the plan's build inputs (base, lockfile, code tree, xrun itself):
`Plan.build_digest` names it (`xrun/<name>:<first 12 hex>`), so an unchanged plan never builds twice.
There is no `docker build`: xrun writes each layer as a deterministic tar and the config with a fixed
time and only build inputs in its labels (runner/build/layers.py), and loads them with `docker load`.
The image ID, the sha256 of that config, is then the same for the same inputs on any machine, and
`xrun rebuild` can check it. The tag is set only once the load succeeded; an interrupted build
removes what it loaded.

The config holds content only: the base's image ID, every wheel's sha256, the code tree's digest
and xrun's version. Where things came from (a PyPI mirror, a registry host, the manifest's name)
stays out of it, so an auditor who fetches the same bytes elsewhere gets the same image ID. What
`xrun build` reports beyond that (wheel URLs, the base reference) is kept in a build record in the
xrun cache (`builds/`), keyed by the plan's build digest.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import __version__
from runner.build.bootstrap import DebPackage, bootstrap_tag, ensure_bootstrap_image, installed_debs
from runner.build.layers import ImageConfig, Layer, LayerBuilder, LayerWriter, history_entry, image_exists, \
    load_image, load_stream, remove_untagged, write_layer
from runner.build.wheels import VENV, PythonTarget, ResolvedWheel, check_overlaps, choose_wheels, fetch_wheels, \
    inspect_python, installed_size, target_from_facts, write_venv_skeleton, write_wheels
from runner.fetch.interface import FetchOptions
from runner.errors import EnvironmentProblem, FetchError, IntegrityError, Interrupted, ManifestError
from runner.interrupts import interrupts_raise
from runner.manifest import BootstrapSpec
from runner.plan import CodeTree, ImageRef, Plan
from runner.progress import ProgressSink, StderrProgress, human_bytes, measured
from runner.rundir import write_json
from runner.resources import resource_dir

if TYPE_CHECKING:
    from runner.build.depslayer import DepsGroup

__all__ = ["Assembly", "BuiltImage", "DebPackage", "PythonTarget", "ResolvedBase", "ResolvedWheel", "assemble",
           "assemble_image", "bootstrap_base", "build_image", "image_labels", "image_tag", "load_assembly",
           "resolve_base", "resolve_pinned_base"]

TAG_REPO = "xrun"
LABEL_PREFIX = "org.xrun."
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ResolvedBase:
    """The base image as found in the engine."""

    ref: str  # what FROM names: repo@sha256:… or the bootstrapped image's ID
    image_id: str
    repo_digest: str | None  # the matching RepoDigest (None for a bootstrapped base)
    platform: str  # "linux/amd64"
    layers: tuple[str, ...]  # RootFS diff IDs: the built image must start with these
    debs: tuple[DebPackage, ...] = ()  # bootstrap only


@dataclass(frozen=True)
class BuiltImage:
    """The image a run uses, and what went into it (for the attestation)."""

    id: str  # "sha256:…" image ID
    tag: str  # "xrun/<name>:<first 12 hex of plan.build_digest>"
    base_ref: str  # pinned reference used in FROM (repo@sha256:…) or the bootstrap image ID
    base_image_id: str
    base_repo_digest: str | None
    platform: str  # "linux/amd64"
    python: PythonTarget | None
    wheels: tuple[ResolvedWheel, ...]
    debs: tuple[DebPackage, ...]  # bootstrap only
    cached: bool  # True: no build happened (the build record and the image already existed)
    layers: tuple[str, ...] = ()  # RootFS diff IDs, the base's first
    manifest_digest: str | None = None  # the OCI manifest's digest once pushed (`--push`)
    pushed_to: str | None = None  # REGISTRY/REPO it was last pushed to

    def to_json(self) -> dict[str, Any]:
        """Plain data for `xrun build --json`."""
        return {"imageId": self.id, "tag": self.tag, "baseRef": self.base_ref, "baseImageId": self.base_image_id,
                "baseRepoDigest": self.base_repo_digest, "platform": self.platform,
                "python": self.python.to_json() if self.python else None,
                "wheels": [w.to_json() for w in self.wheels], "debs": [d.purl for d in self.debs],
                "cached": self.cached, "layers": list(self.layers), "manifestDigest": self.manifest_digest,
                "repository": self.pushed_to}

    def to_record(self) -> dict[str, Any]:
        """What the build record in the cache keeps (the interpreter's probe facts included)."""
        return {"imageId": self.id, "tag": self.tag, "baseRef": self.base_ref, "baseImageId": self.base_image_id,
                "baseRepoDigest": self.base_repo_digest, "platform": self.platform,
                "python": dict(self.python.facts) if self.python else None,
                "wheels": [w.to_json() for w in self.wheels], "debs": [d.to_json() for d in self.debs],
                "layers": list(self.layers), "manifestDigest": self.manifest_digest, "repository": self.pushed_to}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "BuiltImage":
        """Read a build record back (KeyError/TypeError/ValueError when it is not one)."""
        return cls(id=data["imageId"], tag=data["tag"], base_ref=data["baseRef"], base_image_id=data["baseImageId"],
                   base_repo_digest=data["baseRepoDigest"], platform=data["platform"],
                   python=target_from_facts(data["python"]) if data["python"] else None,
                   wheels=tuple(ResolvedWheel(**w) for w in data["wheels"]),
                   debs=tuple(DebPackage(**d) for d in data["debs"]), cached=True,
                   layers=tuple(data["layers"]), manifest_digest=data.get("manifestDigest"),
                   pushed_to=data.get("repository"))


def image_tag(plan: Plan) -> str:
    """xrun/<name>:<first 12 hex of the build digest>."""
    return f"{TAG_REPO}/{plan.manifest.name}:{plan.build_digest[:12]}"


# --- the base --------------------------------------------------------------------------------------


def resolve_base(plan: Plan, client: Any, cache: Any = None, *, quiet: bool = False,
                 progress: ProgressSink | None = None) -> ResolvedBase:
    """The plan's base in the engine: present by RepoDigest → used; else pulled by digest and checked."""
    progress = progress or StderrProgress(quiet)
    if isinstance(plan.base, BootstrapSpec):
        return bootstrap_base(plan.base, client, cache, progress=progress)
    return resolve_pinned_base(plan.base, client, progress=progress)


def resolve_pinned_base(ref: ImageRef, client: Any, *, quiet: bool = False,
                        progress: ProgressSink | None = None) -> ResolvedBase:
    """A base pinned by digest: present in the engine by RepoDigest → used; else pulled by digest and checked."""
    if not _DIGEST.match(ref.digest or ""):
        shown = ref.name + (f":{ref.tag}" if ref.tag else "")
        raise ManifestError(f"image.base: {shown!r} is not pinned by digest; pin it as {ref.name}@sha256:<digest> "
                            f"(find it with `docker buildx imagetools inspect {shown}` or `docker inspect --format "
                            f"'{{{{json .RepoDigests}}}}' {shown}`)")
    image = _local_by_digest(client, ref)
    if image is None:
        _pull(client, ref, progress or StderrProgress(quiet))
        image = _local_by_digest(client, ref)
        if image is None:
            raise IntegrityError(f"image.base: pulled {ref.pinned}, but the engine holds no image with that "
                                 "RepoDigest afterwards; the registry served something else: check the registry")
    matched = _matching_repo_digest(image.attrs.get("RepoDigests") or [], ref)
    if matched is None:
        raise IntegrityError(f"image.base: the local image {image.id} has RepoDigests "
                             f"{image.attrs.get('RepoDigests')}, none of them {ref.pinned}; remove it "
                             f"(docker rmi {image.id}) and run again to pull by digest")
    return ResolvedBase(ref=ref.pinned, image_id=image.id, repo_digest=matched, platform=_platform(image.attrs),
                        layers=tuple(image.attrs.get("RootFS", {}).get("Layers") or ()))


def bootstrap_base(spec: BootstrapSpec, client: Any, cache: Any, *, quiet: bool = False,
                   progress: ProgressSink | None = None) -> ResolvedBase:
    """A base bootstrapped from Debian packages: the engine's (pinned ID or cached tag), else built now."""
    cache = cache if cache is not None else _default_cache()
    progress = progress or StderrProgress(quiet)
    boot = ensure_bootstrap_image(spec, client, cache, progress=progress)
    image = client.images.get(boot.image_id)
    debs = installed_debs(client, boot.image_id, cache)
    if any(d.sha256 is None for d in debs):
        # The engine had the image from another cache: apt's record of the .debs was kept there, not here.
        progress.warn(f"the Debian packages of the base {boot.image_id[:19]}… are recorded without their .deb "
                      f"sha256 (this cache did not bootstrap it); to record them: docker rmi {bootstrap_tag(spec)}, "
                      "then run again")
    return ResolvedBase(ref=boot.image_id, image_id=boot.image_id, repo_digest=None, platform=_platform(image.attrs),
                        layers=tuple(image.attrs.get("RootFS", {}).get("Layers") or ()), debs=debs)


def _default_cache() -> Any:
    from runner.fetch import Cache

    return Cache.default()


def _local_by_digest(client: Any, ref: ImageRef) -> Any:
    import docker.errors

    try:
        return client.images.get(ref.pinned)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"the Docker engine could not look up {ref.pinned}: "
                                 f"{exc.explanation or exc}") from None


def _pull(client: Any, ref: ImageRef, progress: ProgressSink) -> None:
    import docker.errors

    progress.info(f"pulling {ref.pinned}")
    try:
        for event in client.api.pull(ref.name, tag=ref.digest, stream=True, decode=True):
            if "error" in event:
                raise FetchError(f"image.base: pulling {ref.pinned} failed: {event['error']}; check the reference "
                                 "and that the registry is reachable (docker login for a private one)")
    except docker.errors.APIError as exc:
        raise FetchError(f"image.base: pulling {ref.pinned} failed: {exc.explanation or exc}; check the reference "
                         "and that the registry is reachable (docker login for a private one)") from None


def _normal_repo(name: str) -> str:
    """Docker Hub's implicit registry and library/ prefix removed, so references compare equal."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name[len("library/"):] if name.startswith("library/") and name.count("/") == 1 else name


def _matching_repo_digest(repo_digests: Iterable[str], ref: ImageRef) -> str | None:
    want = (_normal_repo(ref.name), ref.digest)
    for item in repo_digests:
        name, _, digest = item.partition("@")
        if (_normal_repo(name), digest) == want:
            return item
    return None


def _platform(attrs: dict[str, Any]) -> str:
    plat = f"{attrs.get('Os', 'linux')}/{attrs.get('Architecture', 'amd64')}"
    return plat + (f"/{attrs['Variant']}" if attrs.get("Variant") else "")


# --- the layers and the config --------------------------------------------------------------------

# What the image sets on top of the base, as the Dockerfile used to: PATH and PYTHONPATH, the workdir.
WORKDIR = "/workspace"
SITE = "/opt/xrun/site"
# Fields of the base's config the built image inherits (the rest of `docker inspect`'s Config is
# per-container state with zero values).
INHERITED = ("Env", "Cmd", "Entrypoint", "User", "WorkingDir", "ExposedPorts", "Volumes", "StopSignal", "Labels",
             "Shell", "Healthcheck", "OnBuild")


@dataclass(frozen=True)
class BaseConfig:
    """The base image's config as the built image inherits it."""

    architecture: str
    os: str
    variant: str | None
    diff_ids: tuple[str, ...]
    container: dict[str, Any]


def base_config(client: Any, image_id: str) -> BaseConfig:
    """The inherited part of the base's config, read from the engine (`docker image inspect`)."""
    attrs = client.images.get(image_id).attrs
    container = {k: v for k, v in (attrs.get("Config") or {}).items() if k in INHERITED and v not in (None, "", [], {})}
    return BaseConfig(architecture=attrs.get("Architecture", "amd64"), os=attrs.get("Os", "linux"),
                      variant=attrs.get("Variant") or None,
                      diff_ids=tuple(attrs.get("RootFS", {}).get("Layers") or ()), container=container)


def set_env(env: list[str], key: str, value: str) -> list[str]:
    """Docker's ENV: replace the variable in place, else append it."""
    out = [item for item in env]
    for i, item in enumerate(out):
        if item.split("=", 1)[0] == key:
            out[i] = f"{key}={value}"
            return out
    return out + [f"{key}={value}"]


def image_environment(env: list[str], *, with_venv: bool) -> list[str]:
    """The base's environment with the venv first on PATH and the seed hook's folder on PYTHONPATH."""
    current = dict(item.partition("=")[::2] for item in env)
    if with_venv:
        env = set_env(env, "PATH", f"{VENV}/bin:{current.get('PATH', '')}".rstrip(":"))
    return set_env(env, "PYTHONPATH", SITE + (f":{current['PYTHONPATH']}" if current.get("PYTHONPATH") else ""))


def write_deps_layers(python: PythonTarget | None, groups: Sequence[DepsGroup], held: Sequence[Layer], work: Path,
                      progress: ProgressSink | None = None) -> list[Layer]:
    """The dependency layers above the held ones, each written to work/deps-N.tar with the wheels installed
    straight into it (no folder on the host): layer 0 is /opt/xrun/site (sitecustomize: seeds at
    interpreter start) and the venv itself, each later one a wheel (or a few)."""
    out = list(held)
    todo = list(groups[len(held):])
    if not todo:
        return out
    total = sum(installed_size(g.wheels) for g in todo) or None
    what = f"{len(todo)} of {len(groups)} dependency layer{'s' if len(groups) > 1 else ''}"
    with measured(progress or StderrProgress(True), f"writing {what}", f"wrote {what}", total) as meter:
        for index, group in enumerate(todo, start=len(held)):
            path = work / f"deps-{index}.tar"
            with open(path, "wb") as f:
                layer = LayerWriter(f, meter.advance)
                if index == 0:
                    layer.add_bytes(SITE.lstrip("/") + "/sitecustomize.py", sitecustomize())
                    if len(groups) > 1:
                        assert python is not None
                        write_venv_skeleton(python, layer)
                if group.wheels:
                    assert python is not None
                    write_wheels(python, group.wheels, layer)
                out.append(layer.close(path))
    return out


def sitecustomize() -> bytes:
    """The seed hook every image carries."""
    return (resource_dir("templates") / "sitecustomize.py").read_bytes()


def code_layer(code: CodeTree, root: Path | None = None) -> LayerBuilder:
    """/workspace: exactly the planned files, owned by root, readable by any uid, checked against the plan."""
    root = root if root is not None else code.root
    layer = LayerBuilder()
    layer.add_dir(WORKDIR.lstrip("/"))
    for f in code.files:
        layer.add_file(f"{WORKDIR.lstrip('/')}/{f.path}", root / f.path, f.mode, f.sha256)
    return layer


def final_config(base: BaseConfig, base_image_id: str, layers: list[Layer], labels: dict[str, str], *,
                 with_venv: bool, code_digest: str, wheel_notes: Sequence[str] = ()) -> ImageConfig:
    """The built image's config: the base's, our layers (the seed hook and venv, one per wheel note, the code),
    environment, workdir and labels; a fixed time."""
    container = dict(base.container)
    container["Env"] = image_environment(list(container.get("Env") or []), with_venv=with_venv)
    container["WorkingDir"] = WORKDIR
    container["Labels"] = {**(container.get("Labels") or {}), **labels}
    # The base by its image ID, never by the reference it was pulled under: another registry's name for
    # the same base must give the same image.
    history = [history_entry(f"xrun: layer {i + 1} of the base {base_image_id}") for i in range(len(base.diff_ids))]
    history += [history_entry(f"xrun {__version__}: {SITE}" + (f" and {VENV}" if with_venv else ""))]
    history += [history_entry(f"xrun {__version__}: {note} into {VENV}") for note in wheel_notes]
    history += [history_entry(f"xrun {__version__}: {WORKDIR} (code tree {code_digest})"),
                history_entry("xrun: ENV PATH PYTHONPATH, WORKDIR /workspace, LABEL org.xrun.*", empty=True)]
    return ImageConfig(architecture=base.architecture, os=base.os, variant=base.variant,
                       diff_ids=base.diff_ids + tuple(layer.diff_id for layer in layers), history=tuple(history),
                       container=container)


@dataclass(frozen=True)
class Assembly:
    """A built image before loading: its config and the layers on top of the base."""

    config: ImageConfig
    base_diff_ids: tuple[str, ...]
    layers: tuple[Layer, ...]  # the dependency layers (path None: the engine holds it), the code last

    @property
    def image_id(self) -> str:
        """The ID the engine will give it."""
        return self.config.image_id


def assemble(code: CodeTree, base: BaseConfig, base_image_id: str, python: PythonTarget | None,
             wheels: list[tuple[ResolvedWheel, Path]], labels: dict[str, str], work: Path,
             code_root: Path | None = None, *, held: Sequence[Layer] = (),
             progress: ProgressSink | None = None, groups: Sequence[DepsGroup] | None = None) -> Assembly:
    """Write the dependency layers above the held ones (the engine holds those) and the code layer under work,
    compose the config: no engine needed. `groups`: the caller's plan_groups of these very inputs, if it has them."""
    if groups is None:
        from runner.build.depslayer import plan_groups

        groups = plan_groups(base_image_id, len(base.diff_ids), python, wheels, sitecustomize())
    check_overlaps(wheels)
    deps = write_deps_layers(python, groups, held, work, progress)
    code_tar = write_layer(code_layer(code, code_root), work / "code.tar")
    config = final_config(base, base_image_id, [*deps, code_tar], labels, with_venv=bool(wheels),
                          code_digest=code.digest, wheel_notes=[g.note for g in groups[1:]])
    return Assembly(config, base.diff_ids, (*deps, code_tar))


def assemble_image(code: CodeTree, client: Any, base: ResolvedBase, python: PythonTarget | None,
                   wheels: list[tuple[ResolvedWheel, Path]], work: Path, code_root: Path | None = None, *,
                   held: Sequence[Layer] = (), progress: ProgressSink | None = None,
                   groups: Sequence[DepsGroup] | None = None) -> Assembly:
    """The image of a code tree and wheels on a resolved base, written under work (build and rebuild share it)."""
    labels = image_labels(code.digest, base.image_id, [w for w, _ in wheels])
    return assemble(code, base_config(client, base.image_id), base.image_id, python, wheels, labels, work,
                    code_root, held=held, progress=progress, groups=groups)


def load_assembly(client: Any, assembly: Assembly, work: Path, tag: str | None = None,
                  progress: ProgressSink | None = None) -> str:
    """`docker load` the assembly (the layers the engine holds are left out) and tag it; the image ID.

    The archive is streamed to the engine from the layer tars, not written; each tar is removed once
    sent (the engine unpacks its own copy first). Ctrl-C or SIGTERM at any point removes an image this
    call loaded and left untagged, so an interrupted build leaves neither a dangling image nor temp
    files (the caller's folder goes too)."""
    image_id = assembly.image_id
    existed = image_exists(client, image_id)
    try:
        with interrupts_raise():  # a no-op inside a command: cli.main installed it already
            if not existed:
                layers: list[tuple[str, Path | None]] = [(d, None) for d in assembly.base_diff_ids]
                layers += [(layer.diff_id, layer.path) for layer in assembly.layers]
                sent = frozenset(p for _, p in layers if p is not None)
                total = sum(layer.size for layer in assembly.layers if layer.path is not None)
                with measured(progress or StderrProgress(True), "loading the image", "loaded the image",
                              total) as meter:
                    stream = load_stream(assembly.config.to_bytes(), layers, on_bytes=meter.advance, unlink=sent)
                    load_image(client, stream, image_id, f"the image {image_id} (from {work})")
            if tag is not None:
                repo, _, version = tag.rpartition(":")
                client.api.tag(image_id, repo, version, force=True)
    except BaseException:
        if not existed:
            remove_untagged(client, image_id)
        raise
    return image_id


# --- building --------------------------------------------------------------------------------------


def build_image(plan: Plan, cache: Any, client: Any, *, quiet: bool = False, fetch: FetchOptions | None = None,
                progress: ProgressSink | None = None) -> BuiltImage:
    """The plan's image: the cached one when its tag exists with the same build digest, else built now."""
    tag = image_tag(plan)
    cached = cached_image(client, plan, cache)
    if cached is not None:
        return cached
    with cache.lock("sha256", plan.build_digest, purpose="build"):
        cached = cached_image(client, plan, cache)  # another xrun may have built it while we waited
        if cached is not None:
            return cached
        built = _build(plan, cache, client, tag, fetch or FetchOptions(quiet=quiet), progress or StderrProgress(quiet))
        save_build_record(cache, plan.build_digest, built)
        return built


def build_record_path(cache: Any, build_digest: str) -> Path:
    """<cache>/builds/<ab>/<build digest>.json: what a build of these inputs made."""
    return cache.root / "builds" / build_digest[:2] / f"{build_digest}.json"


def save_build_record(cache: Any, build_digest: str, image: BuiltImage) -> None:
    """Write the build record atomically (a reader never sees half of one)."""
    path = build_record_path(cache, build_digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, image.to_record())


def load_build_record(cache: Any, build_digest: str) -> BuiltImage | None:
    """The recorded build of these inputs, or None (none, unreadable, or from an older xrun)."""
    try:
        return BuiltImage.from_record(json.loads(build_record_path(cache, build_digest).read_text(encoding="utf-8")))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def cached_image(client: Any, plan: Plan, cache: Any) -> BuiltImage | None:
    """The recorded build of this plan when the engine still holds that image with the labels it implies."""
    import docker.errors

    record = load_build_record(cache, plan.build_digest)
    if record is None:
        return None
    try:
        image = client.images.get(record.id)
    except docker.errors.ImageNotFound:
        return None
    expected = image_labels(plan.code.digest, record.base_image_id, list(record.wheels))
    if any((image.labels or {}).get(k) != v for k, v in expected.items()):
        return None  # not what the record says: build again
    if record.tag not in image.tags:
        repo, _, version = record.tag.rpartition(":")
        client.api.tag(record.id, repo, version, force=True)
    return record


def _build(plan: Plan, cache: Any, client: Any, tag: str, fetch: FetchOptions, progress: ProgressSink) -> BuiltImage:
    # Only a build needs these: a warm run of an unchanged plan stops at cached_image.
    from runner.build.depslayer import check_disk, held_prefix, plan_groups, save_records

    base = resolve_base(plan, client, cache, progress=progress)
    python = inspect_python(client, base.image_id, cache)
    wheels: list[tuple[ResolvedWheel, Path]] = []
    if plan.lockfile is not None and plan.lockfile.packages:
        if python is None:
            raise ManifestError(f"image.lockfile: the base image {base.ref} has no Python interpreter (python3 or "
                                "python) to install the locked wheels for; pick a base with Python")
        chosen = choose_wheels(plan.lockfile, python, cache)
        wheels = fetch_wheels(chosen, cache, base_dir=plan.lockfile.path.parent, options=fetch)
    labels = image_labels(plan.code.digest, base.image_id, [w for w, _ in wheels])
    groups = plan_groups(base.image_id, len(base.layers), python, wheels, sitecustomize())
    cache.remove_stale_work_dirs()  # a build killed with SIGKILL could not remove its own
    work = cache.root / "tmp"  # check_disk's folder: cache.work_dir below creates it
    # --verify-data: every input checked again, the dependency layers laid out again too.
    held = [] if fetch.verify else held_prefix(client, cache, groups, base.layers)
    try:
        # SIGTERM too must unwind through the temp folder's and the loaded image's clean-up.
        with interrupts_raise():
            tmp = cache.work_dir("build")
            try:
                progress.info(f"assembling {tag} on {base.ref} ({len(wheels)} wheels, {len(plan.code.files)} code "
                              "files)")
                assembly = None
                engine_root = functools.cache(functools.partial(_engine_root, client))  # `docker info`: once, if at all
                above = [item for group in groups[len(held):] for item in group.wheels]
                if above:
                    check_disk(work, engine_root(), installed_size(above))
                if held:
                    size = human_bytes(sum(layer.size for layer in held))
                    progress.info(f"{len(held)} of {len(groups)} dependency layers ({size}) are in the engine "
                                  "already: " + ("writing and loading the code layer only" if len(held) == len(groups)
                                                 else "writing and loading the ones above them and the code layer"))
                    try:
                        assembly = assemble_image(plan.code, client, base, python, wheels, tmp, held=held,
                                                  progress=progress, groups=groups)
                        image_id = load_assembly(client, assembly, tmp, tag, progress)
                    except EnvironmentProblem:
                        assembly = None  # its images went between the check and the load: write them after all
                if assembly is None:
                    if held and wheels:
                        check_disk(work, engine_root(), installed_size(wheels))
                    assembly = assemble_image(plan.code, client, base, python, wheels, tmp, progress=progress,
                                              groups=groups)
                    image_id = load_assembly(client, assembly, tmp, tag, progress)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: the image build was stopped; nothing was loaded or left behind") from None
    save_records(cache, groups, assembly.layers[:-1], image_id)
    _check_built(client, image_id, base, labels)
    # The same record whether built now or found cached: what the labels keep.
    recorded = target_from_facts(_portable(python.facts)) if python else None
    return BuiltImage(id=image_id, tag=tag, base_ref=base.ref, base_image_id=base.image_id,
                      base_repo_digest=base.repo_digest, platform=base.platform, python=recorded,
                      wheels=tuple(w for w, _ in wheels), debs=base.debs, cached=False,
                      layers=assembly.config.diff_ids)


def _engine_root(client: Any) -> str | None:
    """Where the engine keeps its layers (DockerRootDir), when it says."""
    try:
        return str(client.info().get("DockerRootDir") or "") or None
    except Exception:  # noqa: BLE001 - an engine that does not say: only our side is checked
        return None


def _check_built(client: Any, image_id: str, base: ResolvedBase, labels: dict[str, str]) -> None:
    """The built image sits on the resolved base and carries our labels; else remove it untagged."""
    image = client.images.get(image_id)
    layers = tuple(image.attrs.get("RootFS", {}).get("Layers") or ())
    problem = None
    if layers[:len(base.layers)] != base.layers:
        problem = f"its layers do not start with the base's ({base.image_id})"
    elif any((image.labels or {}).get(k) != v for k, v in labels.items()):
        problem = "its labels differ from the ones asked for"
    if problem:
        try:
            client.images.remove(image_id, force=True, noprune=False)
        except Exception:  # noqa: BLE001 - best effort: it is untagged anyway
            pass
        raise IntegrityError(f"the built image {image_id} is not what was asked for: {problem}; run again")


# The interpreter's probe facts as recorded: the kernel the probe ran under is not a fact of the image.
_HOST_SPECIFIC = ("platform_release", "platform_version")


def _portable(facts: Any) -> dict[str, Any]:
    out = dict(facts)
    out["environment"] = {k: v for k, v in dict(out.get("environment", {})).items() if k not in _HOST_SPECIFIC}
    return out


def image_labels(code_digest: str, base_image_id: str, wheels: list[ResolvedWheel]) -> dict[str, str]:
    """The image's labels: content digests only (part of the config, so of the image ID).

    No URL, registry host, reference or manifest name: the same bytes fetched from another mirror or
    registry, or an experiment renamed, must give the same image ID."""
    compact = {"separators": (",", ":"), "sort_keys": True}
    return {
        LABEL_PREFIX + "version": __version__,
        LABEL_PREFIX + "base-image-id": base_image_id,
        LABEL_PREFIX + "code-digest": code_digest,
        LABEL_PREFIX + "wheels": json.dumps(sorted([w.name, w.version, w.sha256] for w in wheels),
                                            **compact),  # type: ignore[arg-type]
    }
