"""An image out of the engine: its layer tars (`docker save`), an OCI image layout, a push by digest.

`docker save` writes every layer uncompressed, so the sha256 of each `layer.tar` is its diff ID:
the layers are checked against the config while they stream, and the OCI layout xrun writes from
them (uncompressed layers, canonical manifest) has the same manifest digest on every machine. A
push uploads that layout through the registry's HTTP API (no engine, no recompression), so the
pushed manifest digest is the layout's; `docker pull REPO@<that digest>` gives the same image ID.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runner.build.layers import OCI_MANIFEST, Layer, OciImage, write_oci_layout
from runner.errors import EnvironmentProblem, FetchError, IntegrityError, UsageError
from runner.wire import to_wire

__all__ = ["SavedImage", "export_oci", "push_layout", "save_layers"]

CHUNK = 1 << 20
PUSH_TIMEOUT_S = 300


@dataclass(frozen=True)
class SavedImage:
    """An image's config bytes and the layer tars asked for, by diff ID, written under a folder."""

    config: bytes
    diff_ids: tuple[str, ...]
    layers: dict[str, Path]


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (the engine's `docker save` stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def save_layers(client: Any, image_id: str, out: Path, wanted: set[str] | None = None) -> SavedImage:
    """`docker save` image_id, keeping under out the layers whose diff ID is wanted (all when None)."""
    import docker.errors

    out.mkdir(parents=True, exist_ok=True)
    config: bytes | None = None
    layers: dict[str, Path] = {}
    try:
        stream = client.api.get_image(image_id, chunk_size=CHUNK)
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(stream), CHUNK), mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                src = tar.extractfile(member)
                assert src is not None
                if member.name.endswith("/layer.tar"):
                    diff_id, path = _keep_layer(src, out, wanted)
                    if path is not None:
                        layers[diff_id] = path
                elif member.name == f"{image_id.split(':', 1)[1]}.json":
                    config = src.read()
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"docker save of {image_id} failed: {exc.explanation or exc}; check that the "
                                 "engine still holds the image (docker image inspect)") from None
    if config is None or "sha256:" + hashlib.sha256(config).hexdigest() != image_id:
        raise IntegrityError(f"docker save of {image_id} returned no config with that digest; the engine's copy "
                             "of the image is damaged: remove it and build again")
    diff_ids = tuple(json.loads(config).get("rootfs", {}).get("diff_ids") or ())
    missing = [d for d in diff_ids if (wanted is None or d in wanted) and d not in layers]
    if missing:
        raise IntegrityError(f"docker save of {image_id} gave no layer with diff ID {missing[0]}; the engine's copy "
                             "of the image is damaged: remove it and build again")
    return SavedImage(config, diff_ids, layers)


def _keep_layer(src: IO[bytes], out: Path, wanted: set[str] | None) -> tuple[str, Path | None]:
    """Write one layer.tar to out, hashing it; kept as <hex>.tar when wanted, else removed."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".layer-")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                h.update(chunk)
                f.write(chunk)
        diff_id = "sha256:" + h.hexdigest()
        if wanted is not None and diff_id not in wanted:
            return diff_id, None
        target = out / f"{h.hexdigest()}.tar"
        os.replace(tmp, target)
        return diff_id, target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_oci(client: Any, image_id: str, out: Path, ref_name: str | None = None) -> OciImage:
    """Write the image, base layers included, as an OCI image layout at out (blobs named by content)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--oci-layout {out}: exists and is not a folder; name a new or an OCI layout folder")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".xrun-save-", dir=out) as tmp:
        saved = save_layers(client, image_id, Path(tmp))
        layers = [Layer(saved.layers[d], d, saved.layers[d].stat().st_size) for d in saved.diff_ids]
        return write_oci_layout(out, saved.config, layers, ref_name)


# --- pushing ---------------------------------------------------------------------------------------


def parse_repository(target: str, flag: str = "--push") -> tuple[str, str]:
    """REGISTRY/REPO → (registry host, repository); UsageError naming the flag when no registry host is named.

    The one parser of a registry argument (`build --push`, `submit --registry`).
    """
    host, _, repo = target.partition("/")
    if not repo or not ("." in host or ":" in host or host == "localhost") or "@" in target or \
            ":" in repo.rsplit("/", 1)[-1]:
        raise UsageError(f"{flag} {target}: give REGISTRY/REPO without tag or digest (for example "
                         "127.0.0.1:5000/team/experiment); the image is pushed by digest")
    return host, repo


def _scheme(host: str) -> str:
    # Like the engine: plain HTTP for a registry on the loopback, TLS for any other.
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return "http" if name in ("localhost", "127.0.0.1", "[::1]") or name.startswith("127.") else "https"


