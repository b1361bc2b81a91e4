"""Hostile servers: no download outgrows its declared size (or the cap), LFS links are http(s) only, LFS size is checked.

Every server is the real FaultServer on 127.0.0.1; an `endless` resource streams until the client
hangs up (bounded at 1 GiB by the server itself, so a regression fails instead of hanging).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from datatools import manifest
from faultserver import Fault, FaultServer
from runner.cli import main
from runner.errors import UsageError
from runner.fetch.interface import DEFAULT_MAX_DOWNLOAD, max_download
from runner.fetch.sources.listing import ListedFile, listing_json, tree_digest


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XRUN_MAX_DOWNLOAD", raising=False)


def fetch(path: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["fetch", str(path)])
    return rc, capsys.readouterr().err


def cache_files(tmp_path: Path) -> list[tuple[str, int]]:
    """Every file left in the cache (partials included) with its size."""
    root = tmp_path / "cache" / "blobs"
    return [(p.name, p.stat().st_size) for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def lfs_server(server: FaultServer, oid: str, size: int, href: str) -> str:
    """A Git LFS batch endpoint that hands out `href` for `oid`; returns its LFS URL."""
    answer = {"transfer": "basic", "objects": [{"oid": oid, "size": size, "actions": {"download": {"href": href}}}]}
    server.add("/repo.git/info/lfs/objects/batch", json.dumps(answer).encode())
    return server.url("/repo.git/info/lfs")


def test_lfs_object_that_never_ends_stops_at_its_size(tmp_path, capsys):
    content = b"sixteen bytes!!\n"
    oid = hashlib.sha256(content).hexdigest()
    with FaultServer() as server:
        href = server.add("/objects/x", content)
        server.fault("/objects/x", Fault("endless", times=-1))
        url = lfs_server(server, oid, len(content), href)
        rc, err = fetch(manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": 16, "url": url}}]), capsys)
    assert rc == 3 and href in err and "declared size is 16" in err, err
    assert cache_files(tmp_path) == []  # no partial left behind, let alone a big one


def test_lfs_size_must_match_the_object(tmp_path, capsys):
    """`size: 16` for a 17-byte object is exit 3, downloaded or already in the cache."""
    content = b"seventeen bytes!\n"
    oid = hashlib.sha256(content).hexdigest()
    with FaultServer() as server:
        href = server.add("/objects/x", content)
        url = lfs_server(server, oid, 16, href)
        rc, err = fetch(manifest(tmp_path / "a", [{"name": "w", "lfs": {"oid": oid, "size": 16, "url": url}}]), capsys)
        assert rc == 3 and "declared size is 16" in err and "17" in err, err
        rc, err = fetch(manifest(tmp_path / "b", [{"name": "w", "lfs": {"oid": oid, "size": 17, "url": url}}]), capsys)
        assert rc == 0, err
        rc, err = fetch(manifest(tmp_path / "c", [{"name": "w", "lfs": {"oid": oid, "size": 16, "url": url}}]), capsys)
        assert rc == 3 and "is 17 bytes, but its declared size is 16" in err, err
        # Too short with the right announced length is caught too (a hash mismatch, or the size).
        rc, err = fetch(manifest(tmp_path / "d", [{"name": "w", "lfs": {"oid": oid, "size": 18, "url": url}}]), capsys)
        assert rc == 3 and "declared size is 18" in err, err


@pytest.mark.parametrize("href", ["file:///etc/passwd", "s3://bucket/key", "ftp://127.0.0.1/x", "/relative/path"])
def test_lfs_links_are_http_only(tmp_path, capsys, href):
    oid = hashlib.sha256(b"x").hexdigest()
    with FaultServer() as server:
        url = lfs_server(server, oid, 1, href)
        rc, err = fetch(manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": 1, "url": url}}]), capsys)
    assert rc == 3 and url in err and "only http(s) links" in err, err
    assert "root:" not in err and len(err.strip().splitlines()) == 1, err


def test_listing_that_says_5_bytes_then_streams_for_ever(tmp_path, capsys):
    files = [ListedFile("a.bin", 5, hashlib.sha256(b"12345").hexdigest())]
    with FaultServer() as server:
        server.add("/ds/.xrun-tree.json", json.dumps(listing_json(files)).encode())
        server.add("/ds/a.bin", b"12345")
        server.fault("/ds/a.bin", Fault("endless", times=-1))
        path = manifest(tmp_path, [{"name": "set", "directory": {"uri": server.url("/ds/"),
                                                                 "treeDigest": f"sha256:{tree_digest(files)}"}}])
        rc, err = fetch(path, capsys)
    assert rc == 3 and server.url("/ds/a.bin") in err and "declared size is 5" in err, err
    assert cache_files(tmp_path) == []


def test_no_declared_size_stops_at_the_cap(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XRUN_MAX_DOWNLOAD", "1M")
    with FaultServer() as server:
        url = server.add("/big.bin", b"x")
        server.fault("/big.bin", Fault("endless", times=-1))
        rc, err = fetch(manifest(tmp_path, [{"name": "d", "uri": url, "sha256": "a" * 64}]), capsys)
        assert rc == 3 and url in err and "XRUN_MAX_DOWNLOAD" in err and "1.0 MiB" in err, err
        assert cache_files(tmp_path) == []
        # A Content-Length over the cap stops before the first byte is written.
        url = server.add("/huge.bin", bytes(2 << 20))
        rc, err = fetch(manifest(tmp_path / "b", [{"name": "d", "uri": url, "sha256": "a" * 64}]), capsys)
        assert rc == 3 and f"announced {2 << 20} bytes" in err, err


def test_a_stale_partial_larger_than_the_size_is_not_resumed(tmp_path, capsys):
    content = b"sixteen bytes!!\n"
    oid = hashlib.sha256(content).hexdigest()
    partial = tmp_path / "cache" / "blobs" / "sha256" / oid[:2] / f".{oid}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(bytes(1000))  # left by an xrun without limits
    with FaultServer() as server:
        url = lfs_server(server, oid, 16, server.add("/objects/x", content))
        rc, err = fetch(manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": 16, "url": url}}]), capsys)
    assert rc == 0, err
    assert cache_files(tmp_path) == [(oid, 16)]


@pytest.mark.parametrize("value, expected", [("", DEFAULT_MAX_DOWNLOAD), ("1048576", 1 << 20), ("500M", 500 << 20),
                                             ("64G", 64 << 30), ("2TiB", 2 << 40), ("1 k", 1024)])
def test_max_download_setting(value, expected):
    assert max_download({"XRUN_MAX_DOWNLOAD": value}) == expected


@pytest.mark.parametrize("value", ["lots", "-1", "0", "1.5G"])
def test_max_download_setting_refused(value):
    with pytest.raises(UsageError, match="XRUN_MAX_DOWNLOAD"):
        max_download({"XRUN_MAX_DOWNLOAD": value})


# --- listings and DVC files that lie ------------------------------------------------------------------


def directory_item(server: FaultServer, listing: dict, pin: str) -> list[dict]:
    server.add("/ds/.xrun-tree.json", json.dumps(listing).encode())
    return [{"name": "set", "directory": {"uri": server.url("/ds/"), "treeDigest": f"sha256:{pin}"}}]


def test_a_listing_that_names_itself_is_refused(tmp_path, capsys):
    files = [ListedFile("a.txt", 1, hashlib.sha256(b"a").hexdigest()),
             ListedFile(".xrun-tree.json", 1, hashlib.sha256(b"b").hexdigest())]
    with FaultServer() as server:
        server.add("/ds/a.txt", b"a")
        server.add("/ds/.xrun-tree.json", b"b")
        rc, err = fetch(manifest(tmp_path, directory_item(server, listing_json(files), tree_digest(files))), capsys)
    assert rc == 3 and "names .xrun-tree.json itself" in err, err


def test_a_listing_whose_own_tree_digest_is_wrong_is_refused(tmp_path, capsys):
    files = [ListedFile("a.txt", 1, hashlib.sha256(b"a").hexdigest())]
    listing = {**listing_json(files), "treeDigest": "sha256:" + "0" * 64}
    with FaultServer() as server:
        server.add("/ds/a.txt", b"a")
        rc, err = fetch(manifest(tmp_path, directory_item(server, listing, tree_digest(files))), capsys)
    assert rc == 3 and "own treeDigest" in err and "0" * 64 in err, err


def test_a_listing_nested_too_deeply_is_refused(tmp_path, capsys):
    with FaultServer() as server:
        server.add("/ds/.xrun-tree.json", ("[" * 100_000 + "]" * 100_000).encode())
        item = [{"name": "set", "directory": {"uri": server.url("/ds/"), "treeDigest": "sha256:" + "1" * 64}}]
        rc, err = fetch(manifest(tmp_path, item), capsys)
    assert rc == 3 and "nested too deeply" in err, err


@pytest.mark.parametrize("md5", ["../..", "../../../etc/passwd", "0" * 31 + "g", "0" * 32 + "/.."])
def test_a_dvc_md5_that_is_not_an_md5_is_named(tmp_path, capsys, md5):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.dvc").write_text(json.dumps({"outs": [{"md5": md5, "path": "a", "hash": "md5"}]}))
    path = manifest(tmp_path, [{"name": "a", "dvc": {"file": "code/a.dvc", "remote": "http://127.0.0.1:9/store"}}])
    rc, err = fetch(path, capsys)
    assert rc == 2 and "is not an md5" in err and "has no md5" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_an_lfs_batch_answer_that_never_ends_stops(tmp_path, capsys):
    oid = hashlib.sha256(b"x").hexdigest()
    with FaultServer() as server:
        url = lfs_server(server, oid, 1, "http://127.0.0.1:9/x")
        server.fault("/repo.git/info/lfs/objects/batch", Fault("endless", times=-1))
        rc, err = fetch(manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": 1, "url": url}}]), capsys)
    assert rc == 3 and "batch answer" in err and "16 MiB" in err, err


def test_an_lfs_batch_answer_nested_too_deeply_is_one_line(tmp_path, capsys):
    oid = hashlib.sha256(b"x").hexdigest()
    with FaultServer() as server:
        server.add("/repo.git/info/lfs/objects/batch", b'{"objects": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        url = server.url("/repo.git/info/lfs")
        rc, err = fetch(manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": 1, "url": url}}]), capsys)
    assert rc == 4 and "names no object" in err and "internal error" not in err, err


def test_a_wheel_stops_at_the_size_its_lock_states(tmp_path):
    """pylock.toml and uv.lock state each wheel's size: a server sending more is exit 3, nothing cached."""
    from runner.build.wheels import Candidate, Chosen, candidates_for, fetch_wheels
    from runner.errors import IntegrityError
    from runner.fetch import Cache
    from runner.fetch.interface import FetchOptions
    from runner.lockfiles.interface import LockEntry

    wheel = b"PK\x05\x06" + bytes(18)
    sha = hashlib.sha256(wheel).hexdigest()
    with FaultServer() as server:
        url = server.add("/demo-1.0-py3-none-any.whl", wheel)
        server.fault("/demo-1.0-py3-none-any.whl", Fault("endless", times=-1))
        entry = LockEntry("demo", "1.0", (f"sha256:{sha}",), "pylock.toml:3",
                          artifacts=({"url": url, "filename": "demo-1.0-py3-none-any.whl", "hashes": {"sha256": sha},
                                      "size": len(wheel)},))
        [candidate] = candidates_for(entry, None, None, "pylock.toml")
        assert candidate == Candidate("demo-1.0-py3-none-any.whl", url, {"sha256": sha}, len(wheel))
        with pytest.raises(IntegrityError, match=f"declared size is {len(wheel)}") as info:
            fetch_wheels([Chosen(entry, candidate)], Cache(tmp_path / "cache"), base_dir=tmp_path,
                         options=FetchOptions(progress=False))
    assert url in info.value.message and cache_files(tmp_path) == []


