"""The data-source interface: a source turns a data item into transport requests and a digest.

A source is not a transport: it reads the metadata of where users keep data (a listing beside a
folder, DVC's .dvc/dvc.lock and .dir objects, Git LFS's batch API) and says which files to fetch
through the file/http/s3 fetchers, with what digest each is verified. `runner.fetch.sources.tree`
fetches them into the content-addressed cache and mounts the result as one read-only folder (or file).
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.fetch.cache import Cache
from runner.fetch.interface import FetchOptions
from runner.fetch.progress import Reporter
from runner.fetch.registry import Fetchers
from runner.fetch.sources.listing import ListedFile

ALIAS_KIND = "sha256"  # state/<algo>/<ab>/<hex>.sha256 holds the sha256 of the content an md5 names
DIR_ALIAS_KIND = "dvc-tree"


@dataclass(frozen=True)
class FileRequest:
    """One file of a dataset as a transport request: where it is and what verifies its bytes."""

    path: str  # relative path in the dataset ("" for a single-file item)
    uri: str  # a file/http(s)/s3 URI for the transports
    digests: dict[str, str] = field(hash=False)  # checked while streaming: sha256, or DVC's md5
    size: int | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers (LFS actions); never recorded


@dataclass(frozen=True)
class Resolved:
    """What a source found: the files to fetch and the digest the result must have (when pinned)."""

    uri: str  # what the attestation records as the item's location (no credentials)
    single_file: bool  # mount one file instead of a folder
    requests: tuple[FileRequest, ...] = ()
    local_root: Path | None = None  # a local folder to copy in whole (its files' digests are not known yet)
    tree_digest: str | None = None  # the sha256 the tree (or the single file) must have, when pinned
    expected: tuple[ListedFile, ...] = ()  # the listing the result must match, to name a changed file
    alias: tuple[str, str] | None = None  # (algo, hex) that names the content before sha256 is known (DVC md5)
    pin: str = "the manifest"  # where the user updates the pin when the data changed (in messages)


@dataclass(frozen=True)
class SourceEnv:
    """What resolving needs: the cache, this thread's fetchers, progress, the stop signal, the manifest folder."""

    cache: Cache
    options: FetchOptions
    fetchers: Fetchers
    reporter: Reporter
    cancel: threading.Event
    root: Path


class DataSource(abc.ABC):
    """One kind of data location (directory, dvc, lfs); built from a DataItem's source spec."""

    kind: str = ""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What `xrun plan` shows and the plan digest covers: the kind, where, and the pins (camelCase)."""

    def known_result(self, cache: Cache) -> tuple[str, str] | None:
        """(algo, hex) of the result when known without I/O beyond the cache: the fast path of a warm run."""
        return None

    @abc.abstractmethod
    def resolve(self, env: SourceEnv) -> Resolved:
        """Read the source's metadata (listing, .dir object, batch API) into file requests."""
