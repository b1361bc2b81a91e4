"""Hash files and folder trees fast (parallel, one read per file), shared by code and outputs."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from runner.errors import UsageError

CHUNK = 1 << 20
BIG_FILE = 4 << 20


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


def ignore_rules(patterns: Iterable[str]) -> Callable[[str, bool], bool]:
    """gitignore matching by pathspec: 'data/' matches folders only, '!' re-includes, 'x' matches at any depth."""
    spec = pathspec.GitIgnoreSpec.from_lines(list(patterns))
    return lambda rel, is_dir: spec.match_file(rel + "/" if is_dir else rel)


def list_tree(root: Path, exclude: Callable[[str, bool], bool] | None = None, *,
              follow_inside_links: bool = True) -> list[tuple[str, str]]:
    """Sorted (relative posix path, absolute path) of the regular files under root.

    `exclude(relative path, is a folder)` leaves a file or a whole folder out (a folder is not walked).
    Symlinks are followed only when they stay inside root; one pointing outside is an error,
    because its target would silently become part of the tree.
    """
    root = root.resolve()
    found: list[tuple[str, str]] = []
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                link = entry.is_symlink()
                is_dir = entry.is_dir()
                if exclude is not None and exclude(rel, is_dir):
                    continue
                if link:
                    target = Path(entry.path).resolve()
                    if not follow_inside_links or not (target == root or root in target.parents):
                        raise UsageError(f"{entry.path}: symlink points outside {root} (to {target}); "
                                         "copy the file in or exclude the link")
                if is_dir:
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file():
                    found.append((rel, entry.path))
    found.sort()
    return found


def hash_files(files: Sequence[tuple[str, str | Path]], workers: int | None = None, *,
                on_head: Callable[[str, bytes], None] | None = None) -> list[FileDigest]:
    """Hash many files, keeping the input order.

    Small files are hashed in this thread: per-file thread hand-offs cost more than the hashing.
    Files over BIG_FILE go to a pool, where hashlib releases the GIL and cores work in parallel.
    `on_head(relative path, first bytes)` sees each file's first chunk (up to CHUNK bytes) from the
    read that hashes it, in this thread: a check of file heads costs no second open.
    """
    results: list[FileDigest | None] = [None] * len(files)
    workers = workers or max(2, os.cpu_count() or 1)
    pending: list[Any] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, (rel, path) in enumerate(files):
            fd = os.open(path, os.O_RDONLY)
            try:
                st = os.fstat(fd)
                if st.st_size > BIG_FILE:
                    if on_head is not None:
                        on_head(rel, os.pread(fd, CHUNK, 0))
                    pending.append((index, rel, st, pool.submit(_digest_fd, fd)))
                    fd = -1  # the pool task owns and closes it
                    if len(pending) >= 2 * workers:
                        _collect(pending, results)
                else:
                    head = functools.partial(on_head, rel) if on_head is not None else None
                    results[index] = FileDigest(rel, _digest_fd(fd, close=False, on_first=head), st.st_size,
                                                _mode(st.st_mode))
            finally:
                if fd >= 0:
                    os.close(fd)
        _collect(pending, results)
    return results  # type: ignore[return-value]


def _collect(pending: list[Any], results: list[FileDigest | None]) -> None:
    for index, rel, st, future in pending:
        results[index] = FileDigest(rel, future.result(), st.st_size, _mode(st.st_mode))
    pending.clear()


def _digest_fd(fd: int, close: bool = True, on_first: Callable[[bytes], None] | None = None) -> str:
    try:
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, CHUNK)
            if on_first is not None:
                on_first(chunk)
                on_first = None
            if not chunk:
                break
            h.update(chunk)
        return h.hexdigest()
    finally:
        if close:
            os.close(fd)


def _mode(st_mode: int) -> int:
    return 0o755 if st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644


def hash_tree(root: Path, exclude: Callable[[str, bool], bool] | None = None) -> list[FileDigest]:
    """Hash every regular file under root (sorted by relative path)."""
    return hash_files(list_tree(root, exclude))


def tree_digest(files: list[FileDigest]) -> str:
    """One digest for a tree, independent of mtimes: over sorted 'mode sha256 size path' lines."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.mode:o} {f.sha256} {f.size} {f.path}\n".encode())
    return "sha256:" + h.hexdigest()
