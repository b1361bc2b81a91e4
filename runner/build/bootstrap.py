"""`image.bootstrap`: a base image built from Debian packages with mmdebstrap, bit for bit reproducible.

mmdebstrap with SOURCE_DATE_EPOCH fixed writes the same root filesystem tarball for the same package
set. We wrap it, uncompressed, as the single layer of a `docker load` archive whose config holds
nothing that varies (fixed `created`, no host names), so the image ID, the sha256 of that config,
is a function of the packages alone. `docker import` would stamp the current time instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.build.layers import (SOURCE_DATE_EPOCH, ImageConfig, history_entry, image_exists, layer_from_file,
                                 load_archive, write_load_archive)
from runner.engine.client import cached_probe, run_offline
from runner.errors import BuildError, EnvironmentProblem, IntegrityError, ManifestError
from runner.manifest import BootstrapSpec
from runner.progress import ProgressSink, StderrProgress
from runner.rundir import write_json
from runner.wire import fields_to_wire

RECIPE_VERSION = 1  # bump when the mmdebstrap options or the archive layout change
HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
IMAGE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAG_REPO = "xrun-bootstrap"
LOG_TAIL = 25
# A bootstrap takes about a minute; a mirror that stops answering must not hang the build for ever.
MMDEBSTRAP_TIMEOUT_S = 30 * 60
STOP_GRACE_S = 10  # mmdebstrap removes its temporary root on SIGTERM; SIGKILL after this
CHUNK = 1 << 20
# Debian architecture → (OCI architecture, variant).
ARCHES = {"amd64": ("amd64", None), "arm64": ("arm64", "v8"), "armhf": ("arm", "v7"), "armel": ("arm", "v5"),
          "i386": ("386", None), "ppc64el": ("ppc64le", None), "s390x": ("s390x", None),
          "riscv64": ("riscv64", None), "mips64el": ("mips64le", None)}
_MACHINE_TO_DEB = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armhf",
                   "i686": "i386", "i386": "i386", "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class DebPackage:
    """One installed Debian package, as dpkg-query reports it."""

    name: str
    version: str
    arch: str
    sha256: str | None = None  # of the .deb, from apt's index at bootstrap time (None: not known to this cache)

    @property
    def purl(self) -> str:
        """pkg:deb/debian/NAME@VERSION?arch=ARCH, encoded by packageurl-python (one encoding of `+`)."""
        from packageurl import PackageURL

        return PackageURL(type="deb", namespace="debian", name=self.name, version=self.version,
                          qualifiers={"arch": self.arch}).to_string()

    def to_json(self) -> dict[str, str]:
        """Plain data (labels, attestation)."""
        return fields_to_wire(self, omit_none=True)


@dataclass(frozen=True)
class BootstrapArchive:
    """A `docker load` archive of one bootstrapped root filesystem."""

    path: Path
    image_id: str  # "sha256:…" = sha256 of the config inside
    diff_id: str  # "sha256:…" of the uncompressed layer
    size: int
    deb_sha256: dict[str, str] = field(default_factory=dict)  # deb_key(name, version, arch) → sha256 of the .deb


@dataclass(frozen=True)
class BootstrapImage:
    """A bootstrapped base image present in the engine."""

    image_id: str
    platform: str  # "linux/amd64"
    built: bool  # False when an existing image was reused


# --- the recipe ------------------------------------------------------------------------------------


def debian_arch(spec: BootstrapSpec) -> str:
    """The spec's architecture, else the host's (dpkg's name for it)."""
    if spec.architecture:
        return spec.architecture
    return _MACHINE_TO_DEB.get(platform.machine().lower(), platform.machine().lower())


def oci_platform(deb_arch: str) -> str:
    """linux/amd64, linux/arm/v7… for a Debian architecture."""
    arch, variant = ARCHES.get(deb_arch, (deb_arch, None))
    return f"linux/{arch}" + (f"/{variant}" if variant and arch == "arm" else "")


def sources_file(spec: BootstrapSpec) -> Path | None:
    """The apt sources mmdebstrap uses: the spec's file, else the host's when it serves the suite, else None."""
    if spec.sources:
        path = Path(spec.sources)
        if not path.is_file():
            raise ManifestError(f"image.bootstrap.sources: {path}: no such file; fix the path")
        return path
    for path in HOST_SOURCES:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if re.search(rf"(^|\s){re.escape(spec.suite)}(\s|$)", text, re.MULTILINE):
            return path
    return None  # mmdebstrap's default mirror for the suite


def spec_digest(spec: BootstrapSpec) -> str:
    """sha256 hex over everything that decides the root filesystem (the sources' content included)."""
    sources = sources_file(spec)
    recipe = {
        "recipe": RECIPE_VERSION, "epoch": SOURCE_DATE_EPOCH, "suite": spec.suite, "variant": spec.variant,
        "packages": sorted(spec.packages), "architecture": debian_arch(spec),
        "sources": hashlib.sha256(sources.read_bytes()).hexdigest() if sources else None,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def mmdebstrap_command(spec: BootstrapSpec, output: Path, index: Path | None = None) -> list[str]:
    """The mmdebstrap argv writing the root filesystem tarball to `output` (and apt's index records to `index`)."""
    cmd = ["mmdebstrap", f"--variant={spec.variant}", f"--architectures={debian_arch(spec)}", "--format=tar",
           # Docker supplies /dev, /etc/hostname and /etc/resolv.conf; the host's copies would make the
           # tarball differ from one machine to the next.
           "--skip=output/dev",
           "--customize-hook=rm -f \"$1/etc/hostname\" \"$1/etc/resolv.conf\""]
    if index is not None:
        # apt's own record (with SHA256:) of every installed package's .deb, read while the chroot still
        # has its package lists (mmdebstrap's clean-up removes them, and apt's caches, afterwards).
        cmd.append("--customize-hook=chroot \"$1\" sh -c 'dpkg-query -W -f=\"\\${Package}:\\${Architecture}="
                   "\\${Version}\\n\" | xargs apt-cache show --no-all-versions' > " + shlex.quote(str(index)))
    if spec.packages:
        cmd.append("--include=" + ",".join(spec.packages))
    cmd += [spec.suite, str(output)]
    sources = sources_file(spec)
    if sources is not None:
        cmd.append(str(sources))
    return cmd


def check_host() -> None:
    """Bootstrapping needs Linux and mmdebstrap; EnvironmentProblem (exit 4) says what to install."""
    if not sys.platform.startswith("linux"):
        raise EnvironmentProblem(f"image.bootstrap needs a Linux host (this is {sys.platform}); pin a base image "
                                 "with image.base instead, or run xrun on Linux")
    if shutil.which("mmdebstrap") is None:
        raise EnvironmentProblem("image.bootstrap needs mmdebstrap; install it (sudo apt-get install mmdebstrap) "
                                 "or pin a base image with image.base instead")


def run_mmdebstrap(spec: BootstrapSpec, output: Path, *, quiet: bool = False, progress: ProgressSink | None = None,
                   timeout_s: float = MMDEBSTRAP_TIMEOUT_S, index: Path | None = None) -> None:
    """Write the root filesystem tarball (and apt's index records to `index`); BuildError (exit 1) with
    mmdebstrap's log tail when it fails.

    EnvironmentProblem (exit 4) when it has not finished within timeout_s: it and its children are stopped.
    """
    check_host()
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "LC_ALL": "C.UTF-8"}
    cmd = mmdebstrap_command(spec, output, index)
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    progress = progress or StderrProgress(quiet)
    progress.info(f"bootstrapping {spec.suite} ({', '.join(spec.packages) or 'no extra packages'}) with "
                  "mmdebstrap; this takes about a minute")
    # Its own process group, so that a timeout or an interrupt stops apt and the other children too.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                            errors="replace", start_new_session=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _stop_group(proc)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            if line.startswith(("I: ", "E: ", "W: ")):
                progress.detail(line.rstrip())
        code = proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise EnvironmentProblem(f"mmdebstrap did not finish within {timeout_s:g} s bootstrapping {spec.suite} and "
                                 "was stopped; the log tail is below. Check that the Debian mirror answers "
                                 "(image.bootstrap.sources), then build again", lines=list(tail))
    if code != 0:
        raise BuildError(f"mmdebstrap failed (exit {code}) bootstrapping {spec.suite} with "
                         f"{', '.join(spec.packages)}; the log tail is below (a missing package version? an "
                         "unreachable mirror?)", lines=list(tail))


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group, then SIGKILL to what is left of it after STOP_GRACE_S at most."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived mmdebstrap hold the log pipe open
    proc.wait()


# --- the docker load archive -----------------------------------------------------------------------


def image_config(diff_id: str, deb_arch: str) -> bytes:
    """The image config: nothing in it varies between runs or machines."""
    arch, variant = ARCHES.get(deb_arch, (deb_arch, None))
    return ImageConfig(architecture=arch, os="linux", diff_ids=(diff_id,),
                       history=(history_entry("xrun bootstrap (mmdebstrap)"),),
                       variant=variant if arch == "arm" else None,
                       container={"Env": [IMAGE_PATH], "Cmd": ["bash"]}).to_bytes()


def write_docker_archive(rootfs: Path, out: Path, deb_arch: str,
                         deb_sha256: dict[str, str] | None = None) -> BootstrapArchive:
    """Wrap a root filesystem tarball as a one-layer `docker load` archive, deterministically."""
    layer = layer_from_file(rootfs)
    image_id = write_load_archive(out, image_config(layer.diff_id, deb_arch), [(layer.diff_id, rootfs)])
    return BootstrapArchive(out, image_id, layer.diff_id, out.stat().st_size, dict(deb_sha256 or {}))


def deb_key(name: str, version: str, arch: str) -> str:
    """The key of one package in a digest record."""
    return f"{name} {version} {arch}"


def parse_apt_index(text: str) -> dict[str, str]:
    """deb_key → SHA256 from `apt-cache show` records (records without a SHA256 field are skipped)."""
    out: dict[str, str] = {}
    for block in re.split(r"\n\s*\n", text):
        fields = {m[1]: m[2] for m in re.finditer(r"^([A-Za-z0-9-]+):[ \t]*(.*)$", block, re.MULTILINE)}
        sha = fields.get("SHA256", "")
        if re.fullmatch(r"[0-9a-f]{64}", sha) and fields.get("Package") and fields.get("Version"):
            out.setdefault(deb_key(fields["Package"], fields["Version"], fields.get("Architecture", "")), sha)
    return out


def bootstrap_archive(spec: BootstrapSpec, out: Path, *, quiet: bool = False, progress: ProgressSink | None = None,
                      workdir: Path | None = None) -> BootstrapArchive:
    """mmdebstrap → `docker load` archive at `out` (written atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xrun-bootstrap-", dir=workdir or out.parent) as tmp:
        rootfs, index = Path(tmp) / "rootfs.tar", Path(tmp) / "apt-index.txt"
        run_mmdebstrap(spec, rootfs, quiet=quiet, progress=progress, index=index)
        try:
            digests = parse_apt_index(index.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            digests = {}
        return write_docker_archive(rootfs, out, debian_arch(spec), digests)


# --- in the engine ---------------------------------------------------------------------------------


def bootstrap_tag(spec: BootstrapSpec) -> str:
    """xrun-bootstrap/<suite>:<first 12 hex of the spec digest>: the cache key of a bootstrapped image."""
    suite = re.sub(r"[^a-z0-9._-]", "-", spec.suite.lower()) or "suite"
    return f"{TAG_REPO}/{suite}:{spec_digest(spec)[:12]}"


def ensure_bootstrap_image(spec: BootstrapSpec, client: Any, cache: Any, *, quiet: bool = False,
                           progress: ProgressSink | None = None) -> BootstrapImage:
    """The bootstrapped base in the engine: by pinned ID or cached tag when present, else built now."""
    import docker.errors

    plat = oci_platform(debian_arch(spec))
    if spec.image_id and _exists(client, spec.image_id):
        return BootstrapImage(spec.image_id, plat, built=False)
    tag = bootstrap_tag(spec)
    digest = spec_digest(spec)
    with cache.lock("sha256", digest, purpose="bootstrap"):
        if not spec.image_id:
            try:
                return BootstrapImage(client.images.get(tag).id, plat, built=False)
            except docker.errors.ImageNotFound:
                pass
        work = cache.root / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="xrun-bootstrap-", dir=work) as tmp:
            archive = bootstrap_archive(spec, Path(tmp) / "image.tar", quiet=quiet, progress=progress,
                                        workdir=Path(tmp))
            if spec.image_id and archive.image_id != spec.image_id:
                raise IntegrityError(
                    f"image.bootstrap: the packages gave image {archive.image_id}, but the manifest pins "
                    f"imageId {spec.image_id}; the mirror's packages changed (a security update?): pin exact "
                    "versions (python3=3.11.2-1+b1) or, if you trust the new packages, update imageId")
            image_id = load_archive(client, archive.path, archive.image_id)
            save_deb_digests(cache, image_id, archive.deb_sha256)
        client.api.tag(image_id, *tag.split(":", 1))
    return BootstrapImage(image_id, plat, built=True)


def _digests_path(cache: Any, image_id: str) -> Path:
    hexdigest = image_id.split(":", 1)[-1]
    return cache.root / "images" / hexdigest[:2] / f"{hexdigest}.debsha256.json"


def save_deb_digests(cache: Any, image_id: str, digests: dict[str, str]) -> None:
    """Keep the .deb digests of a bootstrapped image by its ID (written atomically; an image never changes)."""
    if digests:
        path = _digests_path(cache, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"imageId": image_id, "debSha256": digests})


def deb_digests(cache: Any, image_id: str) -> dict[str, str]:
    """The .deb digests recorded when this cache bootstrapped the image; {} when it did not."""
    try:
        record = json.loads(_digests_path(cache, image_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    value = record.get("debSha256") if isinstance(record, dict) else None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _exists(client: Any, image_id: str) -> bool:
    return image_exists(client, image_id)


DPKG_QUERY = ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"]


def installed_debs(client: Any, image_id: str, cache: Any) -> tuple[DebPackage, ...]:
    """The Debian packages installed in an image (dpkg-query inside it, network off), cached by image ID."""
    def probe() -> Any:
        return run_offline(client, image_id, DPKG_QUERY)

    output = cached_probe(cache, image_id, "dpkg", probe)
    digests = deb_digests(cache, image_id)
    debs = (dataclasses.replace(d, sha256=digests.get(deb_key(d.name, d.version, d.arch))) for d in _parse_dpkg(output))
    return tuple(sorted(debs, key=lambda d: (d.name, d.arch)))


def _parse_dpkg(output: str) -> Iterator[DebPackage]:
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0].strip() == "ii":
            yield DebPackage(parts[1], parts[2], parts[3])
