"""Deterministic image pieces: layer tars, image configs, `docker load` archives and OCI layouts.

Everything here is a function of its inputs alone: entries sorted by path, mtime fixed at
SOURCE_DATE_EPOCH, uid/gid 0 with no owner names, modes normalised (0644/0755, 0777 for links),
no xattrs, no device numbers, nothing read from the host but file content. The image ID is the
sha256 of the config bytes we write, and `docker load` keeps those bytes as they are, so the same
inputs give the same image ID on any machine. The bootstrapped base and the built image share it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from runner.errors import EnvironmentProblem, IntegrityError

# 2024-01-01T00:00:00Z. Part of every recipe: changing it changes every image ID xrun makes.
SOURCE_DATE_EPOCH = 1704067200
CREATED = datetime.fromtimestamp(SOURCE_DATE_EPOCH, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
CHUNK = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace: the bytes a config or manifest is hashed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- layer tars ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One member of a layer."""

    name: str  # relative path, no leading "/"
    kind: str  # "dir" | "file" | "bytes" | "symlink"
    mode: int = 0o644
    path: Path | None = None
    data: bytes = b""
    target: str = ""
    sha256: str | None = None  # a host file that must still have this content


class LayerBuilder:
    """Collects a layer's entries and writes them as a deterministic tar."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A file with the given content."""
        self._parents(name)
        self._entries[name] = Entry(name, "bytes", mode, data=data)

    def add_file(self, name: str, path: Path, mode: int, sha256: str | None = None) -> None:
        """A host file, checked against sha256 while it is written when given."""
        self._parents(name)
        self._entries[name] = Entry(name, "file", _normal_mode(mode), path=path, sha256=sha256)

    def add_dir(self, name: str) -> None:
        """A folder (0755)."""
        self._parents(name)
        self._entries.setdefault(name, Entry(name, "dir", 0o755))

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
                    self.add_file(f"{base}/{f}", full, os.stat(full).st_mode)

    def _symlink(self, name: str, path: Path) -> None:
        self._parents(name)
        self._entries[name] = Entry(name, "symlink", 0o777, target=os.readlink(path))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self._entries.setdefault(parent, Entry(parent, "dir", 0o755))

    def entries(self) -> list[Entry]:
        """The entries in tar order: sorted by path components (a folder before what it holds)."""
        return [self._entries[n] for n in sorted(self._entries, key=lambda n: n.split("/"))]

    def write(self, out: IO[bytes]) -> None:
        """The tar."""
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in self.entries():
                _write_entry(tar, entry)


def _normal_mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


