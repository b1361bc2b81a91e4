"""A Git LFS object: by oid (its sha256) and size from an LFS server, or by a pointer file in the code tree.

The batch API (`POST <lfs url>/objects/batch`, operation download, transfer basic) answers with an
href (and headers) per object; the bytes come through the http transport, verified by the oid like
any sha256 item, and it must be exactly the pointer's `size` bytes (a longer stream is cut there). Only
http(s) links are followed. Credentials come from the environment only: XRUN_LFS_TOKEN (sent as a Bearer
token), or XRUN_LFS_USER + XRUN_LFS_PASSWORD (basic), or ~/.netrc; none is ever recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runner.errors import FetchError, IntegrityError, UsageError
from runner.fetch.cache import Cache
from runner.fetch.sources.interface import DataSource, FileRequest, Resolved, SourceEnv
from runner.manifest import LfsSpec

TOKEN_ENV = "XRUN_LFS_TOKEN"
USER_ENV, PASSWORD_ENV = "XRUN_LFS_USER", "XRUN_LFS_PASSWORD"
MEDIA = "application/vnd.git-lfs+json"
MAX_BATCH_BYTES = 16 << 20  # a batch answer for one object is a few hundred bytes
_POINTER_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.M)
_POINTER_SIZE = re.compile(rb"^size (\d+)$", re.M)
_LFS_URL = re.compile(r"^\s*url\s*=\s*(\S+)\s*$", re.M)


class LfsSource(DataSource):
    """`data[].lfs`."""

    kind = "lfs"

    def __init__(self, name: str, spec: LfsSpec, root: Path, environ: Mapping[str, str] = os.environ) -> None:
        self.name, self.spec, self.root, self.environ = name, spec, root, environ
        self._object: tuple[str, int, str] | None = None

    def object(self) -> tuple[str, int, str]:
        """(oid, size, LFS URL), from the manifest or the pointer file and .lfsconfig."""
        if self._object is None:
            if self.spec.pointer:
                oid, size = read_pointer(self.name, self.root / self.spec.pointer)
                url = self.spec.url or lfs_url_from_config(self.name, self.root / self.spec.pointer, self.root)
            else:
                oid, size, url = str(self.spec.oid), int(self.spec.size or 0), str(self.spec.url)
            self._object = (oid, size, url.rstrip("/"))
        return self._object

    def describe(self) -> dict[str, Any]:
        """Kind, server URL, oid and size."""
        oid, size, url = self.object()
        return {"kind": self.kind, "uri": f"{url}/objects/{oid}", "url": url, "oid": oid, "size": size,
                "pointer": self.spec.pointer}

    def known_result(self, cache: Cache) -> tuple[str, str] | None:
        """The oid is the blob's sha256 (unless the cached blob has another size: resolve() then says so)."""
        oid, size, _ = self.object()
        blob = cache.lookup("sha256", oid)
        return None if blob is not None and blob.size != size else ("blob", oid)

    def resolve(self, env: SourceEnv) -> Resolved:
        """Ask the batch API for the download action of the object."""
        oid, size, url = self.object()
        href, headers = batch_download(self.name, url, oid, size, env.options.timeout_s, self.environ)
        pin = (f"the LFS pointer {self.spec.pointer} (git-lfs writes it when the new object is committed)"
               if self.spec.pointer else "the manifest (lfs.oid and lfs.size)")
        return Resolved(uri=f"{url}/objects/{oid}", single_file=True, tree_digest=oid, pin=pin,
                        requests=(FileRequest(path="", uri=href, digests={"sha256": oid}, size=size,
                                              headers=tuple(sorted(headers.items()))),))


def read_pointer(name: str, path: Path) -> tuple[str, int]:
    """(oid, size) of a Git LFS pointer file; in a git-lfs checkout (the path holds the object), git's index's."""
    try:
        with path.open("rb") as f:
            data = f.read(1024)  # a pointer is under 1 KiB; the path may hold the (large) object itself
    except OSError as exc:
        raise UsageError(f"{name}: {path}: cannot read: {exc.strerror or exc}; fix lfs.pointer") from None
    parsed = _parse_pointer(data)
    if parsed is None:
        # git-lfs's smudge filter put the object itself at the path; the pointer is what git stores.
        parsed = _parse_pointer(_indexed_blob(path))
    if parsed is None:
        raise UsageError(f"{name}: {path}: not a Git LFS pointer file, and git's index holds none for it; point "
                         "lfs.pointer at a pointer file (`git show HEAD:PATH > PATH.pointer` writes one) or give "
                         "lfs.oid and lfs.size")
    return parsed


def _parse_pointer(data: bytes) -> tuple[str, int] | None:
    oid, size = _POINTER_OID.search(data), _POINTER_SIZE.search(data)
    if not data.startswith(b"version https://git-lfs.github.com/spec/v1") or oid is None or size is None:
        return None
    return oid.group(1).decode(), int(size.group(1))


