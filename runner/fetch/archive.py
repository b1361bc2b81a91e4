"""Unpack a verified .tar/.tar.gz/.tgz/.zip blob into a content-addressed tree, once, atomically.

Members are written by hand, not with tarfile/zipfile's extract, so that every rule is ours and
visible: no absolute names, no '..', nothing written through a symlink, symlinks and hard links
only to places inside the tree, no device files, fifos or sockets. The tree is built in a
temporary folder next to its final place, made read-only, and renamed into place; its listing
(path, sha256, size, mode of every file) lets `xrun cache verify` re-check it later, and its
fingerprint (one stat per member, recorded after the rename) lets a run trust it without reading it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runner.errors import FetchError, IntegrityError
from runner.fetch.cache import (READ_ONLY_DIR, READ_ONLY_EXEC, READ_ONLY_FILE, Blob, Cache, fsync_dir, hash_file,
                                walk_tree)
from runner.fetch.interface import CHUNK

LISTING_VERSION = 1


class UnsafeMember(Exception):
    """An archive member that would escape the tree or is not plain data (the caller names the item)."""


@dataclass(frozen=True)
class TreeFile:
    """One regular file of an unpacked tree."""

    path: str
    sha256: str
    size: int
    mode: int


@dataclass(frozen=True)
class Tree:
    """An unpacked archive in the cache; `unpacked` is False when it was already there."""

    algorithm: str
    hexdigest: str
    path: Path
    unpacked: bool


@dataclass
class _Builder:
    """Extraction state: what exists in the tree so far, to check links and duplicates against."""

    root: Path
    files: dict[str, TreeFile] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


def unpack_tree(cache: Cache, blob: Blob, *, name: str, uri: str) -> Tree:
    """The tree for an archive blob: a stat when present, else unpack it under the tree lock."""
    found = cache.lookup_tree(blob.algorithm, blob.hexdigest)
    if found is not None:
        return Tree(blob.algorithm, blob.hexdigest, found, unpacked=False)
    final = cache.tree_path(blob.algorithm, blob.hexdigest)
    final.parent.mkdir(parents=True, exist_ok=True)
    with cache.lock(blob.algorithm, blob.hexdigest, "tree"):
        found = cache.lookup_tree(blob.algorithm, blob.hexdigest)
        if found is not None:
            return Tree(blob.algorithm, blob.hexdigest, found, unpacked=False)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{blob.hexdigest}-", dir=final.parent))
        try:
            builder = _Builder(work)
            try:
                _extract(blob.path, builder)
            except UnsafeMember as exc:
                raise IntegrityError(f"{name}: {uri}: the archive is unsafe to unpack: {exc}; nothing was "
                                     "unpacked. Repack it without such members, or drop unpack: true") from None
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
                raise IntegrityError(f"{name}: {uri}: cannot unpack: {_archive_problem(exc)}; use .tar, .tar.gz, "
                                     ".tgz or .zip, or drop unpack: true") from None
            _seal(builder)
            cache.write_tree_listing(blob.algorithm, blob.hexdigest, _listing(blob, builder))
            os.rename(work, final)
            fsync_dir(final.parent)
            cache.record_tree(blob.algorithm, blob.hexdigest)
        except OSError as exc:
            remove_tree(work)
            raise FetchError(f"{name}: {uri}: cannot unpack into the cache {cache.root}: "
                             f"{exc.strerror or exc}; free space or fix permissions there") from None
        except BaseException:
            remove_tree(work)
            raise
    return Tree(blob.algorithm, blob.hexdigest, final, unpacked=True)


def _archive_problem(exc: BaseException) -> str:
    """One line for what the archive readers said (tarfile lists each method it tried, one per line)."""
    text = str(exc)
    if isinstance(exc, tarfile.ReadError) and "could not be opened" in text:
        return "not an archive (neither tar, gzip, bzip2, xz nor zip)"
    first = text.splitlines()[0].rstrip(":") if text.strip() else type(exc).__name__
    return f"a corrupt or unsupported archive ({first[:160]})"


# --- extraction -------------------------------------------------------------------------------------


def _extract(archive: Path, builder: _Builder) -> None:
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06"):
        _extract_zip(archive, builder)
    else:
        _extract_tar(archive, builder)


def _extract_tar(archive: Path, builder: _Builder) -> None:
    # r:* detects gzip/bz2/xz; iterating streams the members instead of listing them all first.
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            rel = safe_name(member.name)
            if rel is None:
                continue
            if member.isdir():
                _make_dir(builder, rel)
            elif member.isreg():
                source = tar.extractfile(member)
                assert source is not None
                with source:
                    _write_file(builder, rel, source, member.mode)
            elif member.issym():
                _make_symlink(builder, rel, member.linkname)
            elif member.islnk():
                _make_hardlink(builder, rel, member.linkname)
            elif member.ischr() or member.isblk():
                raise UnsafeMember(f"{member.name!r} is a device file")
            elif member.isfifo():
                raise UnsafeMember(f"{member.name!r} is a fifo")
            else:
                raise UnsafeMember(f"{member.name!r} has an unsupported type ({member.type!r})")


def _extract_zip(archive: Path, builder: _Builder) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = safe_name(info.filename.replace("\\", "/"))
            if rel is None:
                continue
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if info.is_dir() or kind == stat.S_IFDIR:
                _make_dir(builder, rel)
            elif kind == stat.S_IFLNK:
                _make_symlink(builder, rel, zf.read(info).decode("utf-8", "surrogateescape"))
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                raise UnsafeMember(f"{info.filename!r} is a device file")
            elif kind in (stat.S_IFIFO, stat.S_IFSOCK):
                raise UnsafeMember(f"{info.filename!r} is a fifo or socket")
            else:
                with zf.open(info) as source:
                    _write_file(builder, rel, source, mode & 0o777 if mode else 0o644)


def safe_name(name: str) -> str | None:
    """A member name as a clean relative path; None for the root itself; UnsafeMember if it escapes."""
    if "\0" in name:
        raise UnsafeMember(f"{name!r} contains a NUL byte")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise UnsafeMember(f"{name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"{name!r} contains '..'")
    return "/".join(parts) or None


def _make_parents(builder: _Builder, rel: str) -> None:
    """Create the member's parent folders; refuse to go through anything but a real folder."""
    parent = posixpath.dirname(rel)
    if not parent or parent in builder.dirs:
        return
    walked = ""
    for part in parent.split("/"):
        walked = f"{walked}/{part}" if walked else part
        if walked in builder.dirs:
            continue
        if walked in builder.symlinks:
            raise UnsafeMember(f"{rel!r} lies under the symlink {walked!r}")
        if walked in builder.files:
            raise UnsafeMember(f"{rel!r} lies under the file {walked!r}")
        os.mkdir(builder.root / walked, 0o755)
        builder.dirs.add(walked)