def _info(name: str, mode: int, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode = size, kind, mode
    info.mtime, info.uid, info.gid, info.uname, info.gname = SOURCE_DATE_EPOCH, 0, 0, "", ""
    info.devmajor = info.devminor = 0
    return info


def _write_entry(tar: tarfile.TarFile, entry: Entry) -> None:
    if entry.kind == "dir":
        tar.addfile(_info(entry.name, entry.mode, tarfile.DIRTYPE))
    elif entry.kind == "symlink":
        info = _info(entry.name, entry.mode, tarfile.SYMTYPE)
        info.linkname = entry.target
        tar.addfile(info)
    elif entry.kind == "bytes":
        tar.addfile(_info(entry.name, entry.mode, size=len(entry.data)), io.BytesIO(entry.data))
    else:
        assert entry.path is not None
        with open(entry.path, "rb") as f:
            info = _info(entry.name, entry.mode, size=os.fstat(f.fileno()).st_size)
            reader = HashingReader(f)
            tar.addfile(info, reader)
        if entry.sha256 is not None and (reader.hexdigest() != entry.sha256 or reader.count != info.size):
            raise IntegrityError(f"{entry.path}: changed since the plan was made (sha256 {reader.hexdigest()[:12]}… "
                                 f"≠ planned {entry.sha256[:12]}…); run again once the code stops changing")


class HashingReader(io.RawIOBase):
    """A file wrapper that hashes what is read from it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._h.update(data)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class _HashingWriter(io.RawIOBase):
    """A file wrapper that hashes what is written through it."""

    def __init__(self, f: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        self._f = f
        self.h = hashlib.sha256()
        self.count = 0
        self._on_bytes = on_bytes

    def write(self, data: Any) -> int:
        view = bytes(data)
        self._f.write(view)
        self.h.update(view)
        self.count += len(view)
        if self._on_bytes is not None:
            self._on_bytes(len(view))
        return len(view)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.count


@dataclass(frozen=True)
class Layer:
    """A layer tar: its diff ID is the sha256 of the uncompressed tar.

    path is None for a layer the engine already holds (by chain ID) and that was not written again."""

    path: Path | None
    diff_id: str  # "sha256:…"
    size: int

    def file(self) -> Path:
        """The tar on disk (a layer that was not written has none: a bug to ask for it)."""
        if self.path is None:
            raise RuntimeError(f"layer {self.diff_id} was not written (the engine holds it)")
        return self.path


class LayerWriter:
    """A layer tar written entry by entry as the content arrives, hashed while written: no staging folder.

    The order is the caller's (it must be deterministic); a folder is written once, before the first
    entry under it (0755), and a file path only once (FileExistsError otherwise)."""

    def __init__(self, out: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        self._writer = _HashingWriter(out, on_bytes)
        self._tar = tarfile.open(fileobj=self._writer, mode="w", format=tarfile.PAX_FORMAT)
        self._dirs: set[str] = set()
        self._files: set[str] = set()

    def add_dir(self, name: str) -> None:
        """A folder and its missing parents (0755)."""
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in self._dirs:
                self._dirs.add(folder)
                self._tar.addfile(_info(folder, 0o755, tarfile.DIRTYPE))

    def _claim(self, name: str) -> None:
        if name in self._files or name in self._dirs:
            raise FileExistsError(name)
        if "/" in name:
            self.add_dir(name.rsplit("/", 1)[0])
        self._files.add(name)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A file with the given content."""
        self._claim(name)
        self._tar.addfile(_info(name, _normal_mode(mode), size=len(data)), io.BytesIO(data))

    def add_stream(self, name: str, src: IO[bytes], size: int, mode: int = 0o644) -> tuple[str, int]:
        """A file of exactly size bytes read from src; (sha256 hex, size) of what was written."""
        self._claim(name)
        reader = HashingReader(src)
        self._tar.addfile(_info(name, _normal_mode(mode), size=size), reader)
        if reader.count != size or reader.read(1):
            raise IntegrityError(f"{name}: the source gave more or fewer bytes than its recorded size {size}")
        return reader.hexdigest(), size

    def add_symlink(self, name: str, target: str) -> None:
        """A symbolic link (0777)."""
        self._claim(name)
        info = _info(name, 0o777, tarfile.SYMTYPE)
        info.linkname = target
        self._tar.addfile(info)

    def close(self, path: Path | None) -> Layer:
        """End the tar; the layer (path is where the caller's stream went)."""
        self._tar.close()
        return Layer(path, "sha256:" + self._writer.h.hexdigest(), self._writer.count)


def write_layer(builder: LayerBuilder, path: Path) -> Layer:
    """Write the builder's tar to path, hashing it on the way."""
    with open(path, "wb") as f:
        writer = _HashingWriter(f)
        builder.write(writer)  # type: ignore[arg-type]
    return Layer(path, "sha256:" + writer.h.hexdigest(), writer.count)


def layer_from_file(path: Path) -> Layer:
    """A layer tar that already exists (the bootstrap's root filesystem)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return Layer(path, "sha256:" + h.hexdigest(), path.stat().st_size)


def list_layer(path: Path) -> dict[str, str]:
    """name → "dir" / "link:TARGET" / "sha256:HEX mode": what a layer holds, for naming differences."""
    out: dict[str, str] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isdir():
                out[member.name] = f"dir {member.mode:o}"
            elif member.issym() or member.islnk():
                out[member.name] = f"link:{member.linkname}"
            else:
                f = tar.extractfile(member)
                h = hashlib.sha256(f.read() if f else b"").hexdigest()
                out[member.name] = f"sha256:{h} {member.mode:o}"
    return out


# --- image configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """What goes into an image config; `to_bytes()` is what the image ID is the sha256 of."""

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    history: tuple[dict[str, Any], ...]
    variant: str | None = None
    container: dict[str, Any] = field(default_factory=dict)  # Env, Cmd, Entrypoint, WorkingDir, User, Labels…

    def to_bytes(self) -> bytes:
        """Canonical JSON: fixed created time, nothing from the host."""
        config: dict[str, Any] = {
            "architecture": self.architecture, "os": self.os, "created": CREATED,
            "config": {k: v for k, v in self.container.items() if v not in (None, "", [], {})},
            "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
            "history": list(self.history),
        }
        if self.variant:
            config["variant"] = self.variant
        return canonical(config)

    @property
    def image_id(self) -> str:
        """sha256:… of the config bytes: the ID the engine gives the loaded image."""
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()


def history_entry(created_by: str, *, empty: bool = False) -> dict[str, Any]:
    """One history item with the fixed time."""
    item: dict[str, Any] = {"created": CREATED, "created_by": created_by}
    if empty:
        item["empty_layer"] = True
    return item


# --- docker load archives --------------------------------------------------------------------------


def load_stream(config: bytes, layers: Sequence[tuple[str, Path | None]], *,
                on_bytes: Callable[[int], None] | None = None, unlink: frozenset[Path] = frozenset()) -> Iterator[bytes]:
    """The bytes of a `docker load` archive, generated as they are read: the layer tars are not copied
    into a second file. A layer without a path is one the engine already holds (the base's, or a
    dependency layer built before): Docker looks layers up by chain ID before it reads the file, so
    the archive need not carry it. A path in unlink is removed once sent (the engine has its copy)."""
    config_hex = hashlib.sha256(config).hexdigest()
    names = [f"{diff.split(':', 1)[1]}/layer.tar" for diff, _ in layers]
    manifest = canonical([{"Config": f"{config_hex}.json", "Layers": names, "RepoTags": None}])
    sent = 0

    def header(info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")

    def padding(size: int) -> bytes:
        return b"\0" * (-size % tarfile.BLOCKSIZE)

    for name, (_, path) in zip(names, layers, strict=True):
        if path is None:
            continue
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            chunk = header(_info(name.split("/")[0], 0o755, tarfile.DIRTYPE)) + header(_info(name, 0o644, size=size))
            sent += len(chunk)
            yield chunk
            while data := f.read(CHUNK):
                sent += len(data)
                if on_bytes is not None:
                    on_bytes(len(data))
                yield data
            tail = padding(size)
            sent += len(tail)
            yield tail
        if path in unlink:
            path.unlink()
    for name, data in ((f"{config_hex}.json", config), ("manifest.json", manifest)):
        chunk = header(_info(name, 0o644, size=len(data))) + data + padding(len(data))
        sent += len(chunk)
        yield chunk
    # End of archive: two zero blocks, padded to a whole record as tarfile does.
    end = 2 * tarfile.BLOCKSIZE
    yield b"\0" * (end + (-(sent + end) % tarfile.RECORDSIZE))


def write_load_archive(out: Path, config: bytes, layers: Sequence[tuple[str, Path | None]]) -> str:
    """A `docker load` archive at out (written atomically); the image ID. Layers without a path are left
    out (see load_stream)."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        with open(partial, "wb") as f:
            for chunk in load_stream(config, layers):
                f.write(chunk)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return "sha256:" + hashlib.sha256(config).hexdigest()


def read_archive_id(path: Path) -> str:
    """The image ID a `docker load` archive will produce (its config's sha256), without loading it."""
    with tarfile.open(path, "r:") as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise IntegrityError(f"{path}: not a docker load archive (no manifest.json); delete it and rebuild")
        manifest = json.loads(member.read())
        config = tar.extractfile(manifest[0]["Config"])
        if config is None:
            raise IntegrityError(f"{path}: the archive's config is missing; delete it and rebuild")
        return "sha256:" + hashlib.sha256(config.read()).hexdigest()


def image_exists(client: Any, image_id: str) -> bool:
    """Whether the engine holds an image with this ID."""
    import docker.errors

    try:
        client.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


def load_archive(client: Any, archive: Path, expected_id: str | None = None) -> str:
    """`docker load` the archive and return the image ID; it must be the ID the archive's config implies."""
    expected = expected_id or read_archive_id(archive)
    with open(archive, "rb") as f:
        return load_image(client, f, expected, str(archive))


def load_image(client: Any, data: Any, expected: str, shown: str) -> str:
    """`docker load` data (a file or a generator of bytes); it must give the expected image ID."""
    import docker.errors

    try:
        images = client.images.load(data)
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"docker load of {shown} failed: {exc.explanation or exc}; check the engine's "
                                 "disk space (docker system df) and that the base image is still there") from None
    loaded = {img.id for img in images}
    if expected not in loaded:
        raise IntegrityError(f"docker load of {shown} gave {', '.join(sorted(loaded)) or 'no image'}, expected "
                             f"{expected}; the archive is damaged: delete it and build again")
    return expected


