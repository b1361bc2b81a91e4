"""The cache itself: location, layout, locks, ls, verify (re-hash) and gc (usage-based)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from runner.fetch import (Cache, FetchOptions, fetch_blob, gc_cache, keep_for_manifest, keep_for_plan, list_cache,
                          verify_cache)
from runner.fetch.archive import unpack_tree
from runner.fetch.cache import HAS_OFD_LOCKS
from runner.manifest import load_manifest
from runner.plan import resolve_plan

FAST = FetchOptions(retries=1, backoff_s=0.01, progress=False)
DAY = 86_400.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(cache: Cache, folder: Path, name: str, data: bytes):
    (folder / name).write_bytes(data)
    return fetch_blob(cache, name, {"sha256": sha(data)}, name=name, base_dir=folder, options=FAST)


def put_tree(cache: Cache, folder: Path, name: str, files: dict[str, bytes]):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = put(cache, folder, name, buf.getvalue())
    return blob, unpack_tree(cache, blob, name=name, uri=name)


def partial(cache: Cache, hexdigest: str, data: bytes) -> Path:
    path = cache.partial_path("sha256", hexdigest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def age(cache: Cache, algorithm: str, hexdigest: str, seconds: float) -> None:
    """Pretend the entry was created and last used `seconds` ago."""
    then = time.time() - seconds
    for path in (cache.blob_path(algorithm, hexdigest), cache.tree_path(algorithm, hexdigest)):
        if path.exists():
            os.utime(path, (then, then), follow_symlinks=False)
    cache.mark_used(algorithm, hexdigest, when=then)


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def test_default_location(tmp_path: Path):
    assert Cache.default({"XRUN_CACHE_DIR": str(tmp_path / "x"), "XDG_CACHE_HOME": "/xdg"}).root == tmp_path / "x"
    assert Cache.default({"XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"}).root == Path("/xdg/xrun")
    assert Cache.default({"XDG_CACHE_HOME": "relative", "HOME": "/home/u"}).root == Path("/home/u/.cache/xrun")
    assert Cache.default({"HOME": "/home/u"}).root == Path("/home/u/.cache/xrun")


def test_layout(cache: Cache):
    h = "ab" + "0" * 62
    assert cache.blob_path("sha256", h) == cache.root / "blobs" / "sha256" / "ab" / h
    assert cache.tree_path("md5", "cd" + "0" * 30) == cache.root / "trees" / "md5" / "cd" / ("cd" + "0" * 30)
    assert cache.lookup("sha256", h) is None


def test_lookup_ignores_non_files(cache: Cache):
    h = "ab" + "0" * 62
    cache.blob_path("sha256", h).mkdir(parents=True)
    assert cache.lookup("sha256", h) is None


def test_ls_lists_blobs_and_trees_not_partials(cache: Cache, tmp_path: Path):
    blob = put(cache, tmp_path, "a.bin", b"a" * 1000)
    tar_blob, tree = put_tree(cache, tmp_path, "t.tar", {"x.txt": b"12345", "y/z.txt": b"678"})
    partial(cache, "ee" * 32, b"partial")
    entries = list_cache(cache)
    kinds = sorted((e.kind, e.hexdigest) for e in entries)
    assert kinds == sorted([("blob", blob.hexdigest), ("blob", tar_blob.hexdigest), ("tree", tree.hexdigest)])
    tree_entry = next(e for e in entries if e.kind == "tree")
    assert (tree_entry.size, tree_entry.files) == (8, 2)
    as_json = tree_entry.to_json()
    assert as_json["digest"] == f"sha256:{tree.hexdigest}" and as_json["kind"] == "tree"


def test_verify_rehashes_and_finds_corruption(cache: Cache, tmp_path: Path):
    good = put(cache, tmp_path, "good.bin", b"good" * 1000)
    bad = put(cache, tmp_path, "bad.bin", b"bad" * 1000)
    _, tree = put_tree(cache, tmp_path, "t.tar", {"x.txt": b"12345", "y/z.txt": b"678", "w.txt": b"w"})
    assert all(r.ok for r in verify_cache(cache))

    os.chmod(bad.path, 0o644)
    bad.path.write_bytes(b"BAD" * 1000)
    os.chmod(tree.path, 0o755)
    os.chmod(tree.path / "x.txt", 0o644)
    (tree.path / "x.txt").write_bytes(b"54321")
    (tree.path / "extra").write_bytes(b"")
    os.unlink(tree.path / "w.txt")
    results = {r.entry.hexdigest + r.entry.kind: r for r in verify_cache(cache)}
    assert results[good.hexdigest + "blob"].ok
    assert not results[bad.hexdigest + "blob"].ok
    assert results[bad.hexdigest + "blob"].problems == (f"content hashes to sha256:{sha(b'BAD' * 1000)}",)
    assert sorted(results[tree.hexdigest + "tree"].problems) == ["extra: unexpected file", "w.txt: missing",
                                                                  "x.txt: content changed"]

    repaired = verify_cache(cache, remove_bad=True)
    assert sorted(r.entry.kind for r in repaired if r.removed) == ["blob", "tree"]
    assert cache.lookup("sha256", bad.hexdigest) is None and cache.lookup_tree("sha256", tree.hexdigest) is None
    assert cache.lookup("sha256", good.hexdigest) is not None
    # The next fetch simply downloads it again.
    assert put(cache, tmp_path, "bad.bin", b"bad" * 1000).fetched


def test_gc_removes_what_no_recent_run_used(cache: Cache, tmp_path: Path):
    old = put(cache, tmp_path, "old.bin", b"old")
    recent = put(cache, tmp_path, "recent.bin", b"recent")
    kept = put(cache, tmp_path, "kept.bin", b"kept")
    tar_blob, tree = put_tree(cache, tmp_path, "t.tar", {"x.txt": b"x"})
    for entry in (old, kept, tar_blob):
        age(cache, "sha256", entry.hexdigest, 30 * DAY)
    age(cache, "sha256", recent.hexdigest, 1 * DAY)
    stale = partial(cache, "ee" * 32, b"abandoned")
    os.utime(stale, (time.time() - 30 * DAY,) * 2)
    fresh = partial(cache, "ff" * 32, b"in progress")

    dry = gc_cache(cache, keep={("sha256", kept.hexdigest)}, older_than_s=7 * DAY, dry_run=True)
    assert old.path.exists() and len(dry) == 4

    removed = gc_cache(cache, keep={("sha256", kept.hexdigest)}, older_than_s=7 * DAY)
    assert sorted((r.kind, r.digest) for r in removed) == sorted([
        ("blob", f"sha256:{old.hexdigest}"), ("blob", f"sha256:{tar_blob.hexdigest}"),
        ("tree", f"sha256:{tree.hexdigest}"), ("partial", None)])
    assert not old.path.exists() and not tree.path.exists() and not stale.exists()
    assert recent.path.exists() and kept.path.exists() and fresh.exists()
    assert not cache.marker_path("sha256", old.hexdigest).exists()
    assert not cache.tree_listing_path("sha256", tree.hexdigest).exists()
    assert removed[0].to_json()["kind"] in ("blob", "tree", "partial")


def test_a_cache_hit_protects_from_gc(cache: Cache, tmp_path: Path):
    blob = put(cache, tmp_path, "a.bin", b"a")
    age(cache, "sha256", blob.hexdigest, 30 * DAY)
    put(cache, tmp_path, "a.bin", b"a")  # a run used it just now
    assert gc_cache(cache, keep=set(), older_than_s=7 * DAY) == []


def test_keep_sets_from_a_manifest_and_a_plan(tmp_path: Path):
    raw = yaml.safe_load((Path(__file__).parent / "manifests" / "valid.yaml").read_text())
    raw["data"] = [{"name": "a", "uri": "a.bin", "md5": "AB" * 16},
                   {"name": "b", "uri": "b.bin", "sha256": "cd" * 32, "md5": "ef" * 16}]
    shutil.copytree(Path(__file__).parent / "manifests" / "code", tmp_path / "code")
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(raw))
    manifest = load_manifest(tmp_path / "experiment.yaml")
    assert keep_for_manifest(manifest) == {("md5", "ab" * 16), ("sha256", "cd" * 32)}
    assert keep_for_plan(resolve_plan(manifest)) == keep_for_manifest(manifest)


LOCK_MODES = [pytest.param(True, id="ofd-byte-range", marks=pytest.mark.skipif(not HAS_OFD_LOCKS, reason="not Linux")),
              pytest.param(False, id="flock-per-entry")]


@pytest.mark.parametrize("byte_range", LOCK_MODES)
def test_lock_waits_for_the_holder(tmp_path: Path, byte_range: bool):
    cache = Cache(tmp_path / "cache", byte_range_locks=byte_range)
    h = "ab" * 32
    order: list[str] = []
    waited = threading.Event()

    def second() -> None:
        with cache.lock("sha256", h, on_wait=waited.set):
            order.append("second")

    with cache.lock("sha256", h):
        t = threading.Thread(target=second)
        t.start()
        assert waited.wait(5)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]


@pytest.mark.parametrize("byte_range", LOCK_MODES)
def test_locks_of_different_entries_do_not_block(tmp_path: Path, byte_range: bool):
    cache = Cache(tmp_path / "cache", byte_range_locks=byte_range)
    got = threading.Event()

    def other() -> None:
        with cache.lock("sha256", "cd" * 32, on_wait=lambda: pytest.fail("blocked")):
            got.set()

    with cache.lock("sha256", "ab" * 32), cache.lock("sha256", "ab" * 32, "tree"):
        t = threading.Thread(target=other)
        t.start()
        assert got.wait(5)
    t.join(5)


def test_flock_fallback_survives_gc_unlinking_its_file(tmp_path: Path):
    cache = Cache(tmp_path / "cache", byte_range_locks=False)
    h = "cd" * 32
    got = threading.Event()

    def waiter() -> None:
        with cache.lock("sha256", h):
            got.set()

    with cache.lock("sha256", h) as held:
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.1)
        held.unlink()  # the waiter holds an fd of the old file: it must notice and lock a fresh one
    t.join(5)
    assert got.is_set()
    assert cache.lock_path("sha256", h).exists()


def test_a_committed_blob_is_fingerprinted_and_only_its_stat_is_compared(cache: Cache, tmp_path: Path):
    blob = put(cache, tmp_path, "a.bin", b"abc" * 1000)
    probe = cache.probe("sha256", blob.hexdigest)
    assert probe is not None and probe.trusted and probe.fingerprinted
    blob.path.read_bytes()  # reading moves atime only: still trusted
    assert cache.probe("sha256", blob.hexdigest).trusted
    time.sleep(0.02)  # past the ctime clock's tick on kernels before 6.13 (see runner/fetch/cache.py)
    os.chmod(blob.path, 0o444)  # even a chmod to the same mode moves ctime
    assert not cache.probe("sha256", blob.hexdigest).trusted
    assert cache.rehash_blob(blob) and cache.probe("sha256", blob.hexdigest).trusted


def test_fingerprint_records_round_trip_and_refuse_other_versions(cache: Cache):
    h = "ab" * 32
    assert cache.read_fingerprint("sha256", h, "blob") is None
    cache.write_fingerprint("sha256", h, "blob", "1:2:3:4:5:100444")
    assert cache.read_fingerprint("sha256", h, "blob") == "1:2:3:4:5:100444"
    cache.state_path("sha256", h, "blob").write_text("v0 1:2:3:4:5:100444\n")
    assert cache.read_fingerprint("sha256", h, "blob") is None
    cache.drop_fingerprint("sha256", h, "blob")
    assert not cache.state_path("sha256", h, "blob").exists()
    assert list(cache.state_path("sha256", h, "blob").parent.iterdir()) == []  # no temporary file left


def test_a_tree_fingerprint_sees_members_and_the_listing(cache: Cache, tmp_path: Path):
    blob, tree = put_tree(cache, tmp_path, "t.tar", {"d/x.txt": b"x", "y.txt": b"y"})
    assert cache.tree_trusted(blob.algorithm, blob.hexdigest)
    listing = cache.tree_listing_path(blob.algorithm, blob.hexdigest)
    time.sleep(0.02)  # past the ctime clock's tick on kernels before 6.13
    os.utime(listing, ns=(os.stat(listing).st_atime_ns, os.stat(listing).st_mtime_ns))  # ctime moves
    assert not cache.tree_trusted(blob.algorithm, blob.hexdigest)


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from runner.fetch import Cache
work = Cache(Path(sys.argv[1])).work_dir("build")
(work / "layer.tar").write_bytes(bytes(4096))
print(work, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_builds_folder_is_seen_and_removed(cache: Cache, tmp_path: Path, capsys, monkeypatch):
    """SIGKILL during a build leaves tmp/xrun-build-…: `cache gc` and the next build remove it (its pid is gone)."""
    import subprocess
    import sys

    from runner.cli import main

    def killed_build() -> Path:
        done = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(cache.root)], capture_output=True, text=True)
        assert done.returncode == -9, done.stderr
        return Path(done.stdout.strip())

    dead = killed_build()
    live = cache.work_dir("build")  # this process's own: in use
    other_host = cache.root / "tmp" / "xrun-build-elsewhere-1-abc"  # a shared cache's other host: only by age
    other_host.mkdir()
    assert dead.is_dir() and dead.name.startswith("xrun-build-")
    monkeypatch.setenv("XRUN_CACHE_DIR", str(cache.root))
    capsys.readouterr()
    assert main(["cache", "gc", "--dry-run"]) == 0
    assert dead.name in capsys.readouterr().out and dead.is_dir()
    assert main(["cache", "gc"]) == 0
    assert not dead.exists() and live.is_dir() and other_host.is_dir()
    os.utime(other_host, (time.time() - 60 * DAY,) * 2)
    assert [r.path for r in gc_cache(cache, keep=set(), older_than_s=7 * DAY)] == [other_host]
    # The next build sweeps them too (before it makes its own folder).
    dead = killed_build()
    assert cache.remove_stale_work_dirs() == [dead] and not dead.exists() and live.is_dir()


def test_gc_skips_a_stale_folder_it_cannot_walk_or_that_went(cache: Cache, monkeypatch):
    import runner.fetch.maintenance as maintenance

    other_user = cache.root / "tmp" / "xrun-build-elsewhere-1-abc"  # another user's 0700 folder in a shared cache
    other_user.mkdir(parents=True)
    stale = partial(cache, "ee" * 32, b"abandoned")
    for path in (other_user, stale):
        os.utime(path, (time.time() - 30 * DAY,) * 2)

    def denied(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(maintenance, "remove_tree", denied)
    assert gc_cache(cache, keep=set(), older_than_s=7 * DAY) == []  # no "internal error"
    assert other_user.is_dir() and stale.exists()
