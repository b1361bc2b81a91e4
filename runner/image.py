"""The build stage: resolve the base, choose and fetch wheels, render the Dockerfile, build offline, cache.

An image is a pure function of the plan's build inputs (base, lockfile, code tree, xrun itself):
`Plan.build_digest` names it (`xrun/<name>:<first 12 hex>`), so an unchanged plan never builds twice.
The build runs with the network off from a deterministic context (sorted entries, fixed mtimes,
uid/gid 0); everything in it was fetched and verified on the host first. The tag is set only after
the build and its checks succeed, so a failure leaves nothing tagged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runner import __version__
from runner.bootstrap import SOURCE_DATE_EPOCH, DebPackage, ensure_bootstrap_image, installed_debs
from runner.errors import BuildError, EnvironmentProblem, FetchError, IntegrityError, ManifestError
from runner.plan import ImageRef, Plan
from runner.resources import resource_dir
from runner.wheels import VENV, PythonTarget, ResolvedWheel, choose_wheels, fetch_wheels, inspect_python, \
    layout_venv, target_from_facts

__all__ = ["BuiltImage", "DebPackage", "PythonTarget", "ResolvedBase", "ResolvedWheel", "build_image",
           "image_tag", "render_dockerfile", "resolve_base", "docker_build"]

TAG_REPO = "xrun"
LABEL_PREFIX = "org.xrun."
BUILD_LOG_TAIL = 30
CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the engine colours a step's stderr


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
    cached: bool  # True: no build happened (the tag already existed)

    def to_json(self) -> dict[str, Any]:
        """Plain data for `xrun build --json`."""
        return {"imageId": self.id, "tag": self.tag, "baseRef": self.base_ref, "baseImageId": self.base_image_id,
                "baseRepoDigest": self.base_repo_digest, "platform": self.platform,
                "python": self.python.to_json() if self.python else None,
                "wheels": [w.to_json() for w in self.wheels], "debs": [d.purl for d in self.debs],
                "cached": self.cached}


def image_tag(plan: Plan) -> str:
    """xrun/<name>:<first 12 hex of the build digest>."""
    return f"{TAG_REPO}/{plan.manifest.name}:{plan.build_digest[:12]}"


# --- the base --------------------------------------------------------------------------------------


def resolve_base(plan: Plan, client: Any, cache: Any = None, *, quiet: bool = False) -> ResolvedBase:
    """The plan's base in the engine: present by RepoDigest → used; else pulled by digest and checked."""
    if plan.bootstrap is not None:
        return _bootstrap_base(plan, client, cache, quiet)
    if plan.base is None:
        raise ManifestError("image: the plan has neither image.base nor image.bootstrap")
    ref = plan.base
    if not _DIGEST.match(ref.digest or ""):
        shown = ref.name + (f":{ref.tag}" if ref.tag else "")
        raise ManifestError(f"image.base: {shown!r} is not pinned by digest; pin it as {ref.name}@sha256:<digest> "
                            f"(find it with `docker buildx imagetools inspect {shown}` or `docker inspect --format "
                            f"'{{{{json .RepoDigests}}}}' {shown}`)")
    image = _local_by_digest(client, ref)
    if image is None:
        _pull(client, ref, quiet)
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


def _bootstrap_base(plan: Plan, client: Any, cache: Any, quiet: bool) -> ResolvedBase:
    cache = cache if cache is not None else _default_cache()
    boot = ensure_bootstrap_image(plan.bootstrap, client, cache, quiet=quiet)
    image = client.images.get(boot.image_id)
    return ResolvedBase(ref=boot.image_id, image_id=boot.image_id, repo_digest=None, platform=_platform(image.attrs),
                        layers=tuple(image.attrs.get("RootFS", {}).get("Layers") or ()),
                        debs=installed_debs(client, boot.image_id, cache))


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


def _pull(client: Any, ref: ImageRef, quiet: bool) -> None:
    import docker.errors

    if not quiet:
        print(f"xrun: pulling {ref.pinned}", file=sys.stderr)
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


# --- the Dockerfile and the context ----------------------------------------------------------------


