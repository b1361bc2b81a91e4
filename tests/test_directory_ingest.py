"""The bulk copy of a local directory dataset into the cache: one hash per file, one sync, nothing half-made."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from datatools import digest_of, manifest, write_files
from runner.cli import main
from runner.fetch.cache import Cache
from runner.fetch.sources import tree as tree_mod
from servers import PATIENCE_S

FILES = {"a.txt": b"same\n", "sub/b.txt": b"same\n", "sub/deep/c.bin": os.urandom(3000),
         "big.bin": os.urandom((1 << 20) + 4097)}  # larger than one read: the streaming copy


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cache:
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    return Cache(tmp_path / "cache")





def fetch(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict] | str]:
    capsys.readouterr()
    rc = main(["fetch", str(path), "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else err)


def blob_files(cache: Cache) -> list[Path]:
    base = cache.root / "blobs"
    return [p for p in base.rglob("*") if p.is_file()] if base.exists() else []


def leftovers(cache: Cache) -> list[Path]:
    trees = cache.root / "trees"
    return [p for p in trees.rglob(".tmp-*")] if trees.exists() else []


def test_each_content_is_one_blob_and_every_member_links_to_it(tmp_path: Path, cache: Cache, capsys):
    data = write_files(tmp_path / "set", FILES)
    rc, items = fetch(manifest(tmp_path, [{"name": "set", "directory": {"uri": str(data),
                                                                        "treeDigest": digest_of(FILES)}}]), capsys)
    assert rc == 0, items
    root = Path(items[0]["hostPath"])
    for rel, content in FILES.items():
        member = os.stat(root / rel)
        blob = cache.blob_path("sha256", hashlib.sha256(content).hexdigest())
        assert (root / rel).read_bytes() == content
        assert member.st_ino == os.stat(blob).st_ino and member.st_mode & 0o777 == 0o444
    assert len(blob_files(cache)) == 3  # a.txt and sub/b.txt are one blob
    assert leftovers(cache) == [] and list(cache.leftovers()) == []
    assert cache.tree_trusted("sha256", digest_of(FILES))


def test_a_pin_mismatch_leaves_nothing_in_the_cache(tmp_path: Path, cache: Cache, capsys):
    data = write_files(tmp_path / "set", {**FILES, "a.txt": b"changed\n"})
    rc, err = fetch(manifest(tmp_path, [{"name": "set", "directory": {"uri": str(data),
                                                                      "treeDigest": digest_of(FILES)}}]), capsys)
    assert rc == 3 and "tree digest mismatch" in err
    assert blob_files(cache) == [] and leftovers(cache) == []


def test_an_interrupted_copy_leaves_nothing_and_the_next_run_completes(tmp_path: Path, cache: Cache, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch):
    data = write_files(tmp_path / "set", FILES)
    path = manifest(tmp_path, [{"name": "set", "directory": {"uri": str(data), "treeDigest": digest_of(FILES)}}])
    real = tree_mod._write_new
    calls = []

    def interrupted(dst, chunks):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(dst, chunks)

    monkeypatch.setattr(tree_mod, "_write_new", interrupted)
    assert main(["fetch", str(path), "--json"]) == 130
    assert "nothing was left half-written" in capsys.readouterr().err
    assert blob_files(cache) == [] and leftovers(cache) == []
    monkeypatch.setattr(tree_mod, "_write_new", real)
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    assert len(blob_files(cache)) == 3


def test_a_tampered_blob_already_in_the_cache_is_replaced_not_linked(tmp_path: Path, cache: Cache, capsys):
    one = write_files(tmp_path / "one", {"a.txt": b"shared\n"})
    rc, items = fetch(manifest(tmp_path / "m1", [{"name": "one", "directory": {"uri": str(one)}}]), capsys)
    assert rc == 0, items
    blob = cache.blob_path("sha256", hashlib.sha256(b"shared\n").hexdigest())
    os.chmod(blob, 0o644)
    blob.write_bytes(b"evil!!\n")  # same size; only a re-hash can tell
    two = write_files(tmp_path / "two", {"x/a.txt": b"shared\n", "y.txt": b"y"})
    rc, items = fetch(manifest(tmp_path / "m2", [{"name": "two", "directory": {"uri": str(two)}}]), capsys)
    assert rc == 0, items
    member = Path(items[0]["hostPath"]) / "x/a.txt"
    assert member.read_bytes() == b"shared\n" and blob.read_bytes() == b"shared\n"
    assert os.stat(member).st_ino == os.stat(blob).st_ino


def test_a_good_blob_already_in_the_cache_is_shared_and_fingerprinted(tmp_path: Path, cache: Cache, capsys):
    one = write_files(tmp_path / "one", {"a.txt": b"shared\n"})
    two = write_files(tmp_path / "two", {"a.txt": b"shared\n", "b.txt": b"b"})
    for folder in (one, two):
        rc, items = fetch(manifest(tmp_path / folder.name, [{"name": "d", "directory": {"uri": str(folder)}}]), capsys)
        assert rc == 0, items
    sha = hashlib.sha256(b"shared\n").hexdigest()
    assert os.stat(cache.blob_path("sha256", sha)).st_nlink == 3  # the blob and one member per tree
    probe = cache.probe("sha256", sha)
    assert probe is not None and probe.trusted


def test_entry_locks_exclude_other_holders_of_the_same_entry(cache: Cache):
    waited, done = threading.Event(), threading.Event()

    def other() -> None:
        with cache.lock("sha256", "ab" * 32, on_wait=waited.set):
            done.set()

    with cache.entry_locks() as locks:
        with locks.hold("sha256", "ab" * 32):
            thread = threading.Thread(target=other)
            thread.start()
            assert waited.wait(10)
            assert not done.is_set()
        assert done.wait(10)
        thread.join()
        with locks.hold("sha256", "ab" * 32):  # released and taken again through the same descriptor
            pass


def test_a_warm_run_reports_the_dataset_from_its_summary_or_else_its_listing(tmp_path: Path, cache: Cache, capsys):
    data = write_files(tmp_path / "set", FILES)
    pin = digest_of(FILES)
    path = manifest(tmp_path, [{"name": "set", "directory": {"uri": str(data), "treeDigest": pin}}])
    rc, cold = fetch(path, capsys)
    assert rc == 0, cold
    summary = cache.state_path("sha256", pin, "dataset")
    for _ in range(2):  # with the summary, then without it (a cache from before it existed)
        rc, warm = fetch(path, capsys)
        assert rc == 0 and warm[0]["cacheHit"], warm
        assert (warm[0]["files"], warm[0]["size"], warm[0]["uri"]) == (cold[0]["files"], cold[0]["size"], cold[0]["uri"])
        summary.unlink(missing_ok=True)


def test_materialize_rechecks_an_untrusted_tree_without_locking_itself_out(tmp_path: Path, cache: Cache):
    # A tree whose fingerprint no longer holds (here: a member's ctime moved) is re-hashed under the
    # tree's lock; materialize used to call that re-check while holding the same lock, and OFD locks
    # of one process on one entry wait for each other for ever.
    from runner.fetch.download import fetch_blob

    files = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"}
    src = write_files(tmp_path / "src", files)
    blobs = [(rel, fetch_blob(cache, str(src / rel), {"sha256": hashlib.sha256(data).hexdigest()}, name=rel))
             for rel, data in files.items()]
    digest = digest_of(files)
    path, made = tree_mod.materialize(cache, digest, blobs, {"uri": str(src)})
    assert made and cache.tree_trusted("sha256", digest)
    os.chmod(path / "a.txt", 0o444)  # same mode, new ctime: the fingerprint no longer vouches for it
    assert not cache.tree_trusted("sha256", digest)
    result: list[tuple[Path, bool]] = []
    worker = threading.Thread(target=lambda: result.append(tree_mod.materialize(cache, digest, blobs,
                                                                                {"uri": str(src)})), daemon=True)
    worker.start()
    worker.join(timeout=PATIENCE_S)
    assert not worker.is_alive(), "materialize hung on its own lock"
    assert result == [(path, False)] and cache.tree_trusted("sha256", digest)