def _make_dir(builder: _Builder, rel: str) -> None:
    if rel in builder.dirs:
        return
    if rel in builder.files or rel in builder.symlinks:
        raise UnsafeMember(f"{rel!r} appears twice, as a folder and as something else")
    _make_parents(builder, rel)
    os.mkdir(builder.root / rel, 0o755)
    builder.dirs.add(rel)


def _make_room(builder: _Builder, rel: str) -> None:
    """Parents for a new member; a name that appears twice is refused.

    tar's rule is that the last copy wins, but another unpacker (or a reviewer reading the listing)
    may see the first: an archive whose meaning depends on the tool is not unpacked.
    """
    if rel in builder.dirs or rel in builder.symlinks:
        raise UnsafeMember(f"{rel!r} appears twice, once as a folder or symlink")
    if rel in builder.files:
        raise UnsafeMember(f"{rel!r} appears twice (tools disagree on which copy wins)")
    _make_parents(builder, rel)


def _write_file(builder: _Builder, rel: str, source: IO[bytes], mode: int) -> None:
    _make_room(builder, rel)
    target = builder.root / rel
    h = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb", buffering=0) as out:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
        final_mode = READ_ONLY_EXEC if mode & 0o111 else READ_ONLY_FILE
        os.fchmod(out.fileno(), final_mode)
    builder.files[rel] = TreeFile(rel, h.hexdigest(), size, 0o755 if final_mode == READ_ONLY_EXEC else 0o644)