def remove_untagged(client: Any, image_id: str) -> None:
    """Remove an image we loaded when nothing names it (an interrupted build leaves nothing dangling)."""
    import docker.errors

    try:
        image = client.images.get(image_id)
        if not image.tags:
            client.images.remove(image_id, force=True)
    except docker.errors.APIError:
        pass  # gone already, or in use by someone's container: then it is not ours to remove


# --- OCI image layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciImage:
    """An image written as an OCI image layout."""

    path: Path
    manifest_digest: str  # "sha256:…" of the manifest JSON


def oci_manifest(config: bytes, layers: Iterable[Layer]) -> bytes:
    """The OCI image manifest for a config and its uncompressed layers."""
    return canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": layer.size} for layer in layers],
    })


def write_oci_layout(out: Path, config: bytes, layers: Sequence[Layer], ref_name: str | None = None) -> OciImage:
    """index.json, oci-layout and blobs/sha256/… under out (blobs hard-linked or copied, written atomically)."""
    import shutil

    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put_bytes(data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        target = blobs / hexd
        if not target.exists():
            tmp = blobs / f".{hexd}.partial"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return hexd

    for layer in layers:
        target = blobs / layer.diff_id.split(":", 1)[1]
        if not target.exists():
            tmp = blobs / f".{target.name}.partial"
            try:
                os.link(layer.file(), tmp)
            except OSError:
                shutil.copyfile(layer.file(), tmp)
            os.replace(tmp, target)
    put_bytes(config)
    manifest = oci_manifest(config, layers)
    manifest_hex = put_bytes(manifest)
    descriptor: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": f"sha256:{manifest_hex}",
                                  "size": len(manifest)}
    if ref_name:
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    index = out / "index.json"
    tmp = out / ".index.json.partial"
    tmp.write_bytes(canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}))
    os.replace(tmp, index)
    return OciImage(out, f"sha256:{manifest_hex}")