def push_layout(layout: OciImage, target: str) -> str:
    """Upload the layout's blobs and manifest to REGISTRY/REPO by digest; the manifest digest."""
    import requests

    host, repo = parse_repository(target)
    base = f"{_scheme(host)}://{host}/v2/{repo}"
    index = json.loads((layout.path / "index.json").read_bytes())
    manifest_hex = layout.manifest_digest.split(":", 1)[1]
    manifest = (layout.path / "blobs" / "sha256" / manifest_hex).read_bytes()
    parsed = json.loads(manifest)
    blobs = [parsed["config"]["digest"]] + [layer["digest"] for layer in parsed["layers"]]
    assert index["manifests"][0]["digest"] == layout.manifest_digest
    session = requests.Session()
    try:
        for digest in dict.fromkeys(blobs):
            _push_blob(session, base, target, layout.path / "blobs" / "sha256" / digest.split(":", 1)[1], digest)
        resp = _request(session, "PUT", f"{base}/manifests/{layout.manifest_digest}", target, data=manifest,
                        headers={"Content-Type": OCI_MANIFEST})
        _expect(resp, (201,), target, "storing the manifest")
        served = resp.headers.get("Docker-Content-Digest")
        if served and served != layout.manifest_digest:
            raise IntegrityError(f"--push {target}: the registry stored the manifest as {served}, expected "
                                 f"{layout.manifest_digest}; it rewrote the manifest: push to another registry")
    finally:
        session.close()
    return layout.manifest_digest


def _push_blob(session: Any, base: str, target: str, path: Path, digest: str) -> None:
    head = _request(session, "HEAD", f"{base}/blobs/{digest}", target)
    if head.status_code == 200:
        return  # the registry has it: content addressed, nothing to send
    start = _request(session, "POST", f"{base}/blobs/uploads/", target)
    _expect(start, (202,), target, "starting an upload")
    location = start.headers.get("Location", "")
    if location.startswith("/"):
        location = base.split("/v2/", 1)[0] + location
    with open(path, "rb") as f:
        resp = _request(session, "PUT", location + ("&" if "?" in location else "?") + f"digest={digest}", target,
                        data=f, headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(path.stat().st_size)})
    _expect(resp, (201,), target, f"uploading blob {digest}")


def _request(session: Any, method: str, url: str, target: str, **kwargs: Any) -> Any:
    import requests

    try:
        return session.request(method, url, timeout=PUSH_TIMEOUT_S, **kwargs)
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"--push {target}: cannot reach the registry ({type(exc).__name__}); check the host "
                         "and that it runs") from None


def _expect(resp: Any, codes: tuple[int, ...], target: str, what: str) -> None:
    if resp.status_code in codes:
        return
    if resp.status_code in (401, 403):
        raise EnvironmentProblem(f"--push {target}: the registry refused {what} (HTTP {resp.status_code}); xrun "
                                 "pushes without credentials: use a registry that accepts anonymous pushes, or "
                                 "`docker load` the OCI layout (--oci-layout) and `docker push` it")
    raise FetchError(f"--push {target}: {what} failed with HTTP {resp.status_code}: {resp.text[:200].strip()}")


def remove_tree(path: Path) -> None:
    """Remove a folder xrun made (best effort)."""
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Published:
    """Where a built image went: an OCI layout folder and/or a registry, by digest."""

    image: Any  # BuiltImage, with manifest_digest and pushed_to set when pushed
    oci_layout: Path | None
    manifest_digest: str | None

    def to_json(self) -> dict[str, Any]:
        """`xrun build --json`: the image's keys plus where its OCI layout went."""
        return {**to_wire(self.image), "ociLayout": to_wire(self.oci_layout), "ociManifestDigest": self.manifest_digest}


def publish(image: Any, client: Any, cache: Any, build_digest: str, *, oci_layout: Path | None = None,
            push: str | None = None) -> Published:
    """Write the OCI layout and/or push it; a push is kept in the build record, so later runs attest it."""
    from dataclasses import replace

    from runner.build.image import save_build_record

    if push is not None:
        parse_repository(push)  # a bad target fails before anything is written
    if oci_layout is None and push is None:
        return Published(image, None, None)
    work = None
    if oci_layout is None:
        work = cache.work_dir("oci")
    try:
        layout = export_oci(client, image.id, oci_layout or work, ref_name=image.tag)  # type: ignore[arg-type]
        if push is None:
            return Published(image, oci_layout, layout.manifest_digest)
        digest = push_layout(layout, push)
    finally:
        if work is not None:
            remove_tree(work)
    pushed = replace(image, manifest_digest=digest, pushed_to=push)
    save_build_record(cache, build_digest, pushed)
    return Published(pushed, oci_layout, digest)
