"""http:// and https:// with one requests Session: streaming, Range resume, honest status mapping."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator

import requests
import urllib3

from runner import __version__
from runner.fetch.interface import (CHUNK, Fetcher, FetchOptions, PermanentError, RangeNotSatisfiable, RestartNeeded,
                                    Source, Stream, TransientError)

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
# Statuses a later attempt can fix: timeouts, throttling and server-side failures.
_TRANSIENT = {408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524, 529}
_NOT_FOUND = {404, 410}
# getaddrinfo's "no such name" (glibc, musl, macOS); "Temporary failure in name resolution" stays transient.
_UNKNOWN_HOST = re.compile(r"Name or service not known|nodename nor servname provided|Name does not resolve|"
                           r"No address associated with hostname")
_DENIED = {401, 403, 407}
# What a stream can raise once the body is flowing: all worth a resume.
STREAM_ERRORS = (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError)


class HttpStream(Stream):
    """A streaming response body read raw (no content decoding: we hash the bytes as served)."""

    def __init__(self, response: requests.Response, offset: int, total: int | None, validator: str | None) -> None:
        self._response = response
        self.offset = offset
        self.total = total
        self.validator = validator

    def chunks(self) -> Iterator[bytes]:
        """The body in chunks of up to 1 MiB; a broken connection becomes TransientError."""
        raw = self._response.raw
        # read1 hands over what has arrived; read(n) would drop up to n bytes when the connection
        # breaks mid-call, and those bytes are what a resume saves. (urllib3 < 2.3 lacks read1.)
        read = getattr(raw, "read1", None) or raw.read
        try:
            while True:
                chunk = read(CHUNK, decode_content=False)
                if not chunk:
                    return
                yield chunk
        except STREAM_ERRORS as exc:
            raise TransientError(_describe(exc)) from None

    def close(self) -> None:
        """Return the connection to the pool (or drop it when the body was not read to the end)."""
        self._response.close()


class HttpFetcher(Fetcher):
    """One requests.Session per fetcher: connection reuse, netrc and proxy settings from the environment."""

    resumable = True

    def __init__(self, options: FetchOptions) -> None:
        self.timeout = options.timeout_s
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"xrun/{__version__}"
        # Retries are ours (with resume and backoff); urllib3's own would hide the faults.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(4, options.parallel),
                                                max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def open(self, source: Source, *, offset: int = 0, validator: str | None = None) -> Stream:
        """GET the URL, from `offset` with Range (and If-Range) when resuming."""
        # identity: the digest is over the bytes of the file, not a transfer-compressed form.
        headers = {**dict(source.headers), "Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        try:
            response = self.session.get(source.location, headers=headers, stream=True,
                                        timeout=(self.timeout, self.timeout), allow_redirects=True)
        except requests.exceptions.SSLError as exc:
            raise PermanentError(f"TLS error: {_describe(exc)}", "check the server's certificate "
                                 "(REQUESTS_CA_BUNDLE names a private CA bundle)") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise PermanentError(f"invalid URL: {exc}", "fix the URI in the manifest") from None
        except requests.exceptions.TooManyRedirects as exc:
            raise PermanentError(f"too many redirects: {exc}", "fix the URI or the server's redirects") from None
        except STREAM_ERRORS as exc:
            if _UNKNOWN_HOST.search(str(exc)):
                raise PermanentError(f"cannot resolve the host name ({_describe(exc)})",
                                     "check the host in the URI (and the DNS settings)") from None
            raise TransientError(_describe(exc)) from None
        try:
            return _stream_for(response, offset)
        except BaseException:
            response.close()
            raise

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()


def _stream_for(response: requests.Response, offset: int) -> HttpStream:
    status = response.status_code
    validator = _validator(response)
    if status == 200:
        return HttpStream(response, 0, _content_length(response), validator)
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != offset:
            # A range we did not ask for: cheaper and safer to start over than to splice.
            raise RestartNeeded(f"server answered Range {offset}- with {response.headers.get('Content-Range')!r}")
        total = None if match[3] == "*" else int(match[3])
        return HttpStream(response, offset, total, validator)
    if status == 416:
        raise RangeNotSatisfiable("server says the resume point is past the end (HTTP 416)")
    reason = f"HTTP {status} {response.reason or ''}".rstrip()
    if status in _NOT_FOUND:
        raise PermanentError(f"not found ({reason})", "check the URI in the manifest")
    if status in _DENIED:
        raise PermanentError(f"access denied ({reason})",
                             "check the URI and your credentials (~/.netrc is used for http/https)")
    if status in _TRANSIENT or status >= 500:
        raise TransientError(reason, _retry_after(response.headers.get("Retry-After")))
    raise PermanentError(f"unexpected answer ({reason})", "check the URI in the manifest")


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or "," in value:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _validator(response: requests.Response) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (RFC 9110 §13.1.5)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_INCOMPLETE = re.compile(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)")
# requests/urllib3 nest exception texts several levels deep; the telling phrase is enough.
_REASONS = (("Read timed out", "read timed out"), ("Connection refused", "connection refused"),
            ("Connection reset", "connection reset"), ("RemoteDisconnected", "the server closed the connection"),
            ("Connection aborted", "connection aborted"), ("timed out", "timed out"),
            ("Name or service not known", "name or service not known"),
            ("Temporary failure in name resolution", "temporary failure in name resolution"),
            ("certificate verify failed", "certificate verify failed"))


def _describe(exc: BaseException) -> str:
    """One short line for an exception from requests/urllib3."""
    text = str(exc)
    match = _INCOMPLETE.search(text)
    if match:
        return f"connection closed early ({match[1]} bytes read, {match[2]} more expected)"
    for marker, words in _REASONS:
        if marker in text:
            return words
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."