def _indexed_blob(path: Path) -> bytes:
    """The blob git's index holds for path (what `git show :PATH` prints: no smudge filter); b"" when none."""
    git = shutil.which("git")
    if git is None:
        return b""
    try:
        proc = subprocess.Popen([git, "-C", str(path.parent), "cat-file", "blob", f":./{path.name}"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return b""
    # Only the first KiB is wanted: the index may hold the object itself (GBs), so read that much and stop git.
    timer = threading.Timer(60, proc.kill)  # a hung git must not hang the plan
    timer.start()
    with proc:
        try:
            head = proc.stdout.read(1024) if proc.stdout is not None else b""
            if len(head) == 1024:
                proc.kill()  # a blob of at least 1 KiB was found; the rest is not needed
            code = proc.wait()
        except OSError:
            proc.kill()  # so that leaving the block does not wait on a git still writing
            return b""
        finally:
            timer.cancel()
    return head if len(head) == 1024 or code == 0 else b""


def lfs_url_from_config(name: str, pointer: Path, root: Path) -> str:
    """lfs.url from the nearest .lfsconfig above the pointer (up to the manifest's folder's repository)."""
    folder = pointer.resolve().parent
    for candidate in (folder, *folder.parents):
        config = candidate / ".lfsconfig"
        if config.is_file():
            text = config.read_text(encoding="utf-8", errors="replace")
            section = re.search(r"^\s*\[lfs\]\s*$(.*?)(?=^\s*\[|\Z)", text, re.M | re.S)
            match = _LFS_URL.search(section.group(1)) if section else None
            if match:
                return match.group(1)
        if (candidate / ".git").exists():
            break
    raise UsageError(f"{name}: no LFS URL for {pointer}: give lfs.url, or add `[lfs] url = …` to the repository's "
                     ".lfsconfig")


def _auth(environ: Mapping[str, str]) -> tuple[dict[str, str], Any]:
    if environ.get(TOKEN_ENV):
        return {"Authorization": f"Bearer {environ[TOKEN_ENV]}"}, None
    if environ.get(USER_ENV):
        return {}, (environ[USER_ENV], environ.get(PASSWORD_ENV, ""))
    return {}, None


def batch_download(name: str, url: str, oid: str, size: int, timeout_s: float,
                   environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The href and headers of the object's download action; FetchError (exit 4) for an unknown oid."""
    import requests

    from runner.fetch.http import STREAM_ERRORS

    headers, auth = _auth(environ)
    body = {"operation": "download", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}],
            "hash_algo": "sha256"}
    endpoint = f"{url}/objects/batch"
    try:
        # Streamed and read up to a bound: a server whose answer never ends must not fill memory.
        with requests.post(endpoint, json=body, headers={**headers, "Accept": MEDIA, "Content-Type": MEDIA},
                           auth=auth, timeout=timeout_s, stream=True) as response:
            text = response.raw.read(MAX_BATCH_BYTES + 1, decode_content=True)
    except STREAM_ERRORS as exc:  # the request, or the body breaking off (urllib3's errors) while read
        raise FetchError(f"{name}: {endpoint}: {exc.__class__.__name__}: cannot reach the LFS server; check lfs.url "
                         "and the network") from None
    if len(text) > MAX_BATCH_BYTES:
        raise IntegrityError(f"{name}: {endpoint}: the LFS server's batch answer for one object is larger than "
                             f"{MAX_BATCH_BYTES >> 20} MiB; the server is misconfigured or hostile: check lfs.url")
    if response.status_code in (401, 403):
        raise FetchError(f"{name}: {endpoint}: HTTP {response.status_code}; set {TOKEN_ENV} (or {USER_ENV} and "
                         f"{PASSWORD_ENV}) in the environment to a credential that may read the repository")
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):
        answer = None
    has_objects = isinstance(answer, dict) and isinstance(answer.get("objects"), list)
    if response.status_code == 404 and not has_objects:
        # The spec's "no such repository"; giftless also answers it when none of the objects exists.
        raise FetchError(f"{name}: LFS object {oid} ({size} bytes): not found at {url} (HTTP 404: no such object or "
                         "repository); check lfs.oid, lfs.size and lfs.url, or push it with `git lfs push --all`")
    if response.status_code != 200 and not has_objects:
        raise FetchError(f"{name}: {endpoint}: HTTP {response.status_code} from the LFS batch API; check lfs.url "
                         "(it ends in .git/info/lfs)")
    try:
        objects = answer.get("objects") or []
        entry = next(o for o in objects if o.get("oid") == oid)
    except (ValueError, AttributeError, StopIteration, TypeError):
        raise FetchError(f"{name}: {endpoint}: the server's answer names no object {oid}; is lfs.url an LFS "
                         "server?") from None
    error = entry.get("error")
    if error:
        raise FetchError(f"{name}: LFS object {oid} ({size} bytes): the server says {error.get('code')} "
                         f"{error.get('message', '')}".rstrip() + "; check lfs.oid and lfs.size, or push the object "
                         "with `git lfs push --all`")
    action = (entry.get("actions") or {}).get("download")
    if not isinstance(action, dict) or not action.get("href"):
        raise FetchError(f"{name}: LFS object {oid}: the server gave no download action; push it with "
                         "`git lfs push --all`")
    href = str(action["href"])
    parts = urlsplit(href)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        # A link from a remote server must not make xrun read host files (file:///etc/passwd) or
        # use this host's credentials elsewhere (s3://): the transports would follow any scheme.
        raise IntegrityError(f"{name}: the LFS server {url} handed out the download link {href!r} for {oid}; only "
                             "http(s) links from a server are followed. The server is misconfigured or hostile: check "
                             "lfs.url")
    return href, {str(k): str(v) for k, v in (action.get("header") or {}).items()}
