"""Crash-safe file writes for keys and attestations: temp file, fsync, then rename or link."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stage_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """A fully written, fsynced temporary file beside `path`, created with `mode` (never wider)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # O_EXCL + the mode at creation: a private key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have cleared bits we want (0644 for a public key)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create `path` whole with `mode`; FileExistsError when it exists (never overwrites)."""
    tmp = stage_file(path, data, mode)
    try:
        os.link(tmp, path)  # unlike rename, link refuses an existing target
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def replace_all(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temp name, then rename each in place; on any failure none remain."""
    staged: list[tuple[Path, Path]] = []
    committed: list[Path] = []
    try:
        for path, data in files:
            staged.append((stage_file(path, data), path))
        for tmp, path in staged:
            os.replace(tmp, path)
            committed.append(path)
        for directory in {path.parent for _, path in staged}:
            fsync_dir(directory)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for path in committed:
            path.unlink(missing_ok=True)
        raise
