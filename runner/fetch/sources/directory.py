"""A directory dataset: a local folder, an http(s) base URL or an S3 prefix, pinned by one tree digest.

A local folder is copied in whole (its digest is computed while copying). A remote one carries its
listing beside the data (`<base>/.xrun-tree.json`, written by `xrun data digest DIR --write`): the
listing must hash to the pinned tree digest, then each file is fetched and verified by its sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from runner.errors import FetchError, IntegrityError, UsageError
from runner.fetch.cache import Cache
from runner.fetch.interface import PermanentError, TransientError
from runner.fetch.registry import Fetchers, SourceError, parse_source
from runner.fetch.sources.interface import DataSource, FileRequest, Resolved, SourceEnv
from runner.fetch.sources.listing import LISTING_NAME, MAX_LISTING_BYTES, ListedFile, parse_listing, tree_digest
from runner.manifest import DirectorySpec


class DirectorySource(DataSource):
    """`data[].directory`."""

    kind = "directory"

    def __init__(self, name: str, spec: DirectorySpec, root: Path) -> None:
        self.name, self.spec, self.root = name, spec, root
        self.scheme = urlsplit(spec.uri).scheme.lower()
        self.local = len(self.scheme) <= 1 or self.scheme == "file"

    def describe(self) -> dict[str, Any]:
        """Kind, URI and the tree digest (null: a local folder hashed at fetch time)."""
        return {"kind": self.kind, "uri": self.spec.uri,
                "treeDigest": f"sha256:{self.spec.tree_digest}" if self.spec.tree_digest else None}

    def known_result(self, cache: Cache) -> tuple[str, str] | None:
        """The pinned tree digest."""
        return ("tree", self.spec.tree_digest) if self.spec.tree_digest else None

    def resolve(self, env: SourceEnv) -> Resolved:
        """A local folder to copy in, or the files of the remote listing."""
        if self.local:
            folder = self._local_folder()
            expected: tuple[ListedFile, ...] = ()
            listing = folder / LISTING_NAME
            if listing.is_file():
                expected = tuple(parse_listing(listing.read_bytes(), str(listing)))
            return Resolved(uri=self.spec.uri, single_file=False, local_root=folder, tree_digest=self.spec.tree_digest,
                            expected=expected)
        base = self.spec.uri if self.spec.uri.endswith("/") else self.spec.uri + "/"
        listing_uri = base + LISTING_NAME
        files = parse_listing(read_small(listing_uri, env.fetchers, self.name), listing_uri)
        actual = tree_digest(files)
        if actual != self.spec.tree_digest:
            raise IntegrityError(f"{self.name}: {listing_uri}: the listing's tree digest is sha256:{actual}, the "
                                 f"manifest pins sha256:{self.spec.tree_digest}; the dataset changed: check it, and "
                                 "update directory.treeDigest only if you trust the new content")
        requests = tuple(FileRequest(path=f.path, uri=base + quote(f.path), digests={"sha256": f.sha256}, size=f.size)
                         for f in files)
        return Resolved(uri=self.spec.uri, single_file=False, requests=requests, tree_digest=self.spec.tree_digest,
                        expected=tuple(files))

    def _local_folder(self) -> Path:
        parts = urlsplit(self.spec.uri)
        text = unquote(parts.path) if self.scheme == "file" else self.spec.uri
        path = Path(text).expanduser()
        folder = path if path.is_absolute() else self.root / path
        if not folder.is_dir():
            raise UsageError(f"{self.name}: {self.spec.uri}: no such folder ({folder}); fix directory.uri")
        return folder


def read_small(uri: str, fetchers: Fetchers, name: str, attempts: int = 3) -> bytes:
    """The bytes of a small object (a listing) through the transports, retried on transient faults."""
    try:
        source = parse_source(uri)
    except SourceError as exc:
        raise UsageError(f"{name}: {uri}: {exc}") from None
    last = ""
    for _ in range(attempts):
        try:
            with fetchers.for_source(source).open(source) as stream:
                data = bytearray()
                for chunk in stream.chunks():
                    data += chunk
                    if len(data) > MAX_LISTING_BYTES:
                        raise FetchError(f"{name}: {uri}: larger than {MAX_LISTING_BYTES >> 20} MiB; not a listing")
                return bytes(data)
        except TransientError as exc:
            last = exc.reason
        except PermanentError as exc:
            raise FetchError(f"{name}: {uri}: {exc.reason}; {exc.hint} (a remote directory needs its listing "
                             f"{LISTING_NAME} beside the data: `xrun data digest DIR --write`, then upload it)") from None
    raise FetchError(f"{name}: {uri}: {last}; check the network or the server and run again")
