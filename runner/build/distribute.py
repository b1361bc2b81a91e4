"""A built image made reachable from other machines: pushed by digest, or saved once into a shared folder.

One push path for every command: `xrun build --push` and `xrun submit --registry` both go through the
OCI layout (runner/build/export.py `publish`), so the pushed manifest digest is the same on every
machine and a node's `docker pull REPO@<digest>` gives the built image ID. Without a registry the
image is `docker save`d once per image ID into the shared directory, and nodes `docker load` it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.build.export import parse_repository, publish
from runner.errors import EnvironmentProblem


@dataclass(frozen=True)
class ImageSource:
    """The image a node must run: its ID, its tag, and where to get it."""

    id: str  # sha256:… image ID: the node refuses any other
    tag: str  # xrun/<name>:<build digest prefix>
    reference: str | None = None  # REGISTRY/REPO@sha256:… when pushed (--registry)
    archive: str | None = None  # a `docker save` archive in the shared directory otherwise


def check_registry(registry: str, flag: str = "--registry") -> str:
    """HOST[:PORT] of REGISTRY/REPO; UsageError when malformed, EnvironmentProblem when nothing answers there."""
    host, _ = parse_repository(registry, flag)
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
    try:
        with socket.create_connection((name, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"{flag} {registry}: cannot reach {host} ({exc}); check the address, or leave "
                                 f"{flag} out to ship the image through the shared directory") from None
    return host


def push(image: Any, client: Any, cache: Any, build_digest: str, registry: str) -> ImageSource:
    """Push by digest (through the OCI layout, as `xrun build --push`); the source names REGISTRY/REPO@digest."""
    published = publish(image, client, cache, build_digest, push=registry)
    return ImageSource(id=image.id, tag=image.tag, reference=f"{registry}@{published.manifest_digest}")


def save_to_shared(image: Any, client: Any, folder: Path) -> ImageSource:
    """`docker save` the image once into folder/<image id hex>.tar (atomically; an existing archive is reused)."""
    archive = folder / f"{image.id.split(':', 1)[1]}.tar"
    with _disk(folder):
        folder.mkdir(parents=True, exist_ok=True)
        present = archive.exists()
    if not present:
        with _disk(folder):
            fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".partial", dir=folder)
        try:
            _write(client.images.get(image.id).save(named=image.tag), fd, folder)
            with _disk(folder):
                os.replace(tmp, archive)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return ImageSource(id=image.id, tag=image.tag, archive=str(archive))


def _write(chunks: Iterable[bytes], fd: int, folder: Path) -> None:
    """Write docker's stream to fd, synced; only the disk's errors are wrapped (docker's APIError is an OSError too)."""
    f = os.fdopen(fd, "wb")
    try:
        for chunk in chunks:
            with _disk(folder):
                f.write(chunk)
        with _disk(folder):
            f.flush()
            os.fsync(f.fileno())
    finally:
        with _disk(folder):
            f.close()  # may still report a write the disk refused late (NFS)


@contextlib.contextmanager
def _disk(folder: Path) -> Iterator[None]:
    """An OSError of the shared folder (full disk, no permission) as an EnvironmentProblem naming it."""
    try:
        yield
    except OSError as exc:
        raise EnvironmentProblem(f"{folder}: cannot save the image archive ({exc.strerror or exc}); free space or "
                                 "check permissions") from None
