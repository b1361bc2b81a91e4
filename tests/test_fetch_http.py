"""fetch_blob over HTTP against a real server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer

from runner.errors import FetchError, IntegrityError, UsageError
from runner.fetch import Cache, FetchOptions, fetch_blob
from runner.fetch.cache import HAS_OFD_LOCKS
from servers import PATIENCE_S

FAST = FetchOptions(retries=3, backoff_s=0.01, timeout_s=5, progress=False)
PAYLOAD = os.urandom(1_500_000)  # more than one 1 MiB chunk
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server():
    with FaultServer() as s:
        s.add("/data.bin", PAYLOAD)
        yield s


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def leftovers(cache: Cache) -> list[Path]:
    """Every file under blobs/ and trees/: entries, partials, temporaries."""
    return sorted(p for p in cache.root.rglob("*") if p.is_file() and ("blobs" in p.parts or "trees" in p.parts))


def fetch(cache: Cache, server: FaultServer, options: FetchOptions = FAST, **digests: str):
    return fetch_blob(cache, server.url("/data.bin"), digests or {"sha256": SHA256}, name="train-set",
                      options=options)


# --- the happy path and the cache --------------------------------------------------------------------


def test_fetch_verifies_stores_read_only_and_hits_the_cache(server: FaultServer, cache: Cache):
    blob = fetch(cache, server)
    assert blob.fetched and blob.size == len(PAYLOAD)
    assert blob.path == cache.root / "blobs" / "sha256" / SHA256[:2] / SHA256
    assert blob.path.read_bytes() == PAYLOAD
    assert stat.S_IMODE(blob.path.stat().st_mode) == 0o444
    again = fetch(cache, server)
    assert not again.fetched and again.path == blob.path and again.size == blob.size
    assert server.count("/data.bin") == 1
    assert leftovers(cache) == [blob.path]
    get = server.requests("/data.bin")[0]
    assert get.range is None


_AUDIT: dict[str, object] = {"watch": None, "opened": []}


def _audit(event: str, args: tuple) -> None:
    watch = _AUDIT["watch"]
    if watch and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if str(os.fsdecode(args[0])).startswith(str(watch)):
            _AUDIT["opened"].append(os.fsdecode(args[0]))


def test_cache_hit_never_opens_or_hashes_the_blob(server: FaultServer, cache: Cache):
    blob = fetch(cache, server)
    # Audit hooks see every open() and os.open(); they cannot be removed, so this one is gated.
    sys.addaudithook(_audit)
    _AUDIT["watch"], _AUDIT["opened"] = cache.root / "blobs", []
    try:
        hit = fetch(cache, server)
    finally:
        _AUDIT["watch"] = None
    assert not hit.fetched
    assert _AUDIT["opened"] == []
    # Corrupt the entry behind xrun's back: its stat no longer matches its fingerprint, so it is
    # re-hashed, removed and fetched again (tests/test_cache_integrity.py has every kind of tampering).
    os.chmod(blob.path, 0o644)
    blob.path.write_bytes(b"x" * len(PAYLOAD))
    again = fetch(cache, server)
    assert again.fetched and again.path.read_bytes() == PAYLOAD
    assert server.count("/data.bin") == 2


def test_cache_hit_records_usage_without_touching_the_blob(server: FaultServer, cache: Cache):
    blob = fetch(cache, server)
    os.utime(blob.path, (1000, 1000))
    cache.mark_used("sha256", SHA256, when=1000)
    fetch(cache, server)
    assert blob.path.stat().st_mtime == 1000
    assert cache.last_used("sha256", SHA256) > time.time() - 60


@pytest.mark.parametrize("byte_range", [True, False], ids=["ofd-byte-range", "flock-per-entry"])
def test_threads_fetching_one_blob_download_it_once(server: FaultServer, tmp_path: Path, byte_range: bool):
    cache = Cache(tmp_path / "cache", byte_range_locks=byte_range and HAS_OFD_LOCKS)
    server.fault("/data.bin", Fault("slow", times=-1, delay=0.02, chunk=100_000))
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(cache, server))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and sum(r.fetched for r in results) == 1
    assert server.count("/data.bin") == 1


def _fetch_in_process(url: str, sha256: str, root: str, start: object, out: object) -> None:
    # spawn re-imports this module (new PAYLOAD): the digest must come from the parent.
    start.wait()
    blob = fetch_blob(Cache(Path(root)), url, {"sha256": sha256}, name="train-set", options=FAST)
    out.put((blob.fetched, str(blob.path)))


def test_processes_fetching_one_blob_download_it_once(server: FaultServer, cache: Cache):
    # Slow enough that every process asks while the first one still downloads.
    server.fault("/data.bin", Fault("slow", times=-1, delay=0.05, chunk=100_000))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_process, args=(server.url("/data.bin"), SHA256, str(cache.root), start, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=PATIENCE_S)
        assert p.exitcode == 0
    results = [out.get(timeout=5) for _ in procs]
    assert sorted(f for f, _ in results) == [False, False, True]
    assert len({path for _, path in results}) == 1
    assert server.count("/data.bin") == 1
    assert Path(results[0][1]).read_bytes() == PAYLOAD


def test_redirects_are_followed(server: FaultServer, cache: Cache):
    url = server.redirect("/latest.bin", "/data.bin")
    blob = fetch_blob(cache, url, {"sha256": SHA256}, name="train-set", options=FAST)
    assert blob.path.read_bytes() == PAYLOAD
    assert [r.status for r in server.requests()] == [302, 200]


def test_bytes_are_hashed_as_served_even_with_content_encoding(server: FaultServer, cache: Cache):
    # A .gz served with Content-Encoding: gzip (a common misconfiguration): the digest is over the file
    # as served, like `curl -s URL | sha256sum`, never over a transparently decompressed stream.
    gz = gzip.compress(PAYLOAD)
    server.add("/data.csv.gz", gz, headers={"Content-Encoding": "gzip"})
    blob = fetch_blob(cache, server.url("/data.csv.gz"), {"sha256": hashlib.sha256(gz).hexdigest()}, name="gz",
                      options=FAST)
    assert blob.path.read_bytes() == gz


def test_options_are_validated():
    for bad in ({"retries": -1}, {"parallel": 0}, {"timeout_s": 0}, {"backoff_s": -1}):
        with pytest.raises(UsageError):
            FetchOptions(**bad)


# --- failures that are final ---------------------------------------------------------------------------


@pytest.mark.parametrize("status,words", [(404, "not found"), (410, "not found"), (403, "access denied"),
                                          (401, "access denied")])
def test_not_found_and_denied_fail_at_once(server: FaultServer, cache: Cache, status: int, words: str):
    server.fault("/data.bin", Fault("status", status=status, times=-1))
    with pytest.raises(FetchError) as err:
        fetch(cache, server)
    message = err.value.message
    assert err.value.exit_code == 4
    assert words in message and str(status) in message
    assert "train-set" in message and server.url("/data.bin") in message
    assert "\n" not in message
    assert server.count("/data.bin") == 1
    assert leftovers(cache) == []


def test_missing_path_is_a_404(server: FaultServer, cache: Cache):
    with pytest.raises(FetchError, match="not found"):
        fetch_blob(cache, server.url("/nope.bin"), {"sha256": SHA256}, name="x", options=FAST)


def test_different_bytes_are_caught_and_leave_nothing(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("different_bytes"))
    with pytest.raises(IntegrityError) as err:
        fetch(cache, server)
    message = err.value.message
    actual = hashlib.sha256(bytes(b ^ 0xFF for b in PAYLOAD)).hexdigest()
    assert err.value.exit_code == 3
    for part in ("train-set", server.url("/data.bin"), SHA256, actual, f"{len(PAYLOAD)} bytes"):
        assert part in message
    assert "\n" not in message
    assert leftovers(cache) == []
    assert server.count("/data.bin") == 1  # one clean download: no reason to doubt our splicing


def test_every_given_digest_is_checked(server: FaultServer, cache: Cache):
    with pytest.raises(IntegrityError, match="md5 mismatch"):
        fetch(cache, server, sha256=SHA256, md5="0" * 32)
    assert leftovers(cache) == []
    blob = fetch(cache, server, sha256=SHA256, md5=hashlib.md5(PAYLOAD).hexdigest(),
                 sha512=hashlib.sha512(PAYLOAD).hexdigest())
    assert blob.algorithm == "sha256"


def test_md5_only_and_sha512_only_are_stored_under_their_algorithm(server: FaultServer, cache: Cache):
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    sha512 = hashlib.sha512(PAYLOAD).hexdigest()
    assert fetch(cache, server, md5=md5).path == cache.blob_path("md5", md5)
    assert fetch(cache, server, sha512=sha512).path == cache.blob_path("sha512", sha512)


def test_bad_digest_or_uri_is_a_usage_error(cache: Cache):
    with pytest.raises(UsageError, match="64 hex"):
        fetch_blob(cache, "http://127.0.0.1:1/x", {"sha256": "abc"}, name="x", options=FAST)
    with pytest.raises(UsageError, match="unknown digest"):
        fetch_blob(cache, "http://127.0.0.1:1/x", {"crc32": "abc"}, name="x", options=FAST)
    with pytest.raises(UsageError, match="not supported"):
        fetch_blob(cache, "ftp://host/x", {"sha256": SHA256}, name="x", options=FAST)
    with pytest.raises(UsageError, match="no host"):
        fetch_blob(cache, "https:///x", {"sha256": SHA256}, name="x", options=FAST)


# --- transient faults ------------------------------------------------------------------------------------


def test_503_a_few_times_is_retried(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("status", status=503, times=3, retry_after="0"))
    assert fetch(cache, server).fetched
    assert [r.status for r in server.requests("/data.bin")] == [503, 503, 503, 200]


def test_429_waits_for_retry_after(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("status", status=429, retry_after="1"))
    started = time.monotonic()
    fetch(cache, server)
    assert time.monotonic() - started >= 0.9
    assert [r.status for r in server.requests("/data.bin")] == [429, 200]


def test_retry_after_is_bounded(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("status", status=503, retry_after="3600"))
    started = time.monotonic()
    fetch(cache, server, FetchOptions(retries=2, backoff_s=0.01, max_backoff_s=0.2, progress=False))
    assert time.monotonic() - started < 5


def test_retries_are_bounded_and_the_error_says_so(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("status", status=503, times=-1, retry_after="0"))
    with pytest.raises(FetchError) as err:
        fetch(cache, server)
    assert server.count("/data.bin") == FAST.retries + 1
    assert "gave up after 4 attempts in a row" in err.value.message and "503" in err.value.message
    assert "\n" not in err.value.message
    assert cache.lookup("sha256", SHA256) is None


def test_backoff_grows(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("status", status=500, times=3))
    fetch(cache, server, FetchOptions(retries=3, backoff_s=0.1, progress=False))
    at = [r.at for r in server.requests("/data.bin")]
    gaps = [b - a for a, b in zip(at, at[1:])]
    # Equal jitter: each sleep is in [base/2, base] with base 0.1, 0.2, 0.4.
    assert gaps[0] >= 0.05 and gaps[2] >= 0.2 and gaps[2] > gaps[0]


def test_connection_refused_is_retried_then_fails(cache: Cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="gave up") as err:
        fetch_blob(cache, f"http://127.0.0.1:{port}/x", {"sha256": SHA256}, name="x", options=FAST)
    assert "refused" in err.value.message


def test_unknown_host_fails_at_once(cache: Cache):
    try:
        socket.getaddrinfo("no-such-host.invalid", 80)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this resolver answers {exc} (not 'no such name')")
    started = time.monotonic()
    with pytest.raises(FetchError, match="cannot resolve the host name"):
        fetch_blob(cache, "http://no-such-host.invalid/x.bin", {"sha256": SHA256}, name="x",
                   options=FetchOptions(retries=5, backoff_s=1, progress=False))
    assert time.monotonic() - started < 1


def test_reset_mid_stream_resumes_with_range(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("close_after", after=300_000))
    blob = fetch(cache, server)
    assert blob.path.read_bytes() == PAYLOAD
    first, second = server.requests("/data.bin")
    assert first.status == 200 and first.range is None
    assert second.status == 206 and second.range == "bytes=300000-"
    assert second.if_range  # resumes only the same version of the object


def test_connection_reset_is_retried(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("reset_after", after=300_000, times=2))
    assert fetch(cache, server).path.read_bytes() == PAYLOAD
    assert server.count("/data.bin") == 3


def test_many_breaks_with_progress_do_not_exhaust_retries(server: FaultServer, cache: Cache):
    for _ in range(8):  # more breaks than retries, each one a bit further
        server.fault("/data.bin", Fault("close_after", after=100_000))
    assert fetch(cache, server).path.read_bytes() == PAYLOAD
    assert server.count("/data.bin") == 9


def test_server_ignoring_range_restarts_cleanly(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("close_after", after=300_000))
    server.fault("/data.bin", Fault("ignore_range"))
    assert fetch(cache, server).path.read_bytes() == PAYLOAD
    first, second = server.requests("/data.bin")
    assert second.range == "bytes=300000-" and second.status == 200


def test_server_without_range_support_that_always_breaks_gives_up(cache: Cache):
    with FaultServer() as server:
        server.add("/data.bin", PAYLOAD, ranges=False)
        server.fault("/data.bin", Fault("close_after", after=300_000, times=-1))
        with pytest.raises(FetchError, match="gave up"):
            fetch(cache, server)
        # The first attempt got further than nothing (progress); then `retries` attempts without.
        assert server.count("/data.bin") == FAST.retries + 2


def test_changed_object_is_refetched_whole_via_if_range(server: FaultServer, cache: Cache):
    new = os.urandom(1_200_000)
    server.fault("/data.bin", Fault("replace", body=new, after=300_000))
    blob = fetch(cache, server, sha256=hashlib.sha256(new).hexdigest())
    assert blob.path.read_bytes() == new
    statuses = [r.status for r in server.requests("/data.bin")]
    assert statuses == [200, 200]  # If-Range did not match: the whole new version


def test_changed_length_restarts_even_when_the_server_ignores_if_range(server: FaultServer, cache: Cache):
    new = os.urandom(1_200_000)
    server.fault("/data.bin", Fault("replace", body=new, after=300_000))
    server.fault("/data.bin", Fault("ignore_if_range"))
    blob = fetch(cache, server, sha256=hashlib.sha256(new).hexdigest())
    assert blob.path.read_bytes() == new
    assert [r.status for r in server.requests("/data.bin")] == [200, 206, 200]


def test_same_length_change_spliced_is_caught_then_refetched_clean(server: FaultServer, cache: Cache):
    new = os.urandom(len(PAYLOAD))
    server.fault("/data.bin", Fault("replace", body=new, after=300_000))
    server.fault("/data.bin", Fault("ignore_if_range"))
    blob = fetch(cache, server, sha256=hashlib.sha256(new).hexdigest())
    # The splice of old and new fails the digest; one clean download settles it.
    assert blob.path.read_bytes() == new
    assert [r.status for r in server.requests("/data.bin")] == [200, 206, 200]


def test_content_length_too_large_recovers(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("wrong_length", delta=1000))
    assert fetch(cache, server).path.read_bytes() == PAYLOAD
    # The resume asks past the real end: 416, and the bytes we hold already match.
    assert [r.status for r in server.requests("/data.bin")] == [200, 416]


def test_content_length_too_small_is_a_mismatch(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("wrong_length", delta=-1000))
    with pytest.raises(IntegrityError, match=f"{len(PAYLOAD) - 1000} bytes"):
        fetch(cache, server)
    assert leftovers(cache) == []


def test_slow_server_within_the_timeout_is_fine(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("slow", delay=0.02, chunk=100_000))
    assert fetch(cache, server).fetched
    assert server.count("/data.bin") == 1


def test_stalled_server_times_out_and_resumes(server: FaultServer, cache: Cache):
    server.fault("/data.bin", Fault("stall", after=400_000, delay=2.0))
    options = FetchOptions(retries=3, backoff_s=0.01, timeout_s=0.5, progress=False)
    assert fetch(cache, server, options).path.read_bytes() == PAYLOAD
    first, second = server.requests("/data.bin")[:2]
    assert second.range is not None and second.range.startswith("bytes=")
    assert int(second.range[6:-1]) >= 400_000 - 65536


def test_partial_left_by_a_dead_process_is_resumed(server: FaultServer, cache: Cache):
    partial = cache.partial_path("sha256", SHA256)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(PAYLOAD[:500_000])
    assert fetch(cache, server).path.read_bytes() == PAYLOAD
    (get,) = server.requests("/data.bin")
    assert get.range == "bytes=500000-" and get.status == 206
    assert not partial.exists()


def test_corrupt_partial_is_caught_and_refetched_clean(server: FaultServer, cache: Cache):
    partial = cache.partial_path("sha256", SHA256)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 500_000)
    assert fetch(cache, server).path.read_bytes() == PAYLOAD
    assert [r.status for r in server.requests("/data.bin")] == [206, 200]


def test_partial_is_not_an_entry(server: FaultServer, cache: Cache):
    partial = cache.partial_path("sha256", SHA256)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(PAYLOAD)
    assert cache.lookup("sha256", SHA256) is None
    assert list(cache.entries()) == []
