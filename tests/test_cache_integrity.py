"""A cache entry is used only while it is provably the bytes that were verified (issue 15, part 1).

Each way a user (or a tool) can change an entry behind xrun's back — a byte changed in place, a
truncation, a replacement by a new inode, an edit whose mtime is set back with `touch -d` — and a
file added to an unpacked tree, for a plain data blob, an unpacked archive and a cached wheel: the
change is caught, the entry re-hashed, removed and fetched again with a warning, or exit 3 when the
source is gone. The end-to-end test runs the real Docker engine and checks what the training read
and what the attestation recorded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultserver import Fault, FaultServer

from runner.cli import main
from runner.errors import IntegrityError
from runner.fetch import BlobRequest, Cache, FetchOptions, fetch_blob, fetch_blobs, fetch_data, gc_cache, verify_cache
from runner.fetch.interface import verify_requested
from runner.manifest import load_manifest
from runner.plan import resolve_plan
from servers import PATIENCE_S

HERE = Path(__file__).parent / "manifests"
FAST = FetchOptions(retries=1, backoff_s=0.01, timeout_s=5, progress=False, verify=False)
DATA = b"sepal,petal\n" + b"5.1,3.5\n" * 20_000
WHEEL = b"PK\x03\x04 not really a wheel " + os.urandom(40_000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TREE = {"images/a.txt": b"alpha\n" * 100, "images/b.txt": b"beta\n" * 100}
TAR = make_tar(TREE)


# --- the ways to tamper with a file -------------------------------------------------------------------


def _next_clock_tick() -> None:
    """Kernels before 6.13 stamp ctime from a clock that ticks every few ms: a change in the same tick
    as xrun's fingerprint would look unchanged (see runner/fetch/cache.py). Users are never that fast."""
    time.sleep(0.02)


class _writable:
    """chmod u+w for the duration (the cache keeps entries and tree folders read-only), then back."""

    def __init__(self, path: Path) -> None:
        self.path, self.mode = path, stat.S_IMODE(os.stat(path).st_mode)

    def __enter__(self) -> None:
        os.chmod(self.path, self.mode | stat.S_IWUSR)

    def __exit__(self, *exc: object) -> None:
        os.chmod(self.path, self.mode)


def modify_in_place(path: Path) -> None:
    _next_clock_tick()
    with _writable(path), open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0x01]))


