"""fetch_data: the data stage over a real plan, several schemes at once, in a bounded pool."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultserver import Fault, FaultServer

from runner.errors import FetchError, IntegrityError
from runner.fetch import BlobRequest, Cache, FetchedData, FetchOptions, fetch_blobs, fetch_data
from runner.manifest import load_manifest
from runner.plan import resolve_plan

HERE = Path(__file__).parent / "manifests"
FAST = FetchOptions(retries=2, backoff_s=0.01, timeout_s=5, parallel=4, progress=False)
CSV = b"x,y\n" + b"1,2\n" * 50_000
BIN = os.urandom(1_200_000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(20):
            data = f"image {i}\n".encode()
            info = tarfile.TarInfo(f"images/{i:03}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = make_tar()


def write_manifest(folder: Path, data: list[dict[str, Any]]) -> Path:
    raw = yaml.safe_load((HERE / "valid.yaml").read_text())
    raw["data"] = data
    shutil.copytree(HERE / "code", folder / "code", dirs_exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture()
def server():
    with FaultServer() as s:
        s.add("/train.bin", BIN)
        s.add("/images.tar.gz", TAR)
        yield s


@pytest.fixture()
def experiment(tmp_path: Path, server: FaultServer) -> Path:
    folder = tmp_path / "exp"
    (folder / "local").mkdir(parents=True)
    (folder / "local" / "labels.csv").write_bytes(CSV)
    return write_manifest(folder, [
        {"name": "labels", "uri": "local/labels.csv", "sha256": sha(CSV), "md5": hashlib.md5(CSV).hexdigest()},
        {"name": "train", "uri": server.url("/train.bin"), "sha512": hashlib.sha512(BIN).hexdigest(),
         "path": "sets/train.bin"},
        {"name": "images", "uri": server.url("/images.tar.gz"), "sha256": sha(TAR), "unpack": True},
    ])


def run(experiment: Path, cache: Cache, options: FetchOptions = FAST) -> list[FetchedData]:
    return fetch_data(resolve_plan(load_manifest(experiment)), cache, options)


def test_fetch_data_returns_what_the_run_and_the_attestation_need(experiment: Path, tmp_path: Path,
                                                                   server: FaultServer):
    cache = Cache(tmp_path / "cache")
    labels, train, images = run(experiment, cache)
    assert (labels.name, labels.algorithm, labels.hexdigest, labels.size) == ("labels", "sha256", sha(CSV), len(CSV))
    assert labels.container_path == "/data/labels" and labels.host_path.read_bytes() == CSV
    assert labels.uri == "local/labels.csv" and not labels.unpacked and not labels.cache_hit
    assert train.algorithm == "sha512" and train.container_path == "/data/sets/train.bin"
    assert train.host_path == cache.blob_path("sha512", hashlib.sha512(BIN).hexdigest())
    assert images.unpacked and images.host_path == cache.tree_path("sha256", sha(TAR))
    assert (images.host_path / "images" / "007.txt").read_bytes() == b"image 7\n"
    assert images.size == len(TAR) and images.to_json()["digest"] == {"sha256": sha(TAR)}

    again = run(experiment, cache)
    assert [d.cache_hit for d in again] == [True, True, True]
    assert [(d.host_path, d.hexdigest) for d in again] == [(d.host_path, d.hexdigest) for d in (labels, train, images)]
    assert server.count() == 2


def test_unpacked_tree_serves_without_its_blob(experiment: Path, tmp_path: Path, server: FaultServer):
    cache = Cache(tmp_path / "cache")
    images = run(experiment, cache)[2]
    os.unlink(cache.blob_path("sha256", sha(TAR)))  # e.g. removed to save space
    again = run(experiment, cache)[2]
    assert again.cache_hit and again.host_path == images.host_path and again.size == len(TAR)
    assert server.count("/images.tar.gz") == 1


def test_no_data_items(tmp_path: Path):
    path = write_manifest(tmp_path, [])
    assert fetch_data(resolve_plan(load_manifest(path)), Cache(tmp_path / "c"), FAST) == []


def test_pool_is_bounded(tmp_path: Path, server: FaultServer):
    items = []
    for i in range(6):
        body = os.urandom(200_000)
        server.add(f"/part{i}.bin", body)
        server.fault(f"/part{i}.bin", Fault("slow", delay=0.05, chunk=50_000))
        items.append({"name": f"part{i}", "uri": server.url(f"/part{i}.bin"), "sha256": sha(body)})
    path = write_manifest(tmp_path, items)
    fetched = fetch_data(resolve_plan(load_manifest(path)), Cache(tmp_path / "c"),
                         FetchOptions(parallel=2, retries=1, backoff_s=0.01, progress=False))
    assert [f.name for f in fetched] == [f"part{i}" for i in range(6)]
    assert server.max_in_flight == 2


def test_a_failure_stops_the_others_and_the_most_serious_error_leads(tmp_path: Path, server: FaultServer):
    server.add("/slow.bin", BIN)
    server.fault("/slow.bin", Fault("slow", delay=0.2, chunk=50_000))  # ~5 s if left to run
    server.add("/wrong.bin", b"tampered")
    server.add("/gone.bin", b"")
    server.fault("/gone.bin", Fault("status", status=404, delay=0.3))  # in flight when "wrong" fails
    path = write_manifest(tmp_path, [
        {"name": "slow", "uri": server.url("/slow.bin"), "sha256": sha(BIN)},
        {"name": "gone", "uri": server.url("/gone.bin"), "sha256": sha(b"x")},
        {"name": "wrong", "uri": server.url("/wrong.bin"), "sha256": sha(b"original")},
    ])
    cache = Cache(tmp_path / "c")
    started = time.monotonic()
    with pytest.raises(IntegrityError) as err:
        fetch_data(resolve_plan(load_manifest(path)), cache, FAST)
    assert time.monotonic() - started < 3
    assert err.value.message.startswith("wrong: ")
    assert any(line.startswith("also: gone: ") and "not found" in line for line in err.value.lines)
    assert cache.lookup("sha256", sha(BIN)) is None
    # The interrupted download stays as a partial file, so the next run resumes it.
    assert cache.partial_path("sha256", sha(BIN)).exists()


def test_single_failure_is_raised_as_is(tmp_path: Path, server: FaultServer):
    path = write_manifest(tmp_path, [{"name": "gone", "uri": server.url("/gone.bin"), "sha256": sha(b"x")}])
    with pytest.raises(FetchError, match="^gone: .*not found"):
        fetch_data(resolve_plan(load_manifest(path)), Cache(tmp_path / "c"), FAST)


def test_progress_notes_on_retries(experiment: Path, tmp_path: Path, server: FaultServer,
                                   capsys: pytest.CaptureFixture[str]):
    server.fault("/train.bin", Fault("status", status=503, retry_after="0"))
    options = FetchOptions(retries=2, backoff_s=0.01, progress=True)
    run(experiment, Cache(tmp_path / "cache"), options)
    assert "train: HTTP 503" in capsys.readouterr().err


def test_quiet_prints_nothing(experiment: Path, tmp_path: Path, server: FaultServer,
                              capsys: pytest.CaptureFixture[str]):
    server.fault("/train.bin", Fault("status", status=503, retry_after="0"))
    run(experiment, Cache(tmp_path / "cache"), FetchOptions(retries=2, backoff_s=0.01, progress=True, quiet=True))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_fetch_blobs_for_wheels(tmp_path: Path, server: FaultServer):
    wheels = {f"/pkg{i}-1.0-py3-none-any.whl": os.urandom(50_000 + i) for i in range(5)}
    for path, body in wheels.items():
        server.add(path, body)
        server.fault(path, Fault("slow", delay=0.05, chunk=25_000))
    requests = [BlobRequest(f"wheel {p[1:]}", server.url(p), {"sha256": sha(b)}) for p, b in wheels.items()]
    cache = Cache(tmp_path / "c")
    blobs = fetch_blobs(cache, requests, options=FAST)
    assert [b.path.read_bytes() for b in blobs] == list(wheels.values())
    assert all(b.fetched for b in blobs) and server.max_in_flight > 1
    assert not any(b.fetched for b in fetch_blobs(cache, requests, options=FAST))
    assert fetch_blobs(cache, [], options=FAST) == []
