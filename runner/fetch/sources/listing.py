"""The canonical listing of a directory dataset and its tree digest (docs/data-sources.md).

The listing is one line per regular file, sorted by the UTF-8 bytes of its relative path:

    xrun-tree/v1
    <sha256 hex> <size in bytes> <relative posix path>

and the tree digest is the sha256 of those bytes (every line ends with a newline). Folders are
implied by paths (empty folders are not part of a dataset), modes and times are not recorded.
`.xrun-tree.json` is the same listing as JSON: {"version": 1, "treeDigest": "sha256:…", "files":
[{"path", "size", "sha256"}]}; its own formatting does not matter, only the files it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import IntegrityError, UsageError
from runner.fetch.archive import UnsafeMember, safe_name
from runner.fetch.cache import walk_tree

HEADER = b"xrun-tree/v1\n"
LISTING_NAME = ".xrun-tree.json"
MAX_LISTING_BYTES = 512 << 20  # a listing (or DVC .dir object) is read whole into memory
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class ListedFile:
    """One file of a dataset: relative posix path, size, sha256 hex."""

    path: str
    size: int
    sha256: str


def canonical_bytes(files: Iterable[ListedFile]) -> bytes:
    """The canonical listing: the header, then one line per file sorted by path bytes."""
    ordered = sorted(files, key=lambda f: f.path.encode("utf-8", "surrogateescape"))
    lines = [f"{f.sha256} {f.size} {f.path}\n".encode("utf-8", "surrogateescape") for f in ordered]
    return HEADER + b"".join(lines)


def tree_digest(files: Iterable[ListedFile]) -> str:
    """sha256 hex of the canonical listing."""
    return hashlib.sha256(canonical_bytes(files)).hexdigest()


def listing_json(files: Iterable[ListedFile]) -> dict[str, Any]:
    """The listing as `.xrun-tree.json` holds it."""
    ordered = sorted(files, key=lambda f: f.path.encode("utf-8", "surrogateescape"))
    return {"version": 1, "treeDigest": f"sha256:{tree_digest(ordered)}",
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in ordered]}


def check_paths(files: Iterable[ListedFile], where: str) -> list[ListedFile]:
    """Refuse paths that would escape the tree, repeat, or put a file where a folder must be.

    A listing comes from a remote (a .xrun-tree.json, a DVC .dir object): its names are untrusted.
    """
    out: list[ListedFile] = []
    seen: set[str] = set()
    parents: set[str] = set()
    for f in files:
        try:
            clean = safe_name(f.path)
        except UnsafeMember as exc:
            raise IntegrityError(f"{where}: unsafe path in the listing: {exc}; nothing was fetched") from None
        if clean is None or clean != f.path or "\n" in clean:
            raise IntegrityError(f"{where}: path {f.path!r} in the listing is not a clean relative path; "
                                 "nothing was fetched")
        if clean in seen or clean in parents:
            raise IntegrityError(f"{where}: {clean!r} appears twice in the listing (or as a file and a folder)")
        seen.add(clean)
        parts = clean.split("/")
        for k in range(1, len(parts)):
            parents.add("/".join(parts[:k]))
        out.append(f)
    clash = seen & parents
    if clash:
        raise IntegrityError(f"{where}: {sorted(clash)[0]!r} is both a file and a folder in the listing")
    return out


def parse_listing(data: bytes, where: str) -> list[ListedFile]:
    """The files of a `.xrun-tree.json` (shape checked; the caller compares its tree digest)."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("files"), list):
            raise ValueError("expected {version: 1, files: [...]}")
        files = [ListedFile(str(e["path"]), int(e["size"]), str(e["sha256"]).lower()) for e in doc["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{where}: not a valid {LISTING_NAME} ({exc}); regenerate it with "
                             "`xrun data digest DIR --write`") from None
    except RecursionError:
        raise IntegrityError(f"{where}: not a valid {LISTING_NAME} (nested too deeply); regenerate it with "
                             "`xrun data digest DIR --write`") from None
    for f in files:
        if len(f.sha256) != 64 or not set(f.sha256) <= _HEX or f.size < 0:
            raise IntegrityError(f"{where}: {f.path!r} has a malformed sha256 or size in the listing")
        if f.path == LISTING_NAME:
            raise IntegrityError(f"{where}: the listing names {LISTING_NAME} itself, which is never part of the "
                                 "dataset; regenerate it with `xrun data digest DIR --write`")
    files = check_paths(files, where)
    stated = doc.get("treeDigest")
    if stated is not None and stated != f"sha256:{tree_digest(files)}":
        # The field is informative (the pin is what counts), but a listing that contradicts itself was
        # edited by hand or tampered with: trust none of it.
        raise IntegrityError(f"{where}: the listing's own treeDigest {str(stated)[:80]!r} is not the digest of the "
                             f"files it lists (sha256:{tree_digest(files)}); regenerate it with "
                             "`xrun data digest DIR --write`")
    return files


def scan_directory(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """(relative path, absolute path, stat) of every regular file under root, sorted; no symlinks.

    The listing file at the root is not part of the dataset.
    """
    found: list[tuple[str, Path, os.stat_result]] = []
    for rel, st in walk_tree(root):
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{root / rel}: a directory dataset holds regular files only (this is a symlink "
                             "or special file); copy the target in or remove it")
        if rel != LISTING_NAME:
            found.append((rel, root / rel, st))
    found.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return found


def digest_directory(root: Path) -> list[ListedFile]:
    """Hash every file of a local folder (for `xrun data digest`)."""
    from runner.hashing import hash_files

    if not root.is_dir():
        raise UsageError(f"{root}: no such folder; give the folder of the dataset")
    scanned = scan_directory(root)
    digests = hash_files([(rel, path) for rel, path, _ in scanned])
    return [ListedFile(d.path, d.size, d.sha256) for d in digests]


def write_listing(root: Path, files: list[ListedFile]) -> Path:
    """Write root/.xrun-tree.json atomically (it is not part of the tree it lists)."""
    target = root / LISTING_NAME
    tmp = root / f".{LISTING_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(listing_json(files), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{target}: cannot write: {exc.strerror or exc}; make the folder writable or drop --write") from None
    return target
