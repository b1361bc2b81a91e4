"""unpack: archives become read-only content-addressed trees, and nothing escapes them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from runner.errors import IntegrityError
from runner.fetch import Cache, FetchOptions, fetch_blob
from runner.fetch.archive import unpack_tree

FAST = FetchOptions(retries=1, backoff_s=0.01, progress=False)


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None, link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, (data if kind == tarfile.REGTYPE else None)


def zip_bytes(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


GOOD_TAR = [
    member("set", tarfile.DIRTYPE, mode=0o755),
    member("set/train.csv", data=b"a,b\n1,2\n"),
    member("set/run.sh", data=b"#!/bin/sh\n", mode=0o755),
    member("set/latest.csv", tarfile.SYMTYPE, link="train.csv"),
    member("set/copy.csv", tarfile.LNKTYPE, link="set/train.csv"),
    member("./set/nested/deep.txt", data=b"deep"),
]


def unpack(cache: Cache, tmp_path: Path, payload: bytes, filename: str):
    source = tmp_path / filename
    source.write_bytes(payload)
    blob = fetch_blob(cache, source.as_uri(), {"sha256": hashlib.sha256(payload).hexdigest()}, name="corpus",
                      options=FAST)
    return unpack_tree(cache, blob, name="corpus", uri=source.as_uri())


@pytest.mark.parametrize("filename,mode", [("d.tar", "w"), ("d.tar.gz", "w:gz"), ("d.tgz", "w:gz"),
                                           ("d.tar.xz", "w:xz")])
def test_tar_unpacks_into_a_read_only_tree(cache: Cache, tmp_path: Path, filename: str, mode: str):
    tree = unpack(cache, tmp_path, tar_bytes(GOOD_TAR, mode), filename)
    assert tree.unpacked and tree.path == cache.tree_path(tree.algorithm, tree.hexdigest)
    root = tree.path
    assert (root / "set" / "train.csv").read_bytes() == b"a,b\n1,2\n"
    assert (root / "set" / "latest.csv").read_bytes() == b"a,b\n1,2\n" and (root / "set" / "latest.csv").is_symlink()
    assert (root / "set" / "copy.csv").stat().st_ino == (root / "set" / "train.csv").stat().st_ino
    assert (root / "set" / "nested" / "deep.txt").read_bytes() == b"deep"
    assert stat.S_IMODE((root / "set" / "train.csv").stat().st_mode) == 0o444
    assert stat.S_IMODE((root / "set" / "run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "set").stat().st_mode) == 0o555
    assert stat.S_IMODE(root.stat().st_mode) == 0o555
    listing = json.loads(cache.tree_listing_path(tree.algorithm, tree.hexdigest).read_text())
    assert [f["path"] for f in listing["files"]] == ["set/copy.csv", "set/nested/deep.txt", "set/run.sh",
                                                      "set/train.csv"]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".tmp-")]


def test_zip_unpacks(cache: Cache, tmp_path: Path):
    payload = zip_bytes([("set/", b"", stat.S_IFDIR | 0o755), ("set/a.txt", b"alpha", stat.S_IFREG | 0o644),
                         ("set/tool", b"#!", stat.S_IFREG | 0o755), ("set/link", b"a.txt", stat.S_IFLNK | 0o777),
                         ("b.txt", b"no mode bits", 0)])
    tree = unpack(cache, tmp_path, payload, "d.zip")
    assert (tree.path / "set" / "a.txt").read_bytes() == b"alpha"
    assert os.readlink(tree.path / "set" / "link") == "a.txt"
    assert stat.S_IMODE((tree.path / "set" / "tool").stat().st_mode) == 0o555
    assert (tree.path / "b.txt").read_bytes() == b"no mode bits"


def test_a_tree_is_unpacked_once(cache: Cache, tmp_path: Path):
    first = unpack(cache, tmp_path, tar_bytes(GOOD_TAR), "d.tar")
    before = (first.path / "set" / "train.csv").stat().st_ino
    second = unpack(cache, tmp_path, tar_bytes(GOOD_TAR), "d.tar")
    assert not second.unpacked and second.path == first.path
    assert (second.path / "set" / "train.csv").stat().st_ino == before


def test_threads_unpacking_one_tree_unpack_it_once(cache: Cache, tmp_path: Path):
    payload = tar_bytes([member(f"f{i}", data=os.urandom(1000)) for i in range(300)])
    source = tmp_path / "d.tar"
    source.write_bytes(payload)
    blob = fetch_blob(cache, source.as_uri(), {"sha256": hashlib.sha256(payload).hexdigest()}, name="c",
                      options=FAST)
    trees = []
    threads = [threading.Thread(target=lambda: trees.append(unpack_tree(cache, blob, name="c", uri="u")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(t.unpacked for t in trees) == 1 and len({t.path for t in trees}) == 1


ESCAPES = {
    "dotdot": [member("../evil", data=b"x")],
    "dotdot-inside": [member("set/../../evil", data=b"x")],
    "absolute": [member("/tmp/xrun-evil-absolute", data=b"x")],
    "symlink-absolute": [member("passwd", tarfile.SYMTYPE, link="/etc/passwd")],
    "symlink-outside": [member("set/up", tarfile.SYMTYPE, link="../../evil")],
    "write-through-symlink": [member("link", tarfile.SYMTYPE, link="."), member("link/evil", data=b"x")],
    "write-through-inner-symlink": [member("d", tarfile.DIRTYPE), member("d/l", tarfile.SYMTYPE, link=".."),
                                    member("d/l/evil", data=b"x")],
    "hardlink-outside": [member("h", tarfile.LNKTYPE, link="../evil")],
    "hardlink-absolute": [member("h", tarfile.LNKTYPE, link="/etc/passwd")],
    "hardlink-unknown": [member("h", tarfile.LNKTYPE, link="not-in-archive")],
    "char-device": [member("null", tarfile.CHRTYPE)],
    "block-device": [member("sda", tarfile.BLKTYPE)],
    "fifo": [member("pipe", tarfile.FIFOTYPE)],
    "same-member-twice": [member("a", data=b"old"), member("a", data=b"new")],
    "hardlink-over-a-member": [member("a", data=b"old"), member("b", data=b"new"), member("a", tarfile.LNKTYPE, link="b")],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_tar_escapes_are_refused_and_leave_nothing(cache: Cache, tmp_path: Path, case: str):
    members = [member("ok.txt", data=b"fine")] + ESCAPES[case]
    with pytest.raises(IntegrityError) as err:
        unpack(cache, tmp_path, tar_bytes(members), "evil.tar")
    message = err.value.message
    assert err.value.exit_code == 3 and "corpus" in message and "evil.tar" in message and "unsafe" in message
    assert "\n" not in message
    assert not (tmp_path / "evil").exists() and not Path("/tmp/xrun-evil-absolute").exists()
    trees = cache.root / "trees"
    assert [p for p in trees.rglob("*")] == [p for p in trees.rglob("*") if p.is_dir() and not p.name.startswith(".")]
    assert not list(trees.rglob("*.json"))


ZIP_ESCAPES = {
    "dotdot": [("../evil", b"x", stat.S_IFREG | 0o644)],
    "backslash-dotdot": [("..\\evil", b"x", stat.S_IFREG | 0o644)],
    "absolute": [("/tmp/xrun-evil-absolute", b"x", stat.S_IFREG | 0o644)],
    "drive": [("C:/evil", b"x", stat.S_IFREG | 0o644)],
    "symlink-outside": [("up", b"../evil", stat.S_IFLNK | 0o777)],
    "symlink-absolute": [("up", b"/etc", stat.S_IFLNK | 0o777)],
    "write-through-symlink": [("l", b".", stat.S_IFLNK | 0o777), ("l/evil", b"x", stat.S_IFREG | 0o644)],
    "char-device": [("null", b"", stat.S_IFCHR | 0o644)],
    "fifo": [("pipe", b"", stat.S_IFIFO | 0o644)],
    "same-member-twice": [("a", b"old", stat.S_IFREG | 0o644), ("a", b"new", stat.S_IFREG | 0o644)],
}


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns when the test writes the twin
@pytest.mark.parametrize("case", sorted(ZIP_ESCAPES))
def test_zip_escapes_are_refused(cache: Cache, tmp_path: Path, case: str):
    with pytest.raises(IntegrityError, match="unsafe"):
        unpack(cache, tmp_path, zip_bytes([("ok.txt", b"fine", stat.S_IFREG | 0o644)] + ZIP_ESCAPES[case]), "e.zip")
    assert not (tmp_path / "evil").exists()
    assert not [p for p in (cache.root / "trees").rglob("*") if p.is_file() or p.is_symlink()]


def test_symlink_to_a_folder_inside_is_fine(cache: Cache, tmp_path: Path):
    members = [member("d", tarfile.DIRTYPE), member("d/x", data=b"x"), member("alias", tarfile.SYMTYPE, link="d"),
               member("d/up", tarfile.SYMTYPE, link="..")]
    tree = unpack(cache, tmp_path, tar_bytes(members), "ok.tar")
    assert (tree.path / "alias" / "x").read_bytes() == b"x"


def test_corrupt_archive_is_an_integrity_error(cache: Cache, tmp_path: Path):
    with pytest.raises(IntegrityError, match="cannot unpack"):
        unpack(cache, tmp_path, b"not an archive at all" * 100, "bad.tar.gz")
    with pytest.raises(IntegrityError, match="cannot unpack"):
        unpack(cache, tmp_path, zip_bytes([("a", b"x" * 1000, 0)])[:-30], "bad.zip")


@pytest.mark.parametrize("payload", [b"hello\n", b"", b"x" * 600, b"\x1f\x8b\x08\x00garbage"],
                         ids=["text", "empty", "600-bytes", "broken-gzip"])
def test_a_non_archive_with_unpack_is_one_line(cache: Cache, tmp_path: Path, payload: bytes):
    with pytest.raises(IntegrityError) as err:
        unpack(cache, tmp_path, payload, "data.tar")
    message = err.value.message
    assert err.value.exit_code == 3 and "corpus" in message and "cannot unpack" in message, message
    assert "\n" not in message and "drop unpack: true" in message