def test_a_dvc_dir_object_that_never_ends_stops_at_the_listing_bound(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("runner.fetch.sources.dvc.MAX_LISTING_BYTES", 1 << 20)  # 512 MiB is too much for a test
    md5 = hashlib.md5(b"x").hexdigest()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "d.dvc").write_text(json.dumps({"outs": [{"md5": f"{md5}.dir", "path": "d", "hash": "md5"}]}))
    with FaultServer() as server:
        server.add(f"/store/files/md5/{md5[:2]}/{md5[2:]}.dir", b"[")
        server.fault(f"/store/files/md5/{md5[:2]}/{md5[2:]}.dir", Fault("endless", times=-1))
        path = manifest(tmp_path, [{"name": "d", "dvc": {"file": "code/d.dvc", "remote": server.url("/store")}}])
        rc, err = fetch(path, capsys)
    assert rc == 3 and ".dir object" in err and "1.0 MiB" in err and "XRUN_MAX_DOWNLOAD" not in err, err
    assert cache_files(tmp_path) == []


def test_an_lfs_batch_answer_that_breaks_off_is_one_line(tmp_path, capsys):
    oid = hashlib.sha256(b"x").hexdigest()
    with FaultServer() as server:
        url = lfs_server(server, oid, 1, "http://127.0.0.1:9/x")
        server.fault("/repo.git/info/lfs/objects/batch", Fault("reset_after", after=10, times=-1))
        rc, err = fetch(manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": 1, "url": url}}]), capsys)
    assert rc == 4 and "cannot reach the LFS server" in err and "internal error" not in err, err
