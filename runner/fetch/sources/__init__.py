"""Data sources: directory datasets, DVC-tracked paths and Git LFS objects (one module per kind).

`source_for(item, root)` builds the source of a data item whose `source` spec is set. `interface.py`
owns the DataSource ABC, its request and result types and the cache's alias kinds; `directory.py`,
`dvc.py` and `gitlfs.py` are the kinds; `listing.py` is the canonical listing and tree digest of a
dataset; `tree.py` fetches a source's files through the cache's transports and mounts them as one
read-only tree; `render.py` is their text for `xrun plan` and `xrun data digest`.
"""

from __future__ import annotations

from pathlib import Path

from runner.fetch.sources.interface import DataSource, FileRequest, Resolved, SourceEnv
from runner.manifest import DataItem, DirectorySpec, DvcSpec, LfsSpec

__all__ = ["DataSource", "FileRequest", "Resolved", "SourceEnv", "source_for"]


def source_for(item: DataItem, root: Path) -> DataSource:
    """The source for a directory, dvc or lfs item; `root` is the manifest's folder."""
    spec = item.source
    if isinstance(spec, DirectorySpec):
        from runner.fetch.sources.directory import DirectorySource

        return DirectorySource(item.name, spec, root)
    if isinstance(spec, DvcSpec):
        from runner.fetch.sources.dvc import DvcSource

        return DvcSource(item.name, spec, root)
    if isinstance(spec, LfsSpec):
        from runner.fetch.sources.gitlfs import LfsSource

        return LfsSource(item.name, spec, root)
    raise AssertionError(f"data item {item.name!r} has no source spec")
