"""Text for `xrun plan` and `xrun data digest` (rendering kept apart from the sources)."""

from __future__ import annotations

from typing import Any


def plan_line(source: dict[str, Any]) -> str:
    """One line saying what a source item will fetch: kind, where, and its pin."""
    kind = source.get("kind")
    if kind == "directory":
        pin = (source.get("treeDigest") or "")[:19] or "unpinned: hashed at fetch"
        return f"directory {source['uri']} (tree {pin})"
    if kind == "dvc":
        where = source.get("file") or source.get("lock")
        repo = f" in {source['repo']}@{(source.get('rev') or '')[:12]}" if source.get("repo") else ""
        files = f", {source['nfiles']} files" if source.get("nfiles") is not None else ""
        size = f", {source['size']} bytes" if source.get("size") is not None else ""
        aware = ", version-aware" if source.get("versionAware") else ""
        return f"dvc {source['path']} from {source['remote']} ({where}{repo}, md5 {source['md5'][:12]}{files}{size}{aware})"
    if kind == "lfs":
        return f"lfs {source['url']} (oid sha256:{source['oid'][:12]}, {source['size']} bytes)"
    return str(source)


def digest_text(files: list[Any], written: Any = None) -> str:
    """`xrun data digest` without --json: the digest, the counts, and where the listing was written."""
    from runner.fetch.sources.listing import tree_digest

    line = f"sha256:{tree_digest(files)}  ({len(files)} files, {sum(f.size for f in files)} bytes)"
    return line + (f"\nwrote {written}" if written is not None else "")