def render_dockerfile(base_ref: str, *, with_venv: bool, labels: dict[str, str] | None = None) -> str:
    """The Dockerfile from templates/Dockerfile.in: FROM the pinned base, our files, the environment, labels."""
    env = ([f"PATH={VENV}/bin:$PATH"] if with_venv else []) + ["PYTHONPATH=/opt/xrun/site${PYTHONPATH:+:$PYTHONPATH}"]
    label_text = " \\\n      ".join(f"{k}={_quote(v)}" for k, v in sorted((labels or {}).items()))
    template = (resource_dir("templates") / "Dockerfile.in").read_text(encoding="utf-8")
    return _fill(template, {"base": base_ref, "env": " ".join(env), "labels": label_text or 'org.xrun.image="1"',
                            "xrun_version": __version__})


def _quote(value: str) -> str:
    """A double-quoted Dockerfile word: backslash, quote and $ escaped (LABEL expands variables)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _fill(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", sub, template)


@dataclass(frozen=True)
class _Entry:
    """One member of the build context."""

    name: str
    kind: str  # "dir" | "file" | "bytes" | "symlink"
    mode: int = 0o644
    path: Path | None = None
    data: bytes = b""
    target: str = ""
    sha256: str | None = None  # a file that must still have this content


class ContextBuilder:
    """Collects the build context and writes it as a deterministic tar (sorted, fixed mtimes, uid/gid 0)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A file with the given content."""
        self._parents(name)
        self._entries[name] = _Entry(name, "bytes", mode, data=data)

    def add_file(self, name: str, path: Path, mode: int, sha256: str | None = None) -> None:
        """A host file, checked against sha256 while it is written when given."""
        self._parents(name)
        self._entries[name] = _Entry(name, "file", mode, path=path, sha256=sha256)

    def add_dir(self, name: str) -> None:
        """A folder (0755)."""
        self._parents(name)
        self._entries.setdefault(name, _Entry(name, "dir", 0o755))

    def add_tree(self, prefix: str, root: Path) -> None:
        """Every file, folder and symlink under root, as prefix/…; modes normalised to 0644/0755."""
        self.add_dir(prefix)
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            rel = Path(folder).relative_to(root).as_posix()
            base = prefix if rel == "." else f"{prefix}/{rel}"
            for d in dirs:
                full = Path(folder) / d
                if full.is_symlink():
                    self._symlink(f"{base}/{d}", full)
                else:
                    self.add_dir(f"{base}/{d}")
            for f in sorted(files):
                full = Path(folder) / f
                if full.is_symlink():
                    self._symlink(f"{base}/{f}", full)
                else:
                    mode = 0o755 if os.stat(full).st_mode & 0o111 else 0o644
                    self.add_file(f"{base}/{f}", full, mode)

    def _symlink(self, name: str, path: Path) -> None:
        self._parents(name)
        self._entries[name] = _Entry(name, "symlink", 0o777, target=os.readlink(path))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self._entries.setdefault(parent, _Entry(parent, "dir", 0o755))

    def write(self, out: IO[bytes]) -> None:
        """The tar, entries sorted by path (a folder before what it holds)."""
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self._entries, key=lambda n: n.split("/")):
                _write_entry(tar, self._entries[name])


def _write_entry(tar: tarfile.TarFile, entry: _Entry) -> None:
    info = tarfile.TarInfo(entry.name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = SOURCE_DATE_EPOCH, 0, 0, "", ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
        tar.addfile(info)
    elif entry.kind == "bytes":
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))
    else:
        assert entry.path is not None
        with open(entry.path, "rb") as f:
            info.size = os.fstat(f.fileno()).st_size
            reader = _HashingReader(f)
            tar.addfile(info, reader)
        if entry.sha256 is not None and (reader.hexdigest() != entry.sha256 or reader.count != info.size):
            raise IntegrityError(f"{entry.path}: changed since the plan was made (sha256 {reader.hexdigest()[:12]}… "
                                 f"≠ planned {entry.sha256[:12]}…); run again once the code stops changing")


class _HashingReader(io.RawIOBase):
    """A file wrapper that hashes what tarfile reads from it (one read per code file)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self._f.read(size)
        self._h.update(data)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def build_context(plan: Plan, dockerfile: str, venv_root: Path | None) -> ContextBuilder:
    """Dockerfile, deps/ (sitecustomize, the venv when any) and code/ (exactly the plan's files), rooted at /.

    Both trees are copied onto / so every folder in a layer comes from the context with its fixed
    mtime; a COPY into a folder that does not exist yet would stamp it with the build's time.
    """
    ctx = ContextBuilder()
    ctx.add_bytes("Dockerfile", dockerfile.encode())
    ctx.add_file("deps/opt/xrun/site/sitecustomize.py", resource_dir("templates") / "sitecustomize.py", 0o644)
    if venv_root is not None:
        ctx.add_tree("deps" + VENV, venv_root)
    ctx.add_dir("code/workspace")
    for f in plan.code.files:
        ctx.add_file(f"code/workspace/{f.path}", plan.code.root / f.path, 0o755 if f.mode & 0o111 else 0o644,
                     f.sha256)
    return ctx


