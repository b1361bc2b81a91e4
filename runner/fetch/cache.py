"""The content-addressed cache: verified blobs, unpacked trees, per-blob locks and usage markers.

Layout under the root (`XRUN_CACHE_DIR`, else `$XDG_CACHE_HOME/xrun`, else `~/.cache/xrun`):

    blobs/<algo>/<ab>/<hex>             a verified entry, read-only (0444)
    blobs/<algo>/<ab>/.<hex>.partial    a download in progress (resumable); never an entry
    trees/<algo>/<ab>/<hex>/            an unpacked archive (files 0444, folders 0555)
    trees/<algo>/<ab>/<hex>.json        its listing (what `verify` checks the tree against)
    trees/<algo>/<ab>/.tmp-<hex>-*      an unpack in progress
    tmp/xrun-<purpose>-<host>-<pid>-*   a build, rebuild or export in progress, named for its process:
                                        one whose process on this host is gone is removed by the next
                                        build and by `xrun cache gc` (a SIGKILL cannot clean up)
    locks/entries.lock                  one file of byte-range locks: one writer per blob or tree
                                        (Linux OFD locks; elsewhere one flock(2) file per entry:
    locks/<algo>/<ab>/<hex>.<purpose>    these), so a cold fetch creates no lock file per blob
    used/<algo>/<ab>/<hex>              usage marker: its mtime is the last run that used the entry
    state/<algo>/<ab>/<hex>.blob        fingerprint of the blob taken when its bytes were last verified
    state/<algo>/<ab>/<hex>.tree        the same for an unpacked tree (all its members and its listing)

An entry exists if and only if its final path exists: everything is written elsewhere in the same
folder and renamed into place after verification. An entry is *trusted* only while a stat of it
still equals the fingerprint recorded when its bytes were verified (size, mtime, ctime, inode,
device, mode): any write, truncation, replacement or chmod changes ctime or the inode, and neither
can be set back by a user, so a warm hit is one stat plus one small read, and anything else is
re-hashed before it is used (runner.fetch.download, runner.fetch.archive). One limit: before Linux
6.13 (multigrain timestamps) ctime comes from a clock that ticks every 1–10 ms, so a same-size write
within that tick after the fingerprint was taken would keep every field; only a process racing
xrun's commit can hit it, and `--verify-data` re-hashes regardless.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.fetch.digests import ALGORITHMS

READ_ONLY_FILE = 0o444
READ_ONLY_EXEC = 0o555
READ_ONLY_DIR = 0o555
FINGERPRINT_VERSION = "v1"
# Open-file-description locks (Linux ≥ 3.15): per open file, so threads exclude each other too,
# and closing another descriptor of the file does not drop them (unlike POSIX record locks).
HAS_OFD_LOCKS = hasattr(fcntl, "F_OFD_SETLKW")


@dataclass(frozen=True)
class Blob:
    """One verified cache entry; `fetched` is False for a cache hit."""

    algorithm: str
    hexdigest: str
    path: Path
    size: int
    fetched: bool

    @property
    def digest(self) -> str:
        """'algo:hex'."""
        return f"{self.algorithm}:{self.hexdigest}"

    def to_json(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"digest": self.digest, "path": str(self.path), "size": self.size, "fetched": self.fetched}


@dataclass(frozen=True)
class Probe:
    """A blob found in the cache, and whether it is still provably the bytes that were verified."""

    blob: Blob
    trusted: bool  # its live stat equals the recorded fingerprint
    fingerprinted: bool  # a fingerprint was recorded at all (False: made by an older xrun)


@dataclass(frozen=True)
class CacheEntry:
    """One blob or unpacked tree in the cache, for `xrun cache ls` and `gc`."""

    kind: str  # "blob" | "tree"
    algorithm: str
    hexdigest: str
    path: Path
    size: int  # bytes (a tree: the sum of its files, from the listing)
    files: int | None  # a tree's file count
    created: float  # epoch seconds when the entry was committed
    last_used: float  # epoch seconds of the last run that used it (created when never used)

    @property
    def digest(self) -> str:
        """'algo:hex'."""
        return f"{self.algorithm}:{self.hexdigest}"

    def to_json(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"kind": self.kind, "digest": self.digest, "path": str(self.path), "size": self.size,
                "files": self.files, "created": self.created, "lastUsed": self.last_used}


class LockHandle:
    """A held per-entry lock; `unlink()` removes a per-entry lock file safely while held (gc)."""

    def __init__(self, path: Path, fd: int, per_entry_file: bool) -> None:
        self.path = path
        self.fd = fd
        self._per_entry_file = per_entry_file

    def unlink(self) -> None:
        """Remove a per-entry lock file (waiters notice the inode changed); the shared file stays."""
        if self._per_entry_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


@dataclass(frozen=True)
class Cache:
    """A content-addressed store rooted at `root`; safe for concurrent processes and threads."""

    root: Path
    byte_range_locks: bool = field(default=HAS_OFD_LOCKS, compare=False)

    @classmethod
    def default(cls, environ: Mapping[str, str] = os.environ) -> "Cache":
        """XRUN_CACHE_DIR, else $XDG_CACHE_HOME/xrun, else ~/.cache/xrun."""
        if environ.get("XRUN_CACHE_DIR"):
            return cls(Path(environ["XRUN_CACHE_DIR"]).expanduser().absolute())
        xdg = environ.get("XDG_CACHE_HOME", "")
        # The XDG spec says relative values are invalid and must be ignored.
        if xdg and os.path.isabs(xdg):
            return cls(Path(xdg) / "xrun")
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
        return cls(home / ".cache" / "xrun")

    # --- work folders ----------------------------------------------------------------------------------

    def work_dir(self, purpose: str) -> Path:
        """A new private folder under tmp/ for a build (rebuild, export) in progress, named for this process.

        `purpose` is one word ("build", "oci"): the name is parsed back from the right by `work_dirs`.
        """
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"xrun-{purpose}-{_host()}-{os.getpid()}-", dir=tmp))

    def work_dirs(self) -> Iterator[tuple[Path, bool]]:
        """(folder, whether its process is known to be gone) for each folder under tmp/."""
        tmp = self.root / "tmp"
        try:
            with os.scandir(tmp) as it:
                found = [Path(e.path) for e in it if e.name.startswith("xrun-")]
        except FileNotFoundError:
            return
        for path in found:
            yield path, _owner_gone(path.name)

    def remove_stale_work_dirs(self) -> list[Path]:
        """Remove the work folders of processes on this host that are gone; returns them."""
        removed = []
        for path, gone in self.work_dirs():
            if gone:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    # --- paths -------------------------------------------------------------------------------------

    def blob_path(self, algorithm: str, hexdigest: str) -> Path:
        """root/blobs/<algo>/<ab>/<hex>."""
        return self.root / "blobs" / algorithm / hexdigest[:2] / hexdigest

    def partial_path(self, algorithm: str, hexdigest: str) -> Path:
        """The resumable download next to the entry (same folder, so the rename is atomic)."""
        return self.root / "blobs" / algorithm / hexdigest[:2] / f".{hexdigest}.partial"

    def tree_path(self, algorithm: str, hexdigest: str) -> Path:
        """root/trees/<algo>/<ab>/<hex>/: the archive with this digest, unpacked."""
        return self.root / "trees" / algorithm / hexdigest[:2] / hexdigest

    def tree_listing_path(self, algorithm: str, hexdigest: str) -> Path:
        """The JSON listing of a tree's files, written before the tree is renamed into place."""
        return self.root / "trees" / algorithm / hexdigest[:2] / f"{hexdigest}.json"

    def write_tree_listing(self, algorithm: str, hexdigest: str, listing: dict[str, Any]) -> None:
        """A tree's listing written durably (fsynced, then renamed) before the tree itself is renamed."""
        path = self.tree_listing_path(algorithm, hexdigest)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(listing, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read_tree_listing(self, algorithm: str, hexdigest: str) -> dict[str, Any] | None:
        """The listing written when the tree was made (None when missing or unreadable): the one reader."""
        try:
            value = json.loads(self.tree_listing_path(algorithm, hexdigest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def marker_path(self, algorithm: str, hexdigest: str) -> Path:
        """The usage marker whose mtime says when a run last used the entry."""
        return self.root / "used" / algorithm / hexdigest[:2] / hexdigest

    def state_path(self, algorithm: str, hexdigest: str, kind: str) -> Path:
        """The fingerprint of a blob (kind 'blob') or an unpacked tree ('tree')."""
        return self.root / "state" / algorithm / hexdigest[:2] / f"{hexdigest}.{kind}"

    def lock_path(self, algorithm: str, hexdigest: str, purpose: str = "blob") -> Path:
        """The flock file guarding one blob (purpose 'blob') or its tree ('tree')."""
        return self.root / "locks" / algorithm / hexdigest[:2] / f"{hexdigest}.{purpose}"

    # --- lookups (stat only) -----------------------------------------------------------------------

    def lookup(self, algorithm: str, hexdigest: str) -> Blob | None:
        """The entry when present: one stat of its content-addressed path, no open, no read."""
        found = self._stat_blob(algorithm, hexdigest)
        return found[0] if found else None

    def _stat_blob(self, algorithm: str, hexdigest: str) -> tuple[Blob, os.stat_result] | None:
        path = self.blob_path(algorithm, hexdigest)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return Blob(algorithm, hexdigest, path, st.st_size, fetched=False), st

    def lookup_tree(self, algorithm: str, hexdigest: str) -> Path | None:
        """The unpacked tree when present: one stat."""
        path = self.tree_path(algorithm, hexdigest)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return path if stat.S_ISDIR(st.st_mode) else None

    def probe(self, algorithm: str, hexdigest: str) -> Probe | None:
        """The blob when present, and whether its stat still equals its fingerprint: one stat, one small read."""
        found = self._stat_blob(algorithm, hexdigest)
        if found is None:
            return None
        blob, st = found
        recorded = self.read_fingerprint(algorithm, hexdigest, "blob")
        return Probe(blob, trusted=recorded == file_fingerprint(st), fingerprinted=recorded is not None)

    def tree_trusted(self, algorithm: str, hexdigest: str) -> bool:
        """Whether every member of the tree (and its listing) still has the stat recorded at verification."""
        recorded = self.read_fingerprint(algorithm, hexdigest, "tree")
        if recorded is None:
            return False
        try:
            return self.tree_fingerprint(algorithm, hexdigest) == recorded
        except OSError:
            return False

    # --- fingerprints ------------------------------------------------------------------------------

    def tree_fingerprint(self, algorithm: str, hexdigest: str) -> str:
        """One stat per member of the tree plus its listing, folded into a sha256 (no file is read)."""
        root = self.tree_path(algorithm, hexdigest)
        head = (f"listing {file_fingerprint(os.stat(self.tree_listing_path(algorithm, hexdigest)))}"
                f"\n. {file_fingerprint(os.lstat(root))}")
        # One string, encoded and hashed once: a call per member cost as much as its lstat.
        # The fields are file_fingerprint's, inlined for the same reason.
        members = "".join(
            f"\n{rel}\0{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}:{st.st_mode:o}"
            for rel, st in sorted(walk_tree(root), key=_first))
        return hashlib.sha256((head + members).encode("utf-8", "surrogateescape")).hexdigest()

    def read_fingerprint(self, algorithm: str, hexdigest: str, kind: str) -> str | None:
        """The fingerprint recorded when the entry was last verified (None when there is none)."""
        try:
            with open(self.state_path(algorithm, hexdigest, kind), "rb") as f:
                text = f.read(512).decode("ascii", "replace")
        except OSError:  # missing, or unreadable: either way nothing vouches for the entry
            return None
        version, _, value = text.strip().partition(" ")
        return value if version == FINGERPRINT_VERSION else None

    def write_fingerprint(self, algorithm: str, hexdigest: str, kind: str, fingerprint: str) -> None:
        """Record a verified entry's fingerprint atomically (best effort: without one it is re-hashed)."""
        path = self.state_path(algorithm, hexdigest, kind)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{FINGERPRINT_VERSION} {fingerprint}\n".encode())
            finally:
                os.close(fd)
            # No fsync: a fingerprint lost in a crash only costs one re-hash, never trust.
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def drop_fingerprint(self, algorithm: str, hexdigest: str, kind: str) -> None:
        """Forget an entry's fingerprint (the entry is being removed or is no longer trusted)."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self.state_path(algorithm, hexdigest, kind))

    def record_blob(self, algorithm: str, hexdigest: str) -> None:
        """Fingerprint a blob whose bytes were just verified, as it is now at its final path."""
        with contextlib.suppress(OSError):
            st = os.stat(self.blob_path(algorithm, hexdigest))
            self.write_fingerprint(algorithm, hexdigest, "blob", file_fingerprint(st))

    def record_tree(self, algorithm: str, hexdigest: str) -> None:
        """Fingerprint a tree whose files were just verified (after its rename: a rename changes ctime)."""
        with contextlib.suppress(OSError):
            self.write_fingerprint(algorithm, hexdigest, "tree", self.tree_fingerprint(algorithm, hexdigest))

    def rehash_blob(self, blob: Blob) -> bool:
        """Re-hash a blob; when it still matches its digest, make it read-only again and fingerprint it.

        The stat is taken before and after the hash and recorded only when both agree, so a write
        racing the hash is never blessed. Unreadable counts as not matching.
        """
        try:
            if stat.S_IMODE(os.stat(blob.path).st_mode) & 0o222:
                # A cache entry is read-only; a user's chmod is undone (not ours to undo in a shared cache).
                with contextlib.suppress(PermissionError):
                    os.chmod(blob.path, READ_ONLY_FILE)
            before = os.stat(blob.path)
            if hash_file(blob.path, blob.algorithm) != blob.hexdigest:
                return False
            after = os.stat(blob.path)
        except OSError:
            return False
        if file_fingerprint(before) == file_fingerprint(after):
            self.write_fingerprint(blob.algorithm, blob.hexdigest, "blob", file_fingerprint(after))
        return True

    def remove_blob(self, algorithm: str, hexdigest: str) -> None:
        """Delete a blob and its fingerprint (the caller holds the blob's lock)."""
        self.drop_fingerprint(algorithm, hexdigest, "blob")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(algorithm, hexdigest))

    # --- usage -------------------------------------------------------------------------------------

    def mark_used(self, algorithm: str, hexdigest: str, when: float | None = None) -> None:
        """Record that a run used the entry (touch its marker; the entry itself is not touched)."""
        marker = self.marker_path(algorithm, hexdigest)
        times = None if when is None else (when, when)
        try:
            os.utime(marker, times)
        except FileNotFoundError:
            marker.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            if times is not None:
                os.utime(marker, times)

    def last_used(self, algorithm: str, hexdigest: str) -> float | None:
        """When a run last used the entry (None when no run recorded a use)."""
        try:
            return os.stat(self.marker_path(algorithm, hexdigest)).st_mtime
        except FileNotFoundError:
            return None

    # --- locking -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, algorithm: str, hexdigest: str, purpose: str = "blob",
             on_wait: Callable[[], None] | None = None) -> Iterator[LockHandle]:
        """Hold an exclusive lock for one entry; `on_wait` is called once if another holder blocks us."""
        if self.byte_range_locks:
            path = self.root / "locks" / "entries.lock"
            fd = _open_creating_parents(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
            try:
                _lock_range(fd, _lock_offset(algorithm, hexdigest, purpose), on_wait)
            except BaseException:
                os.close(fd)
                raise
        else:
            path = self.lock_path(algorithm, hexdigest, purpose)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _acquire(path, on_wait)
        try:
            yield LockHandle(path, fd, per_entry_file=not self.byte_range_locks)
        finally:
            os.close(fd)  # releases either kind of lock

    @contextlib.contextmanager
    def entry_locks(self) -> Iterator["EntryLocks"]:
        """Many entry locks through one open lock file (a bulk ingest takes thousands, one at a time)."""
        fd = None
        if self.byte_range_locks:
            fd = _open_creating_parents(self.root / "locks" / "entries.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            yield EntryLocks(self, fd)
        finally:
            if fd is not None:
                os.close(fd)  # releases any range still held

    # --- writing -----------------------------------------------------------------------------------

    def commit_blob(self, partial: Path, algorithm: str, hexdigest: str) -> Path:
        """Make a verified, read-only, fsynced partial file the entry: renamed into place."""
        final = self.blob_path(algorithm, hexdigest)
        # The data was fsynced before the rename, so after a crash the entry is either complete or
        # absent (then fetched again); fsyncing the folder too would only make "absent" rarer.
        os.replace(partial, final)
        # The fingerprint is taken at the final path, after the chmod and the rename (both change ctime).
        self.record_blob(algorithm, hexdigest)
        return final

    # --- enumeration -------------------------------------------------------------------------------

    def entries(self) -> Iterator[CacheEntry]:
        """Every blob and tree (partials, temporary folders and listings are not entries)."""
        for kind in ("blob", "tree"):
            base = self.root / ("blobs" if kind == "blob" else "trees")
            for algorithm, hexdigest, path, st in _scan(base, want_dir=kind == "tree"):
                size, files = st.st_size, None
                if kind == "tree":
                    size, files = self._tree_size(algorithm, hexdigest)
                used = self.last_used(algorithm, hexdigest)
                yield CacheEntry(kind, algorithm, hexdigest, path, size, files, st.st_mtime,
                                 max(used, st.st_mtime) if used is not None else st.st_mtime)

    def _tree_size(self, algorithm: str, hexdigest: str) -> tuple[int, int | None]:
        listing = self.read_tree_listing(algorithm, hexdigest)
        if listing is None:
            return 0, None
        files = listing.get("files", [])
        return sum(int(f.get("size", 0)) for f in files), len(files)

    def leftovers(self) -> Iterator[Path]:
        """Partial downloads and unfinished unpacks (gc removes the stale ones; killed builds' folders: work_dirs)."""
        for base in (self.root / "blobs", self.root / "trees"):
            if not base.is_dir():
                continue
            for algo_dir in _subdirs(base):
                for fan in _subdirs(algo_dir):
                    with os.scandir(fan) as it:
                        for entry in it:
                            if entry.name.endswith(".partial") or entry.name.startswith(".tmp-"):
                                yield Path(entry.path)


class EntryLocks:
    """Per-entry locks taken one at a time through one shared descriptor (see `Cache.entry_locks`).

    Each `hold` locks one byte of the shared lock file and unlocks it on exit, so a bulk ingest holds
    at most one entry lock at a time (no lock-order deadlock) without an open(2) per entry. Without
    OFD locks it falls back to `Cache.lock` (one flock file per entry).
    """

    def __init__(self, cache: Cache, fd: int | None) -> None:
        self._cache = cache
        self._fd = fd

    @contextlib.contextmanager
    def hold(self, algorithm: str, hexdigest: str, purpose: str = "blob") -> Iterator[None]:
        """Hold the entry's exclusive lock for the block."""
        if self._fd is None:
            with self._cache.lock(algorithm, hexdigest, purpose):
                yield
            return
        offset = _lock_offset(algorithm, hexdigest, purpose)
        _lock_range(self._fd, offset, None)
        try:
            yield
        finally:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0))


def file_fingerprint(st: os.stat_result) -> str:
    """What a stat says about one file: size, mtime, ctime, inode, device and mode (never atime)."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}:{st.st_mode:o}"


def _first(item: tuple[str, os.stat_result]) -> str:
    return item[0]


def hash_file(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file in any of the cache's algorithms, read once in large chunks."""
    with open(path, "rb", buffering=0) as f:
        if hasattr(hashlib, "file_digest"):  # Python ≥ 3.11: hashes without the GIL in C
            return hashlib.file_digest(f, algorithm).hexdigest()
        h = hashlib.new(algorithm)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under root, folders included; links are not followed."""
    # Folders are scanned through descriptors: each member's lstat is then an fstatat relative to
    # its folder, with no lookup of the whole path again (the warm check is one of these per member).
    stack = [("", os.open(root, _DIR_FLAGS & ~_NOFOLLOW))]  # the root itself may be a link to a folder
    try:
        while stack:
            prefix, fd = stack.pop()
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        rel = f"{prefix}/{entry.name}" if prefix else entry.name
                        st = entry.stat(follow_symlinks=False)
                        yield rel, st
                        if stat.S_ISDIR(st.st_mode):
                            stack.append((rel, os.open(entry.name, _DIR_FLAGS, dir_fd=fd)))
            finally:
                os.close(fd)
    finally:
        for _, fd in stack:  # the walk was abandoned (an error, or the caller stopped early)
            os.close(fd)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | _NOFOLLOW


def _open_creating_parents(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def _lock_offset(algorithm: str, hexdigest: str, purpose: str) -> int:
    """A byte of the shared lock file that stands for one entry (56 bits: collisions are negligible)."""
    return int.from_bytes(hashlib.sha256(f"{purpose}:{algorithm}:{hexdigest}".encode()).digest()[:7], "big")


def _lock_range(fd: int, offset: int, on_wait: Callable[[], None] | None) -> None:
    """Exclusive OFD lock on one byte at offset; blocks, calling on_wait first if it has to."""
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (must be 0 for OFD locks), padding.
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
        return
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
    if on_wait is not None:
        on_wait()
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, request)


def _acquire(path: Path, on_wait: Callable[[], None] | None) -> int:
    """flock the file at path, retrying when gc unlinked it between our open and our lock."""
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _scan(base: Path, *, want_dir: bool) -> Iterator[tuple[str, str, Path, os.stat_result]]:
    """(algo, hex, path, stat) of every well-named entry under blobs/ or trees/."""
    for algo_dir in _subdirs(base):
        algorithm = algo_dir.name
        length = ALGORITHMS.get(algorithm)
        if length is None:
            continue
        for fan in _subdirs(algo_dir):
            with os.scandir(fan) as it:
                names = sorted(it, key=lambda e: e.name)
            for entry in names:
                name = entry.name
                if len(name) != length or not name.startswith(fan.name) or not _is_hex(name):
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir != want_dir or (not want_dir and not entry.is_file(follow_symlinks=False)):
                    continue
                yield algorithm, name, Path(entry.path), entry.stat(follow_symlinks=False)


def _is_hex(name: str) -> bool:
    return all(c in "0123456789abcdef" for c in name)


SYNC_FILE_RANGE_WRITE = 2


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Callable[..., int] | None:
    """libc's sync_file_range(2) (Linux), or None; looked up once."""
    name = ctypes.util.find_library("c")
    func = getattr(ctypes.CDLL(name, use_errno=True), "sync_file_range", None) if name else None
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        func.restype = ctypes.c_int
    return func


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting.

    A large download then reaches the disk while it streams, and the fsync before the rename
    waits only for the tail instead of the whole file (best effort; a no-op off Linux).
    """
    func = _sync_file_range()
    if func is not None:
        func(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    """This host's name as a file-name part ('-' kept: the pid is found from the right)."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname()) or "host"


def _owner_gone(name: str) -> bool:
    """Whether a work folder's process (xrun-<purpose>-<host>-<pid>-<random>) ran here and has exited.

    A folder of another host (a shared cache) or with an older name is never "gone": gc removes it by age.
    """
    head, _, _ = name.rpartition("-")
    rest, _, pid_text = head.rpartition("-")
    parts = rest.split("-", 2)  # xrun, the purpose (one word), the host
    if not pid_text.isdigit() or len(parts) != 3 or parts[2] != _host():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
