"""URI → Source parsing and the set of fetchers (one per scheme) a fetch uses."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from runner.fetch.file import FileFetcher
from runner.fetch.interface import Fetcher, FetchOptions, PermanentError, Source

class SourceError(ValueError):
    """A URI no fetcher can handle (the caller names the item)."""


def parse_source(uri: str, base_dir: Path | None = None) -> Source:
    """Parse a data URI; plain and `file:` relative paths resolve against base_dir (else the cwd)."""
    if not uri or not uri.strip():
        raise SourceError("empty URI; give https://…, s3://…, file://… or a path")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    # One letter is a Windows drive, not a scheme.
    if not scheme or len(scheme) == 1:
        return _file_source(uri, uri, base_dir)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"file URI names host {parts.netloc!r}; use file:///ABSOLUTE/PATH or a relative path")
        return _file_source(uri, unquote(parts.path), base_dir)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise SourceError(f"no host; write it as {scheme}://HOST/PATH")
        return Source(uri=uri, scheme=scheme, location=uri)
    if scheme == "s3":
        if not parts.netloc:
            raise SourceError("no bucket; write it as s3://BUCKET/KEY")
        key = unquote(parts.path.lstrip("/"))
        if not key or key.endswith("/"):
            raise SourceError("names a bucket or a prefix, not an object; write it as s3://BUCKET/KEY")
        query = parse_qs(parts.query)
        version = query.get("versionId", [None])[0]
        return Source(uri=uri, scheme="s3", location=f"{parts.netloc}/{key}", bucket=parts.netloc, key=key,
                      version_id=version)
    raise SourceError(f"scheme {scheme!r} is not supported; use https, http, file, s3 or a path")


def _file_source(uri: str, path_text: str, base_dir: Path | None) -> Source:
    if not path_text:
        raise SourceError("no path; write it as file:///ABSOLUTE/PATH or a relative path")
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    return Source(uri=uri, scheme="file", location=str(path), path=path)


class Fetchers:
    """The fetchers one thread uses, created on first need; close() releases their connections."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._by_scheme: dict[str, Fetcher] = {}

    def for_source(self, source: Source) -> Fetcher:
        """The fetcher for the source's scheme (http and https share one Session)."""
        key = "http" if source.scheme in ("http", "https") else source.scheme
        fetcher = self._by_scheme.get(key)
        if fetcher is None:
            fetcher = self._by_scheme[key] = self._create(key)
        return fetcher

    def _create(self, key: str) -> Fetcher:
        if key == "http":
            from runner.fetch.http import HttpFetcher

            return HttpFetcher(self.options)
        if key == "file":
            return FileFetcher()
        if key == "s3":
            from runner.fetch.s3 import S3Fetcher  # imports boto3 itself, only now

            return S3Fetcher(self.options)
        raise PermanentError(f"no fetcher for {key!r}", "use https, http, file or s3")

    def close(self) -> None:
        """Close every fetcher created."""
        for fetcher in self._by_scheme.values():
            fetcher.close()
        self._by_scheme.clear()