# --- building --------------------------------------------------------------------------------------


def docker_build(client: Any, context: IO[bytes], *, quiet: bool = False) -> str:
    """Build from a tar context with the network off; the image ID, or BuildError with the log tail."""
    import docker.errors

    tail: deque[str] = deque(maxlen=BUILD_LOG_TAIL)
    image_id = None
    error = None
    try:
        stream = client.api.build(fileobj=context, custom_context=True, encoding=None, rm=True, forcerm=True,
                                  pull=False, network_mode="none", decode=True)
        for event in stream:
            if "stream" in event:
                for line in _ANSI.sub("", event["stream"]).splitlines():
                    if line.strip():
                        tail.append(line)
                        if not quiet and line.startswith("Step "):
                            # LABEL steps carry the whole package list: show the start of each step only.
                            print(f"  {line[:117]}..." if len(line) > 120 else f"  {line}", file=sys.stderr)
                        found = re.match(r"^Successfully built ([0-9a-f]{12,64})$", line.strip())
                        if found and image_id is None:
                            image_id = found.group(1)
            if "aux" in event and isinstance(event["aux"], dict) and event["aux"].get("ID"):
                image_id = event["aux"]["ID"]
            if "error" in event:
                error = str(event["error"]).strip()
                tail.append(error)
    except docker.errors.APIError as exc:
        error = str(exc.explanation or exc)
        tail.append(error)
    if error is not None or image_id is None:
        reason = (error or "the engine reported no image").splitlines()[0]
        raise BuildError(f"the image build failed: {reason}; the build log tail is below (the build has no "
                         "network: everything must come from the lock or the code tree)", lines=list(tail))
    return client.images.get(image_id).id


def build_image(plan: Plan, cache: Any, client: Any, *, quiet: bool = False) -> BuiltImage:
    """The plan's image: the cached one when its tag exists with the same build digest, else built now."""
    tag = image_tag(plan)
    cached = cached_image(client, plan)
    if cached is not None:
        return cached
    with cache.lock("sha256", plan.build_digest, purpose="build"):
        cached = cached_image(client, plan)  # another xrun may have built it while we waited
        if cached is not None:
            return cached
        return _build(plan, cache, client, tag, quiet)


def cached_image(client: Any, plan: Plan) -> BuiltImage | None:
    """The image tagged for this plan when its labels say it was built from the same inputs."""
    import docker.errors

    try:
        image = client.images.get(image_tag(plan))
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    if labels.get(LABEL_PREFIX + "build-digest") != plan.build_digest:
        return None
    try:
        return _from_labels(image.id, image_tag(plan), labels)
    except (KeyError, ValueError, TypeError):
        return None  # labels from an older xrun: rebuild