def truncate(path: Path) -> None:
    _next_clock_tick()
    with _writable(path):
        os.truncate(path, os.stat(path).st_size // 2)


def replace_inode(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    mode = stat.S_IMODE(os.stat(path).st_mode)
    with _writable(path.parent):
        new = path.with_name(".replacement")
        new.write_bytes(bytes(data))
        os.chmod(new, mode)
        os.replace(new, path)


def edit_then_touch_back(path: Path) -> None:
    """Same size, and mtime (and atime) set back to what they were: only ctime betrays it."""
    before = os.stat(path)
    modify_in_place(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "in-place": modify_in_place,
    "truncate": truncate,
    "new-inode": replace_inode,
    "touch-back": edit_then_touch_back,
}


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture()
def server():
    with FaultServer() as s:
        s.add("/iris.csv", DATA)
        s.add("/images.tar.gz", TAR)
        s.add("/pkg-1.0-py3-none-any.whl", WHEEL)
        yield s


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def write_manifest(folder: Path, data: list[dict[str, Any]]) -> Path:
    import shutil

    raw = yaml.safe_load((HERE / "valid.yaml").read_text())
    raw["data"] = data
    shutil.copytree(HERE / "code", folder / "code", dirs_exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture()
def local_item(tmp_path: Path) -> Path:
    """An experiment whose one data item is a local file (file:// scheme, relative URI)."""
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "iris.csv").write_bytes(DATA)
    return write_manifest(folder, [{"name": "iris", "uri": "iris.csv", "sha256": sha(DATA)}])


@pytest.fixture()
def http_tree(tmp_path: Path, server: FaultServer) -> Path:
    """An experiment whose one data item is an archive served over HTTP, unpacked."""
    return write_manifest(tmp_path / "tree-exp", [{"name": "images", "uri": server.url("/images.tar.gz"),
                                                   "sha256": sha(TAR), "unpack": True}])


def fetch(manifest: Path, cache: Cache, options: FetchOptions = FAST):
    [item] = fetch_data(resolve_plan(load_manifest(manifest)), cache, options)
    return item


def wheel(cache: Cache, server: FaultServer):
    """The wheel path of the image stage: runner.build.wheels.fetch_wheels."""
    from runner.lockfiles.interface import LockEntry
    from runner.build.wheels import Candidate, Chosen, fetch_wheels

    url = server.url("/pkg-1.0-py3-none-any.whl")
    chosen = Chosen(LockEntry(name="pkg", version="1.0", hashes=(f"sha256:{sha(WHEEL)}",), source="lock:1", line=1),
                    Candidate("pkg-1.0-py3-none-any.whl", url, {"sha256": sha(WHEEL)}))
    [(resolved, path)] = fetch_wheels([chosen], cache, base_dir=cache.root, options=FetchOptions(quiet=True))
    assert resolved.sha256 == sha(WHEEL)
    return path


# --- data blobs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_changed_data_blob_is_caught_and_fetched_again(tamper, local_item: Path, cache: Cache,
                                                         capsys: pytest.CaptureFixture[str]):
    first = fetch(local_item, cache)
    assert not first.cache_hit and first.host_path.read_bytes() == DATA
    assert fetch(local_item, cache).cache_hit  # untouched: a hit, nothing re-read
    tamper(first.host_path)
    assert first.host_path.read_bytes() != DATA
    capsys.readouterr()
    again = fetch(local_item, cache)
    assert not again.cache_hit and again.host_path.read_bytes() == DATA
    assert stat.S_IMODE(os.stat(again.host_path).st_mode) == 0o444
    err = capsys.readouterr().err
    assert f"xrun: warning: cache entry for data item 'iris' (sha256:{sha(DATA)[:12]}…) was modified on disk" in err
    assert len(err.strip().splitlines()) == 1
    assert fetch(local_item, cache).cache_hit  # fingerprinted again: trusted from now on


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_changed_data_blob_whose_source_is_gone_exits_3(tamper, local_item: Path, cache: Cache):
    path = fetch(local_item, cache).host_path
    tamper(path)
    (local_item.parent / "iris.csv").unlink()
    with pytest.raises(IntegrityError) as caught:
        fetch(local_item, cache)
    message = caught.value.message
    assert caught.value.exit_code == 3 and "\n" not in message
    assert "data item 'iris'" in message and str(path) in message and "modified on disk and removed" in message
    assert not path.exists()  # the changed bytes are never served, not even later


def test_a_changed_http_blob_is_fetched_again_over_http(tmp_path: Path, server: FaultServer, cache: Cache):
    manifest = write_manifest(tmp_path / "h", [{"name": "iris", "uri": server.url("/iris.csv"), "sha256": sha(DATA)}])
    path = fetch(manifest, cache).host_path
    edit_then_touch_back(path)
    assert fetch(manifest, cache).host_path.read_bytes() == DATA
    assert server.count("/iris.csv") == 2


def test_cli_fetch_says_fetched_not_hit_and_exits_3_when_the_source_is_gone(local_item: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cli-cache"))
    monkeypatch.setenv("XRUN_VERIFY_DATA", "0")  # the flag alone must turn verification on
    assert main(["fetch", str(local_item), "--quiet"]) == 0
    path = Cache.default().blob_path("sha256", sha(DATA))
    modify_in_place(path)
    capsys.readouterr()
    assert main(["fetch", str(local_item), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "fetched" in out and " hit " not in out
    assert "was modified on disk" in err
    truncate(path)
    (local_item.parent / "iris.csv").unlink()
    assert main(["fetch", str(local_item), "--quiet"]) == 3
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("xrun: error:")]
    assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in err


def test_an_intact_entry_whose_stat_changed_is_re_hashed_and_kept(local_item: Path, cache: Cache,
                                                                 capsys: pytest.CaptureFixture[str]):
    path = fetch(local_item, cache).host_path
    _next_clock_tick()
    os.chmod(path, 0o644)  # a chmod (ctime moves) without any change of content: re-hashed, sealed again
    os.utime(path, (1_000_000, 1_000_000))
    capsys.readouterr()
    item = fetch(local_item, cache)
    assert item.cache_hit and item.host_path == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert "warning" not in capsys.readouterr().err
    assert cache.probe("sha256", sha(DATA)).trusted  # fingerprinted again as it is now


def test_an_entry_of_an_older_xrun_is_re_hashed_once_then_fingerprinted(local_item: Path, cache: Cache,
                                                                         monkeypatch: pytest.MonkeyPatch):
    path = fetch(local_item, cache).host_path
    state = cache.state_path("sha256", sha(DATA), "blob")
    state.unlink()  # what an older xrun left: the entry and no fingerprint
    hashed: list[Path] = []
    real = Cache.rehash_blob
    monkeypatch.setattr(Cache, "rehash_blob", lambda self, blob: hashed.append(blob.path) or real(self, blob))
    assert fetch(local_item, cache).cache_hit and state.is_file()
    assert fetch(local_item, cache).cache_hit
    assert hashed == [path]


def test_verify_data_rehashes_what_the_fingerprint_would_trust(local_item: Path, cache: Cache,
                                                               capsys: pytest.CaptureFixture[str]):
    path = fetch(local_item, cache).host_path
    modify_in_place(path)
    # A fingerprint forged to the changed file (what no stat-based check can see): the fast path trusts it...
    cache.record_blob("sha256", sha(DATA))
    assert fetch(local_item, cache).host_path.read_bytes() != DATA
    # ...and --verify-data (FetchOptions.verify) re-hashes every entry used, so it catches it.
    capsys.readouterr()
    item = fetch(local_item, cache, FetchOptions(retries=1, progress=False, verify=True))
    assert not item.cache_hit and item.host_path.read_bytes() == DATA
    assert "was modified on disk" in capsys.readouterr().err
    assert fetch(local_item, cache, FetchOptions(retries=1, progress=False, verify=True)).cache_hit


def test_xrun_verify_data_environment_variable(monkeypatch: pytest.MonkeyPatch):
    assert verify_requested({"XRUN_VERIFY_DATA": "1"}) and verify_requested({"XRUN_VERIFY_DATA": "true"})
    assert not verify_requested({}) and not verify_requested({"XRUN_VERIFY_DATA": "0"})
    monkeypatch.setenv("XRUN_VERIFY_DATA", "1")
    assert FetchOptions().verify
    monkeypatch.delenv("XRUN_VERIFY_DATA")
    assert not FetchOptions().verify


def test_cli_verify_data_flag_rehashes(local_item: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cli-cache"))
    monkeypatch.setenv("XRUN_VERIFY_DATA", "0")  # the flag alone must turn verification on
    assert main(["fetch", str(local_item), "--quiet"]) == 0
    cache = Cache.default()
    modify_in_place(cache.blob_path("sha256", sha(DATA)))
    cache.record_blob("sha256", sha(DATA))  # forged: only a re-hash can tell
    capsys.readouterr()
    assert main(["fetch", str(local_item), "--quiet"]) == 0
    assert "hit" in capsys.readouterr().out
    assert main(["fetch", str(local_item), "--quiet", "--verify-data"]) == 0
    out, err = capsys.readouterr()
    assert "fetched" in out and "was modified on disk" in err
    assert cache.blob_path("sha256", sha(DATA)).read_bytes() == DATA


# --- unpacked trees -----------------------------------------------------------------------------------------


def add_file(tree: Path) -> None:
    folder = tree / "images"
    _next_clock_tick()
    before = os.stat(folder)
    with _writable(folder):
        (folder / "extra.txt").write_bytes(b"smuggled\n")
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))


TREE_TAMPERINGS = {**TAMPERINGS, "file-added": add_file}


def _tree_target(tree: Path, kind: str) -> Path:
    return tree if kind == "file-added" else tree / "images" / "a.txt"


@pytest.mark.parametrize("kind", TREE_TAMPERINGS.keys())
def test_a_changed_tree_is_caught_and_unpacked_again(kind: str, http_tree: Path, cache: Cache, server: FaultServer,
                                                     capsys: pytest.CaptureFixture[str]):
    tree = fetch(http_tree, cache).host_path
    assert fetch(http_tree, cache).cache_hit
    TREE_TAMPERINGS[kind](_tree_target(tree, kind))
    capsys.readouterr()
    again = fetch(http_tree, cache)
    assert not again.cache_hit and again.host_path == tree
    assert {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()} == TREE
    err = capsys.readouterr().err
    assert "xrun: warning: cache entry for data item 'images'" in err and "unpacking it again" in err
    assert server.count("/images.tar.gz") == 1  # the archive blob was intact: unpacked from it, no download
    assert fetch(http_tree, cache).cache_hit


@pytest.mark.parametrize("kind", TREE_TAMPERINGS.keys())
def test_a_changed_tree_without_its_archive_or_source_exits_3(kind: str, http_tree: Path, cache: Cache,
                                                              server: FaultServer):
    tree = fetch(http_tree, cache).host_path
    os.unlink(cache.blob_path("sha256", sha(TAR)))  # gc may drop the archive: the tree alone serves runs
    assert fetch(http_tree, cache).cache_hit
    TREE_TAMPERINGS[kind](_tree_target(tree, kind))
    server.fault("/images.tar.gz", Fault("status", status=404, times=-1))
    with pytest.raises(IntegrityError) as caught:
        fetch(http_tree, cache)
    assert caught.value.exit_code == 3 and "\n" not in caught.value.message
    assert "data item 'images'" in caught.value.message and str(tree) in caught.value.message
    assert not tree.exists()


def test_a_changed_tree_is_fetched_again_when_its_archive_is_gone(http_tree: Path, cache: Cache,
                                                                  server: FaultServer):
    tree = fetch(http_tree, cache).host_path
    os.unlink(cache.blob_path("sha256", sha(TAR)))
    truncate(tree / "images" / "b.txt")
    assert fetch(http_tree, cache).host_path.joinpath("images", "b.txt").read_bytes() == TREE["images/b.txt"]
    assert server.count("/images.tar.gz") == 2


def test_verify_data_rehashes_every_tree_file(http_tree: Path, cache: Cache):
    tree = fetch(http_tree, cache).host_path
    modify_in_place(tree / "images" / "b.txt")
    cache.record_tree("sha256", sha(TAR))  # forged fingerprint
    assert fetch(http_tree, cache).cache_hit
    item = fetch(http_tree, cache, FetchOptions(retries=1, progress=False, verify=True))
    assert not item.cache_hit and (tree / "images" / "b.txt").read_bytes() == TREE["images/b.txt"]


# --- cached wheels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_changed_wheel_is_caught_and_fetched_again(tamper, cache: Cache, server: FaultServer,
                                                     capsys: pytest.CaptureFixture[str]):
    path = wheel(cache, server)
    assert wheel(cache, server) == path and server.count("/pkg-1.0-py3-none-any.whl") == 1
    tamper(path)
    capsys.readouterr()
    assert wheel(cache, server).read_bytes() == WHEEL
    assert server.count("/pkg-1.0-py3-none-any.whl") == 2
    err = capsys.readouterr().err
    assert "xrun: warning: cache entry for wheel 'pkg-1.0-py3-none-any.whl'" in err and "modified on disk" in err


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_changed_wheel_whose_index_is_gone_exits_3(tamper, cache: Cache, server: FaultServer):
    path = wheel(cache, server)
    tamper(path)
    server.fault("/pkg-1.0-py3-none-any.whl", Fault("status", status=404, times=-1))
    with pytest.raises(IntegrityError) as caught:
        wheel(cache, server)
    assert "wheel 'pkg-1.0-py3-none-any.whl'" in caught.value.message and str(path) in caught.value.message
    assert "\n" not in caught.value.message


def test_fetch_blobs_requests_name_their_kind(cache: Cache, server: FaultServer, capsys: pytest.CaptureFixture[str]):
    request = BlobRequest("pkg.whl", server.url("/pkg-1.0-py3-none-any.whl"), {"sha256": sha(WHEEL)}, kind="wheel")
    [blob] = fetch_blobs(cache, [request], options=FAST)
    replace_inode(blob.path)
    capsys.readouterr()
    [again] = fetch_blobs(cache, [request], options=FAST)
    assert again.fetched and again.path.read_bytes() == WHEEL
    assert "cache entry for wheel 'pkg.whl'" in capsys.readouterr().err


# --- maintenance keeps fingerprints in step ---------------------------------------------------------------------


def test_cache_verify_refreshes_fingerprints_and_gc_drops_them(local_item: Path, cache: Cache, tmp_path: Path):
    path = fetch(local_item, cache).host_path
    state = cache.state_path("sha256", sha(DATA), "blob")
    _next_clock_tick()
    os.chmod(path, 0o444)
    os.utime(path, (2_000_000, 2_000_000))  # stat changed, bytes intact
    assert cache.probe("sha256", sha(DATA)).trusted is False
    assert all(r.ok for r in verify_cache(cache))
    assert cache.probe("sha256", sha(DATA)).trusted  # verified bytes: trusted again
    modify_in_place(path)
    [result] = verify_cache(cache, remove_bad=True)
    assert not result.ok and result.removed and not state.exists()
    fetch(local_item, cache)
    assert state.exists()
    gc_cache(cache, keep=set(), older_than_s=0, now=9e12)
    assert not path.exists() and not state.exists()


def test_a_fresh_entry_is_trusted_without_reading_it(cache: Cache, tmp_path: Path):
    (tmp_path / "x.bin").write_bytes(DATA)
    blob = fetch_blob(cache, "x.bin", {"sha256": sha(DATA)}, name="x", base_dir=tmp_path, options=FAST)
    probe = cache.probe("sha256", blob.hexdigest)
    assert probe is not None and probe.trusted and probe.fingerprinted


# --- end to end through the Docker engine -----------------------------------------------------------------------


@pytest.mark.docker
def test_a_run_after_tampering_reads_and_attests_the_verified_bytes(tmp_path: Path, base_image: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]):
    from runner.pipeline import RunOptions, run_experiment
    from experiments import probe_experiment

    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XRUN_VERIFY_DATA", "0")  # the flag alone must turn verification on
    manifest = probe_experiment(tmp_path / "exp", base_image)
    first = run_experiment(manifest, RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    assert json.loads((first.run_dir / "outputs" / "probe.json").read_text())["data"] == "hello\n"
    path = Cache.default().blob_path("sha256", sha(b"hello\n"))
    edit_then_touch_back(path)  # "hello\n" -> "iello\n": same size, same mtime
    assert path.read_bytes() != b"hello\n"
    capsys.readouterr()
    second = run_experiment(manifest, RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    assert "was modified on disk" in capsys.readouterr().err
    assert json.loads((second.run_dir / "outputs" / "probe.json").read_text())["data"] == "hello\n"
    line = second.attestation.read_text().splitlines()[0]
    statement = json.loads(base64.b64decode(json.loads(line)["payload"]))
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["data/input"]["digest"]["sha256"] == sha(b"hello\n")
    assert second.outputs == first.outputs  # the same bytes in, the same outputs out


def test_changed_since_fetch_names_items_written_after_the_check(local_item: Path, http_tree: Path, cache: Cache):
    from runner.fetch.stage import changed_since_fetch

    items = [fetch(local_item, cache), fetch(http_tree, cache)]
    assert changed_since_fetch(cache, items) == []
    edit_then_touch_back(items[0].host_path)
    add_file(items[1].host_path)
    assert changed_since_fetch(cache, items) == ["iris", "images"]


@pytest.mark.docker
def test_a_cache_write_while_the_training_runs_is_exit_3_and_not_attested(tmp_path: Path, base_image: str,
                                                                           monkeypatch: pytest.MonkeyPatch):
    import threading

    from runner.errors import IntegrityError
    from runner.pipeline import RunOptions, run_experiment
    from experiments import probe_experiment

    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    command = ["sh", "-c", "cat /data/input.txt > /outputs/probe.json; sleep 4; echo '{}' > /outputs/metrics.json; "
                           "mkdir -p /outputs/more; echo b > /outputs/more/b.txt"]
    manifest = probe_experiment(tmp_path / "exp", base_image, command=command)
    path = Cache.default().blob_path("sha256", sha(b"hello\n"))
    runs = tmp_path / "runs"

    def tamper_once_running() -> None:
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            if any((p / "logs" / "run.log").exists() for p in runs.glob("*")) and path.exists():
                time.sleep(1)
                edit_then_touch_back(path)
                return
            time.sleep(0.05)

    tamper = threading.Thread(target=tamper_once_running)
    tamper.start()
    with pytest.raises(IntegrityError, match="changed in the cache while the training ran") as info:
        run_experiment(manifest, RunOptions(runs_dir=runs, quiet=True))
    tamper.join()
    assert info.value.exit_code == 3 and "input" in info.value.message
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "provenance.intoto.jsonl").exists()
