"""The fetcher interface (one implementation per URI scheme, driven by one download loop) and its data types.

A fetcher only knows how to open a byte stream at an offset; retries, resume, hashing, the cache
and error messages live in `runner.fetch.download`, so every scheme behaves the same way.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UsageError

CHUNK = 1 << 20  # 1 MiB: large enough that per-chunk Python overhead vanishes next to hashing
VERIFY_ENV = "XRUN_VERIFY_DATA"
MAX_DOWNLOAD_ENV = "XRUN_MAX_DOWNLOAD"
# A download whose size nothing declares (no listing/pointer size, no Content-Length) stops here: a
# server that streams for ever must not fill the disk. Larger than any single file we have seen
# trained on; XRUN_MAX_DOWNLOAD raises (or lowers) it.
DEFAULT_MAX_DOWNLOAD = 64 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def verify_requested(environ: Mapping[str, str]) -> bool:
    """Whether XRUN_VERIFY_DATA (the CI setting of --verify-data) asks to re-hash every cached input."""
    return environ.get(VERIFY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def max_download(environ: Mapping[str, str]) -> int:
    """The cap of a download with no declared size: XRUN_MAX_DOWNLOAD (bytes, or 500M, 64G, 1T), else 64 GiB."""
    value = environ.get(MAX_DOWNLOAD_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_DOWNLOAD
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", value.lower())
    if match is None or int(match[1]) == 0:
        raise UsageError(f"{MAX_DOWNLOAD_ENV}={value!r}: not a size; give bytes or a number with K, M, G or T "
                         "(e.g. 64G)")
    return int(match[1]) * _UNITS[match[2]]


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch: retries, timeouts, parallelism, progress display, and how far to trust the cache."""

    retries: int = 5  # transient retries per item (attempts that made progress do not count)
    backoff_s: float = 0.5  # base of the exponential backoff (with jitter)
    timeout_s: float = 60.0  # connect and read timeout
    parallel: int = 4  # bounded pool for several items
    progress: bool | None = None  # None: auto (a TTY on stderr and not quiet)
    quiet: bool = False
    max_backoff_s: float = 30.0  # cap of one backoff sleep, Retry-After included
    # Re-hash every cache entry used (data, unpacked trees, wheels) instead of trusting its
    # fingerprint: for auditors. Defaults to XRUN_VERIFY_DATA so CI can turn it on for every stage.
    verify: bool = field(default_factory=lambda: verify_requested(os.environ))
    # The most bytes a download with no declared size may bring; None: XRUN_MAX_DOWNLOAD or 64 GiB,
    # read when a download starts (a bad value is then one usage error, not an import failure).
    max_download: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("retries", 0), ("parallel", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"fetch {name} must be ≥ {low}, not {getattr(self, name)}")
        for name in ("backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise UsageError(f"fetch {name} must be ≥ 0, not {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise UsageError(f"fetch timeout must be > 0 seconds, not {self.timeout_s}")


@dataclass(frozen=True)
class FetchedData:
    """One data item ready for the run: what was verified, where it is, where the run sees it."""

    name: str
    uri: str
    algorithm: str  # the digest actually verified (and the cache key)
    hexdigest: str
    host_path: Path  # the cache file, or the unpacked tree folder when unpack
    container_path: str  # "/data/<path>"
    size: int  # bytes of the fetched object (the archive when unpacked)
    unpacked: bool
    cache_hit: bool  # True when nothing was downloaded
    kind: str = "file"  # "file" (a uri item, unpacked or not), "directory", "dvc", "lfs"
    files: int | None = None  # a dataset tree's file count (host_path is then a tree of the cache)

    @property
    def is_tree(self) -> bool:
        """Whether host_path is a tree of the cache (an unpacked archive or a dataset folder)."""
        return self.unpacked or self.files is not None

    @property
    def digest(self) -> str:
        """'algo:hex'."""
        return f"{self.algorithm}:{self.hexdigest}"

    def to_json(self) -> dict[str, Any]:
        """Plain data for `xrun fetch --json`."""
        return {"name": self.name, "uri": self.uri, "digest": {self.algorithm: self.hexdigest},
                "hostPath": str(self.host_path), "containerPath": self.container_path, "size": self.size,
                "unpacked": self.unpacked, "cacheHit": self.cache_hit, "kind": self.kind,
                **({"files": self.files} if self.files is not None else {})}


@dataclass(frozen=True)
class Source:
    """A parsed data location: the URI as written plus what a fetcher needs to open it."""

    uri: str  # as given (recorded in the attestation)
    scheme: str  # "http", "https", "file" or "s3"
    location: str  # URL for http(s), absolute path for file, "bucket/key" for s3
    path: Path | None = None  # file: the resolved absolute path
    bucket: str | None = None  # s3
    key: str | None = None  # s3
    version_id: str | None = None  # s3 ?versionId=
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP request headers (Git LFS actions); never recorded


class TransientError(Exception):
    """A fault worth retrying (reset, timeout, 429, 5xx); `retry_after` is the server's hint."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(Exception):
    """A fault no retry fixes (404, 403, a folder instead of a file); `hint` says what to do."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class RestartNeeded(Exception):
    """The resume point is unusable (the object changed, an odd range): start again from byte 0."""


class RangeNotSatisfiable(RestartNeeded):
    """The resume point is at or past the end (HTTP 416): maybe we already have every byte."""


class Stream(abc.ABC):
    """An open byte stream of one object, starting at `offset`."""

    offset: int = 0  # the first byte this stream delivers; 0 when the source ignored the resume point
    total: int | None = None  # the object's full size when the source says it
    validator: str | None = None  # ETag / Last-Modified: resume only while it stays the same

    @abc.abstractmethod
    def chunks(self) -> Iterator[bytes]:
        """The bytes from `offset` on; raises TransientError when the stream breaks."""

    def close(self) -> None:
        """Release the connection or file."""

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fetcher(abc.ABC):
    """Opens sources of one or more schemes; holds its own connection state (a Session, a client)."""

    resumable: bool = False  # whether open() honours offset > 0 (it may still fall back to 0)

    @abc.abstractmethod
    def open(self, source: Source, *, offset: int = 0, validator: str | None = None) -> Stream:
        """Open the source at `offset` (a resume when > 0, valid only while `validator` matches)."""

    def close(self) -> None:
        """Release pooled connections."""