def _build(plan: Plan, cache: Any, client: Any, tag: str, quiet: bool) -> BuiltImage:
    base = resolve_base(plan, client, cache, quiet=quiet)
    python = inspect_python(client, base.image_id, cache)
    wheels: list[tuple[ResolvedWheel, Path]] = []
    if plan.lockfile is not None and plan.lockfile.packages:
        if python is None:
            raise ManifestError(f"image.lockfile: the base image {base.ref} has no Python interpreter (python3 or "
                                "python) to install the locked wheels for; pick a base with Python")
        chosen = choose_wheels(plan.lockfile, python, cache)
        wheels = fetch_wheels(chosen, cache, base_dir=plan.lockfile.path.parent, quiet=quiet)
    labels = _labels(plan, base, python, [w for w, _ in wheels])
    if not quiet:
        print(f"xrun: building {tag} from {base.ref} ({len(wheels)} wheels, {len(plan.code.files)} code files, "
              "network off)", file=sys.stderr)
    work = cache.root / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xrun-build-", dir=work) as tmp:
        venv_root = None
        if wheels:
            assert python is not None
            stage = Path(tmp) / "stage"
            layout_venv(python, wheels, stage)
            venv_root = stage / VENV.lstrip("/")
        dockerfile = render_dockerfile(base.ref, with_venv=venv_root is not None, labels=labels)
        context = build_context(plan, dockerfile, venv_root)
        with tempfile.TemporaryFile(dir=tmp) as f:
            context.write(f)
            f.seek(0)
            image_id = docker_build(client, f, quiet=quiet)
    _check_built(client, image_id, base, labels)
    repo, _, version = tag.partition(":")
    client.api.tag(image_id, repo, version, force=True)
    # The same record whether built now or found cached: what the labels keep.
    recorded = target_from_facts(_portable(python.facts)) if python else None
    return BuiltImage(id=image_id, tag=tag, base_ref=base.ref, base_image_id=base.image_id,
                      base_repo_digest=base.repo_digest, platform=base.platform, python=recorded,
                      wheels=tuple(w for w, _ in wheels), debs=base.debs, cached=False)


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


# The labels are part of the image config, so of its ID: anything host-specific in them (the kernel
# the probe ran under) would give the same inputs a different image ID on another machine.
_HOST_SPECIFIC = ("platform_release", "platform_version")


def _portable(facts: Any) -> dict[str, Any]:
    out = dict(facts)
    out["environment"] = {k: v for k, v in dict(out.get("environment", {})).items() if k not in _HOST_SPECIFIC}
    return out


def _labels(plan: Plan, base: ResolvedBase, python: PythonTarget | None, wheels: list[ResolvedWheel]) -> dict[str, str]:
    compact = {"separators": (",", ":"), "sort_keys": True}
    return {
        LABEL_PREFIX + "build-digest": plan.build_digest,
        LABEL_PREFIX + "name": plan.manifest.name,
        LABEL_PREFIX + "version": __version__,
        LABEL_PREFIX + "base": base.ref,
        LABEL_PREFIX + "base-image-id": base.image_id,
        LABEL_PREFIX + "base-repo-digest": base.repo_digest or "",
        LABEL_PREFIX + "platform": base.platform,
        LABEL_PREFIX + "python": json.dumps(_portable(python.facts) if python else None, **compact),  # type: ignore[arg-type]
        LABEL_PREFIX + "wheels": json.dumps([w.to_json() for w in wheels], **compact),  # type: ignore[arg-type]
        LABEL_PREFIX + "debs": json.dumps([[d.name, d.version, d.arch] for d in base.debs], **compact),  # type: ignore[arg-type]
    }


def _from_labels(image_id: str, tag: str, labels: dict[str, str]) -> BuiltImage:
    facts = json.loads(labels[LABEL_PREFIX + "python"])
    return BuiltImage(
        id=image_id, tag=tag, base_ref=labels[LABEL_PREFIX + "base"],
        base_image_id=labels[LABEL_PREFIX + "base-image-id"],
        base_repo_digest=labels[LABEL_PREFIX + "base-repo-digest"] or None,
        platform=labels[LABEL_PREFIX + "platform"],
        python=target_from_facts(facts) if facts else None,
        wheels=tuple(ResolvedWheel(**w) for w in json.loads(labels[LABEL_PREFIX + "wheels"])),
        debs=tuple(DebPackage(*d) for d in json.loads(labels[LABEL_PREFIX + "debs"])),
        cached=True,
    )


def iter_build_images(client: Any, name: str) -> Iterator[Any]:
    """Every image tagged xrun/<name>:… (tests and `xrun cache` use it)."""
    yield from client.images.list(name=f"{TAG_REPO}/{name}")