def _make_symlink(builder: _Builder, rel: str, target: str) -> None:
    if not target or "\0" in target:
        raise UnsafeMember(f"symlink {rel!r} has an empty or invalid target")
    if target.startswith("/"):
        raise UnsafeMember(f"symlink {rel!r} points to the absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeMember(f"symlink {rel!r} points outside the tree ({target!r})")
    _make_room(builder, rel)
    if rel in builder.files:
        raise UnsafeMember(f"{rel!r} appears twice, once as a symlink")
    os.symlink(target, builder.root / rel)
    builder.symlinks[rel] = target


def _make_hardlink(builder: _Builder, rel: str, target_name: str) -> None:
    target = safe_name(target_name)
    if target is None or target not in builder.files:
        raise UnsafeMember(f"hard link {rel!r} points to {target_name!r}, which is not a file earlier in the archive")
    _make_room(builder, rel)
    os.link(builder.root / target, builder.root / rel, follow_symlinks=False)
    builder.files[rel] = TreeFile(rel, builder.files[target].sha256, builder.files[target].size,
                                  builder.files[target].mode)


# --- sealing, listing, removal ----------------------------------------------------------------------


def _seal(builder: _Builder) -> None:
    """Make the data durable before the rename publishes it, then make folders read-only."""
    sync_filesystem(builder.root)
    # Deepest first: a read-only folder cannot be changed, including by our own chmods below it.
    for rel in sorted(builder.dirs, key=lambda d: d.count("/"), reverse=True):
        os.chmod(builder.root / rel, READ_ONLY_DIR)
    os.chmod(builder.root, READ_ONLY_DIR)


def sync_filesystem(path: Path) -> None:
    """syncfs(2) on Linux (one call for thousands of files); sync(2) elsewhere."""
    libc_name = ctypes.util.find_library("c")
    syncfs = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _listing(blob: Blob, builder: _Builder) -> dict[str, Any]:
    return {
        "version": LISTING_VERSION,
        "archive": f"{blob.algorithm}:{blob.hexdigest}",
        "archiveSize": blob.size,
        "files": [f.__dict__ for f in sorted(builder.files.values(), key=lambda f: f.path)],
        "symlinks": [{"path": p, "target": t} for p, t in sorted(builder.symlinks.items())],
        "dirs": sorted(builder.dirs),
    }


def check_tree(cache: Cache, algorithm: str, hexdigest: str, hasher: Callable[[Path], str]) -> list[str]:
    """Problems of an unpacked tree against its listing: changed, missing or extra members."""
    root = cache.tree_path(algorithm, hexdigest)
    listing = cache.read_tree_listing(algorithm, hexdigest)
    if listing is None:
        return ["no readable listing"]
    problems: list[str] = []
    expected_files = {f["path"]: f for f in listing.get("files", [])}
    expected_links = {s["path"]: s["target"] for s in listing.get("symlinks", [])}
    expected_dirs = set(listing.get("dirs", []))
    seen: set[str] = set()
    for rel, entry in walk_tree(root):
        seen.add(rel)
        if stat.S_ISLNK(entry.st_mode):
            if expected_links.get(rel) != os.readlink(root / rel):
                problems.append(f"{rel}: unexpected or changed symlink")
        elif stat.S_ISDIR(entry.st_mode):
            if rel not in expected_dirs:
                problems.append(f"{rel}/: unexpected folder")
        elif stat.S_ISREG(entry.st_mode):
            want = expected_files.get(rel)
            if want is None:
                problems.append(f"{rel}: unexpected file")
            elif entry.st_size != want["size"] or hasher(root / rel) != want["sha256"]:
                problems.append(f"{rel}: content changed")
            elif bool(entry.st_mode & 0o111) != bool(int(want.get("mode", 0o644)) & 0o111):
                problems.append(f"{rel}: execute permission changed")
        else:
            problems.append(f"{rel}: unexpected special file")
    for rel in sorted((set(expected_files) | set(expected_links) | expected_dirs) - seen):
        problems.append(f"{rel}: missing")
    return problems


def recheck_tree(cache: Cache, algorithm: str, hexdigest: str, *, verify: bool) -> list[str]:
    """Under the tree's lock, re-hash a tree that lost its fingerprint (or any tree when verify).

    Intact: a fresh fingerprint is recorded and [] returned. Changed: the tree, its listing and its
    fingerprint are removed and the problems returned, so the caller unpacks it again from the blob.
    Gone meanwhile (another process removed it): [].
    """
    with cache.lock(algorithm, hexdigest, "tree"):
        if cache.lookup_tree(algorithm, hexdigest) is None:
            return []
        if not verify and cache.tree_trusted(algorithm, hexdigest):
            return []  # whoever held the lock re-checked it already
        try:
            before = cache.tree_fingerprint(algorithm, hexdigest)
        except OSError:
            before = None
        try:
            problems = check_tree(cache, algorithm, hexdigest, hash_file)
        except OSError as exc:
            problems = [f"unreadable: {exc.strerror or exc}"]
        if problems:
            cache.drop_fingerprint(algorithm, hexdigest, "tree")
            remove_tree(cache.tree_path(algorithm, hexdigest))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cache.tree_listing_path(algorithm, hexdigest))
            return problems
        # Blessed only when nothing changed while the files were read.
        with contextlib.suppress(OSError):
            if before is not None and cache.tree_fingerprint(algorithm, hexdigest) == before:
                cache.write_fingerprint(algorithm, hexdigest, "tree", before)
        return []


def remove_tree(path: Path) -> None:
    """Delete a read-only tree (folders are 0555, so make them writable on the way down)."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        # Top-down: each folder is made writable before its entries are listed and removed.
        for folder, _, _ in os.walk(path):
            os.chmod(folder, 0o755)
        shutil.rmtree(path)
    else:
        os.unlink(path)
