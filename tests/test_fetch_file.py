"""fetch_blob for file:// URIs and plain paths (relative to the manifest's folder)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from runner.errors import FetchError, IntegrityError, UsageError
from runner.fetch import Cache, FetchOptions, fetch_blob
from runner.fetch.registry import parse_source

FAST = FetchOptions(retries=1, backoff_s=0.01, progress=False)
DATA = os.urandom(2_500_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "train set.bin").write_bytes(DATA)
    return tmp_path / "proj"


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.mark.parametrize("uri", ["data/train set.bin", "./data/train set.bin", "file:data/train%20set.bin"])
def test_relative_paths_resolve_against_the_manifest_folder(project: Path, cache: Cache, uri: str,
                                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir("/")
    blob = fetch_blob(cache, uri, {"sha256": SHA}, name="train", base_dir=project, options=FAST)
    assert blob.fetched and blob.path.read_bytes() == DATA
    assert stat.S_IMODE(blob.path.stat().st_mode) == 0o444


def test_absolute_file_uri(project: Path, cache: Cache):
    uri = (project / "data" / "train set.bin").as_uri()
    assert "%20" in uri
    blob = fetch_blob(cache, uri, {"sha512": hashlib.sha512(DATA).hexdigest()}, name="train", options=FAST)
    assert blob.algorithm == "sha512" and blob.size == len(DATA)
    localhost = uri.replace("file://", "file://localhost")
    assert parse_source(localhost).path == project / "data" / "train set.bin"


def test_second_fetch_is_a_hit_even_when_the_source_is_gone(project: Path, cache: Cache):
    fetch_blob(cache, "data/train set.bin", {"sha256": SHA}, name="train", base_dir=project, options=FAST)
    (project / "data" / "train set.bin").unlink()
    hit = fetch_blob(cache, "data/train set.bin", {"sha256": SHA}, name="train", base_dir=project, options=FAST)
    assert not hit.fetched and hit.path.read_bytes() == DATA


def test_empty_file(tmp_path: Path, cache: Cache):
    (tmp_path / "empty").write_bytes(b"")
    blob = fetch_blob(cache, "empty", {"sha256": hashlib.sha256(b"").hexdigest()}, name="e", base_dir=tmp_path,
                      options=FAST)
    assert blob.size == 0 and blob.path.read_bytes() == b""


def test_missing_file_fails_at_once_with_one_line(project: Path, cache: Cache):
    with pytest.raises(FetchError) as err:
        fetch_blob(cache, "data/nope.bin", {"sha256": SHA}, name="train", base_dir=project, options=FAST)
    message = err.value.message
    assert err.value.exit_code == 4 and "no such file" in message and "train" in message
    assert "data/nope.bin" in message and "\n" not in message
    assert not list(cache.root.rglob("*.partial"))


def test_folder_is_refused_with_a_hint(project: Path, cache: Cache):
    with pytest.raises(FetchError, match="is a folder.*unpack: true"):
        fetch_blob(cache, "data", {"sha256": SHA}, name="train", base_dir=project, options=FAST)


def test_mismatch_leaves_nothing(project: Path, cache: Cache):
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(IntegrityError) as err:
        fetch_blob(cache, "data/train set.bin", {"sha256": wrong}, name="train", base_dir=project, options=FAST)
    assert err.value.exit_code == 3
    assert wrong in err.value.message and SHA in err.value.message and f"{len(DATA)} bytes" in err.value.message
    assert [p for p in cache.root.rglob("*") if p.is_file() and "blobs" in p.parts] == []


@pytest.mark.parametrize("uri,words", [("file://otherhost/x", "names host"), ("gopher://x/y", "not supported"),
                                       ("s3://bucket/", "not an object"), ("s3:///key", "no bucket"), ("", "empty")])
def test_bad_uris_are_usage_errors(cache: Cache, uri: str, words: str):
    with pytest.raises(UsageError, match=words):
        fetch_blob(cache, uri, {"sha256": SHA}, name="x", options=FAST)


def test_s3_source_parsing():
    source = parse_source("s3://bkt/a/b%20c.bin?versionId=3HL4kqtJ")
    assert (source.bucket, source.key, source.version_id) == ("bkt", "a/b c.bin", "3HL4kqtJ")
