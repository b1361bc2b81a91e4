"""Hash files and folder trees fast (parallel, one read per file), shared by code and outputs."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UsageError

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """One file of a tree: posix path relative to the tree root, sha256 hex, size, normalised mode."""

    path: str
    sha256: str
    size: int
    mode: int  # 0o755 when any execute bit is set, else 0o644: the only mode bits that matter


def sha256_file(path: Path | str) -> str:
    """sha256 hex of a file, read once in large chunks."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
        return h.hexdigest()


def is_excluded(rel: str, is_dir: bool, patterns: tuple[str, ...]) -> bool:
    """gitignore-like matching: 'data/' matches folders only; a pattern without '/' matches any component."""
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pat = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if "/" in pat:
            if fnmatch.fnmatchcase(rel, pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


def list_tree(root: Path, exclude: tuple[str, ...] = (), *, follow_inside_links: bool = True) -> list[tuple[str, Path]]:
    """Sorted (relative path, absolute path) of the regular files under root, excludes applied.

    Symlinks are followed only when they stay inside root; one pointing outside is an error,
    because its target would silently become part of the tree.
    """
    root = root.resolve()
    found: list[tuple[str, Path]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                is_dir = entry.is_dir(follow_symlinks=True)
                if is_excluded(rel, is_dir, exclude):
                    continue
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not (target == root or root in target.parents) or not follow_inside_links:
                        raise UsageError(f"{entry.path}: symlink points outside {root} (to {target}); "
                                         "copy the file in or exclude the link")
                if is_dir:
                    stack.append((Path(entry.path), rel + "/"))
                elif entry.is_file(follow_symlinks=True):
                    found.append((rel, Path(entry.path)))
    found.sort()
    return found


def hash_files(files: list[tuple[str, Path]], workers: int | None = None) -> list[FileDigest]:
    """Hash many files in parallel threads (hashlib releases the GIL), keeping the input order."""
    def one(item: tuple[str, Path]) -> FileDigest:
        rel, path = item
        st = os.stat(path)
        mode = 0o755 if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644
        return FileDigest(rel, sha256_file(path), st.st_size, mode)

    if len(files) < 8:
        return [one(f) for f in files]
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, files, chunksize=64))


def hash_tree(root: Path, exclude: tuple[str, ...] = ()) -> list[FileDigest]:
    """Hash every regular file under root (sorted by relative path)."""
    return hash_files(list_tree(root, exclude))


def tree_digest(files: list[FileDigest]) -> str:
    """One digest for a tree, independent of mtimes: over sorted 'mode sha256 size path' lines."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.mode:o} {f.sha256} {f.size} {f.path}\n".encode())
    return "sha256:" + h.hexdigest()
