"""s3:// with boto3 (the optional extra `xrun[s3]`, imported only when an s3:// item is fetched).

Credentials, region and profile come from the usual AWS environment and files; the endpoint from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (S3-compatible stores: MinIO, Ceph, moto). Without any
credentials, requests go unsigned, which is what public buckets want. `?versionId=` pins a version.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from runner.fetch.interface import (CHUNK, Fetcher, FetchOptions, PermanentError, RangeNotSatisfiable, RestartNeeded,
                                    Source, Stream, TransientError)

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "ExpiredToken", "InvalidToken", "AccountProblem"}
_TRANSIENT = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
              "ThrottlingException", "RequestTimeTooSkewed", "500", "502", "503", "504"}


def endpoint_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else None (AWS itself)."""
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


class S3Stream(Stream):
    """A GetObject body, read as it arrives."""

    def __init__(self, body: Any, offset: int, total: int | None, validator: str | None,
                 errors: tuple[type[BaseException], ...]) -> None:
        self._body = body
        self._errors = errors
        self.offset = offset
        self.total = total
        self.validator = validator

    def chunks(self) -> Iterator[bytes]:
        """The object's bytes; a broken stream becomes TransientError (the loop resumes it)."""
        # botocore's StreamingBody.read(n) drops what it read when the connection breaks mid-call;
        # its urllib3 response's read1 hands over what arrived (our own length check replaces its).
        raw = getattr(self._body, "_raw_stream", None)
        read = getattr(raw, "read1", None) or self._body.read
        try:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    return
                yield chunk
        except self._errors as exc:
            raise TransientError(f"S3 stream broke: {exc}") from None

    def close(self) -> None:
        """Release the connection."""
        self._body.close()


class S3Fetcher(Fetcher):
    """One boto3 S3 client per fetcher; retries are left to the shared download loop."""

    resumable = True

    def __init__(self, options: FetchOptions, environ: Mapping[str, str] = os.environ) -> None:
        try:
            import boto3
            import botocore
            import botocore.config
            import botocore.exceptions
            import urllib3
        except ImportError:
            raise PermanentError("s3:// needs boto3, which is not installed",
                                 "install it with: pip install 'xrun[s3]'") from None
        self._botocore = botocore
        session = boto3.session.Session()
        endpoint = endpoint_url(environ)
        settings: dict[str, Any] = {
            "connect_timeout": options.timeout_s, "read_timeout": options.timeout_s,
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "max_pool_connections": max(10, options.parallel),
        }
        if session.get_credentials() is None:
            settings["signature_version"] = botocore.UNSIGNED  # public buckets need no keys
        if endpoint:
            # S3-compatible servers on an IP or a single host name cannot do virtual-hosted buckets.
            settings["s3"] = {"addressing_style": "path"}
        self._client = session.client("s3", endpoint_url=endpoint, config=botocore.config.Config(**settings))
        self._stream_errors: tuple[type[BaseException], ...] = (
            botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError)

    def open(self, source: Source, *, offset: int = 0, validator: str | None = None) -> Stream:
        """GetObject, with Range (and If-Match, so a changed object restarts) when resuming."""
        exceptions = self._botocore.exceptions
        request: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
        if source.version_id:
            request["VersionId"] = source.version_id
        if offset > 0:
            request["Range"] = f"bytes={offset}-"
            if validator:
                request["IfMatch"] = validator
        try:
            response = self._client.get_object(**request)
        except exceptions.ClientError as exc:
            raise _client_error(exc) from None
        except (exceptions.NoCredentialsError, exceptions.PartialCredentialsError) as exc:
            raise PermanentError(f"no usable AWS credentials: {exc}",
                                 "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
        except exceptions.ParamValidationError as exc:
            raise PermanentError(f"invalid S3 request: {exc}", "fix the bucket or key in the URI") from None
        except self._stream_errors as exc:
            raise TransientError(f"S3 request failed: {exc}") from None
        body = response["Body"]
        try:
            return self._stream(response, body, offset)
        except BaseException:
            body.close()
            raise

    def _stream(self, response: Mapping[str, Any], body: Any, offset: int) -> S3Stream:
        content_range = response.get("ContentRange")
        validator = response.get("ETag")
        if content_range:
            match = _CONTENT_RANGE.match(content_range)
            if not match or int(match[1]) != offset:
                raise RestartNeeded(f"S3 answered Range {offset}- with {content_range!r}")
            total = None if match[3] == "*" else int(match[3])
            return S3Stream(body, offset, total, validator, self._stream_errors)
        return S3Stream(body, 0, response.get("ContentLength"), validator, self._stream_errors)

    def close(self) -> None:
        """Close the client's connection pool."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


def _client_error(exc: Any) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    what = f"S3 {code or status}" + (f": {error['Message']}" if error.get("Message") else "")
    if code in _NOT_FOUND or status == 404:
        return PermanentError(f"not found ({what})", "check the bucket, the key and the versionId in the URI")
    if code in _DENIED or status == 403:
        return PermanentError(f"access denied ({what})",
                              "check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) "
                              "and the bucket policy")
    if code == "InvalidRange" or status == 416:
        return RangeNotSatisfiable(what)
    if code == "PreconditionFailed" or status == 412:
        return RestartNeeded(f"the object changed during the download ({what})")
    if code in _TRANSIENT or (isinstance(status, int) and status >= 500) or status == 429:
        return TransientError(what)
    return PermanentError(f"S3 refused the request ({what})", "check the URI and the credentials")
