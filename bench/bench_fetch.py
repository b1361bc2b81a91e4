"""Benchmark of the fetch stage (run by hand: `python bench/bench_fetch.py [--quick]`; not a test).

Rows:
  (a) cold fetch + verify of a 1 GiB file over HTTP on 127.0.0.1 vs `curl -s URL | sha256sum`
      (median of 5 after a warm-up; goal ≤ 1.10×). An extra row compares with `| openssl sha256`,
      a faster hasher than coreutils on most machines, so the ratio is not flattered by a slow baseline.
  (b) a 10,000-file data set as one tar with unpack: true, and as 10,000 file:// items
      (median of 3; reported as time and files/s against sha256sum + tar/cp doing the same work).
  (c) warm run: confirming 10 GiB of cached data is still the verified bytes vs hashing it cold
      (goal ≤ 1 %): one stat per item compared with the fingerprint recorded at verification.
      The 10 GiB are 10 sparse 1 GiB files (a few random bytes each, the rest holes) placed
      directly in the cache under their digests and fingerprinted as a verified commit does:
      no 10 GiB disk write, and hashing holes is pure CPU, so the cold baseline is if anything
      faster than a real one. (c') the same with --verify-data (every entry re-hashed), and
      (c'') the warm check of an unpacked 10,000-file tree (one stat per member) vs hashing it.
  (d) a 10,000-file directory dataset (`directory:` pinned by a tree digest): cold fetch + verify vs
      `sha256sum` of every file + `cp -r` + `sync` (goal ≤ 1.3×), and the warm re-check vs hashing it
      (goal < 1 %); (d2) and (d2') the same with 1,000 files of 1 MiB. `python bench/bench_fetch.py
      --only-directory` runs these rows alone.
`run(quick)` returns the rows as dicts for a later `bench/run` collector.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import yaml  # noqa: E402

from runner.fetch import Cache, FetchOptions, fetch_blob, fetch_data  # noqa: E402
from runner.manifest import load_manifest  # noqa: E402
from runner.plan import resolve_plan  # noqa: E402
from bench.common import row  # noqa: E402

GIB = 1 << 30
OPTIONS = FetchOptions(progress=False, quiet=True, verify=False)
VERIFY = FetchOptions(progress=False, quiet=True, verify=True)


def _serve(folder: str, ready: Any) -> None:
    """Child process: a FaultServer serving every file of folder with sendfile (no GIL sharing with xrun)."""
    from faultserver import FaultServer

    server = FaultServer().start()
    for path in Path(folder).iterdir():
        server.add_file(f"/{path.name}", path)
    ready.put(server.port)
    while True:
        time.sleep(3600)


def median_time(fn: Callable[[], Any], runs: int, warmup: int = 1, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of fn over `runs` runs after `warmup` unmeasured ones; setup runs before each, untimed."""
    times = []
    for i in range(warmup + runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def bench_http(work: Path, size: int, runs: int) -> list[dict[str, Any]]:
    """(a) cold HTTP fetch + verify vs curl | sha256sum."""
    served = work / "served"
    served.mkdir()
    blob = served / "big.bin"
    with open(blob, "wb") as f:
        for _ in range(size // (64 << 20) or 1):
            f.write(os.urandom(min(size, 64 << 20)))
    with open(blob, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=_serve, args=(str(served), ready), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ready.get(timeout=30)}/big.bin"
        cache_root = work / "cache-http"

        def fresh_cache() -> None:
            if cache_root.exists():
                shutil.rmtree(cache_root)

        def xrun() -> None:
            fetch_blob(Cache(cache_root), url, {"sha256": digest}, name="big", options=OPTIONS)

        def pipeline(hasher: str) -> Callable[[], None]:
            def go() -> None:
                out = subprocess.run(f"curl -s {url} | {hasher}", shell=True, check=True, capture_output=True,
                                     text=True).stdout
                assert digest in out, out
            return go

        ours = median_time(xrun, runs, setup=fresh_cache)
        rows = [row(f"(a) cold fetch+verify {size / GIB:.2f} GiB over HTTP", ours,
                    median_time(pipeline("sha256sum"), runs), 1.10, baseline="curl -s URL | sha256sum",
                    note=f"{size / ours / 2**20:.0f} MiB/s incl. write+fsync to the cache")]
        if shutil.which("openssl"):
            rows.append(row("(a') same, faster hasher in the baseline", ours,
                            median_time(pipeline("openssl sha256"), runs), None,
                            baseline="curl -s URL | openssl sha256", note="informational; no disk write"))
            copy = work / "curl-copy.bin"
            rows.append(row("(a'') same, baseline doing the same work", ours,
                            median_time(pipeline(f"tee {copy} | openssl sha256; sync -f {copy}"), runs), None,
                            baseline="curl | tee FILE | openssl sha256; sync",
                            note="informational; download, hash, durable write"))
        return rows
    finally:
        server.kill()
        server.join()


def _manifest(folder: Path, data: list[dict[str, Any]]) -> Path:
    (folder / "code").mkdir(exist_ok=True)
    (folder / "code" / "train.py").write_text("print('bench')\n")
    raw = {
        "apiVersion": "xrun/v1", "kind": "Experiment", "name": "bench",
        "image": {"base": "127.0.0.1:5000/x@sha256:" + "0" * 64}, "code": {"path": "code"},
        "data": data, "seeds": {"global": 1}, "hardware": {"class": "cpu-1"},
        "run": {"command": ["python3", "train.py"]}, "outputs": [{"path": "out.txt"}],
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def bench_many_files(work: Path, count: int, runs: int) -> list[dict[str, Any]]:
    """(b) many small files: one tar with unpack vs as many file:// items."""
    src = work / "many"
    (src / "files").mkdir(parents=True)
    items = []
    for i in range(count):
        data = os.urandom(1024 + (i % 7) * 512)
        name = f"f{i:05}.bin"
        (src / "files" / name).write_bytes(data)
        items.append({"name": f"f{i:05}", "uri": f"files/{name}", "sha256": hashlib.sha256(data).hexdigest()})
    tar_path = src / "set.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src / "files", arcname="files")
    tar_item = {"name": "set", "uri": "set.tar", "sha256": hashlib.sha256(tar_path.read_bytes()).hexdigest(),
                "unpack": True}
    cache_root = work / "cache-many"

    def fresh_cache() -> None:
        if cache_root.exists():
            for folder, _, _ in os.walk(cache_root):
                os.chmod(folder, 0o755)
            shutil.rmtree(cache_root)

    tar_plan = resolve_plan(load_manifest(_manifest(src, [tar_item])))
    many_plan = resolve_plan(load_manifest(_manifest(src, items)))
    out = work / "baseline-out"

    def fresh_out() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    def tar_baseline() -> None:
        subprocess.run(f"sha256sum {tar_path} >/dev/null && tar -xf {tar_path} -C {out} && sync -f {out}",
                       shell=True, check=True)

    def many_baseline() -> None:
        subprocess.run(f"cd {src}/files && find . -type f -print0 | xargs -0 sha256sum >/dev/null && "
                       f"cp -r . {out} && sync -f {out}", shell=True, check=True)

    tar_s = median_time(lambda: fetch_data(tar_plan, Cache(cache_root), OPTIONS), runs, setup=fresh_cache)
    tar_base = median_time(tar_baseline, runs, setup=fresh_out)
    many_s = median_time(lambda: fetch_data(many_plan, Cache(cache_root), OPTIONS), runs, setup=fresh_cache)
    many_base = median_time(many_baseline, runs, setup=fresh_out)
    fresh_cache()
    return [
        row(f"(b) {count:,} files as one tar, unpack: true", tar_s, tar_base, None,
            baseline="sha256sum + tar -x + sync", note=f"{count / tar_s:,.0f} files/s"),
        row(f"(b) {count:,} files as {count:,} file:// items", many_s, many_base, None,
            baseline="sha256sum each + cp + sync", note=f"{count / many_s:,.0f} files/s (parallel={OPTIONS.parallel}, "
            "each fsynced and renamed)"),
    ]


def bench_warm(work: Path, files: int, size: int, runs: int) -> list[dict[str, Any]]:
    """(c) warm presence check of files × size cached bytes vs hashing them."""
    cache = Cache(work / "cache-warm")
    staging = work / "warm-staging"
    staging.mkdir()
    paths = []
    for i in range(files):
        path = staging / f"part{i}.bin"
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
            f.truncate(size)  # the rest is a hole
        paths.append(path)

    def hash_all() -> list[str]:
        out = []
        for path in paths:
            with open(path, "rb") as f:
                out.append(hashlib.file_digest(f, "sha256").hexdigest())
        return out

    digests = hash_all()
    cold = median_time(hash_all, max(1, runs // 2), warmup=0)
    items = []
    for i, (path, digest) in enumerate(zip(paths, digests)):
        target = cache.blob_path("sha256", digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o444)
        os.rename(path, target)
        cache.record_blob("sha256", digest)  # what commit_blob does once the bytes are verified
        items.append({"name": f"part{i}", "uri": f"https://bench.invalid/part{i}.bin", "sha256": digest})
    (work / "warm").mkdir()
    plan = resolve_plan(load_manifest(_manifest(work / "warm", items)))

    def warm(options: FetchOptions) -> Callable[[], None]:
        def go() -> None:
            fetched = fetch_data(plan, cache, options)
            assert all(f.cache_hit for f in fetched)
        return go

    ours = median_time(warm(OPTIONS), runs)
    verified = median_time(warm(VERIFY), max(1, runs // 2), warmup=0)
    total = files * size
    return [row(f"(c) warm check of {total / GIB:.0f} GiB cached ({files} items)", ours, cold, 0.01,
                baseline="sha256 of the same bytes (hashlib)",
                note="sparse files; a hit = one stat + one fingerprint read per item"),
            row("(c') same with --verify-data (every entry re-hashed)", verified, cold, None,
                baseline="sha256 of the same bytes (hashlib)", note="informational: what an auditor pays")]


def bench_warm_tree(work: Path, count: int, runs: int) -> list[dict[str, Any]]:
    """(c'') warm check of an unpacked tree of `count` small files vs hashing its files."""
    src = work / "tree-src"
    src.mkdir()
    tar_path = src / "set.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(count):
            data = os.urandom(4096)
            info = tarfile.TarInfo(f"files/{i // 1000:02}/f{i:05}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    item = {"name": "set", "uri": "set.tar", "sha256": hashlib.sha256(tar_path.read_bytes()).hexdigest(),
            "unpack": True}
    plan = resolve_plan(load_manifest(_manifest(src, [item])))
    cache = Cache(work / "cache-tree")
    [fetched] = fetch_data(plan, cache, OPTIONS)
    files = [p for p in fetched.host_path.rglob("*") if p.is_file()]

    def warm() -> None:
        [again] = fetch_data(plan, cache, OPTIONS)
        assert again.cache_hit

    def hash_all() -> None:
        for path in files:
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")

    ours = median_time(warm, runs)
    cold = median_time(hash_all, runs)
    return [row(f"(c'') warm check of an unpacked {count:,}-file tree", ours, cold, None,
                baseline="sha256 of its files (hashlib, page cache warm)",
                note="one stat per member vs its fingerprint; cold hashing would also read the disk")]


def bench_directory(work: Path, count: int, runs: int, size: int | None = None) -> list[dict[str, Any]]:
    """(d) a directory dataset of `count` files pinned by one tree digest: cold fetch + verify (goal ≤ 1.3×
    `sha256sum` of every file + `cp` + `sync`) and the warm re-check (goal < 1 % of hashing it).

    Files are 1–4 KiB unless `size` is given: (d2)/(d2') use 1 MiB files, where hashing a file costs
    more than the one lstat per member that the warm check needs.
    """
    from runner.fetch.sources.listing import digest_directory, tree_digest

    tag = "" if size is None else f"-{size}"
    src = work / f"dir-src{tag}"
    for i in range(count):
        path = src / f"{i // 1000:02}" / f"f{i:05}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size if size is not None else 1024 + (i % 7) * 512))
    pin = tree_digest(digest_directory(src))
    item = {"name": "set", "directory": {"uri": str(src), "treeDigest": f"sha256:{pin}"}}
    (work / f"dir-manifest{tag}").mkdir(exist_ok=True)
    plan = resolve_plan(load_manifest(_manifest(work / f"dir-manifest{tag}", [item])))
    cache_root = work / f"cache-dir{tag}"
    out = work / f"dir-baseline-out{tag}"

    def fresh_cache() -> None:
        if cache_root.exists():
            for folder, _, _ in os.walk(cache_root):
                os.chmod(folder, 0o755)
            shutil.rmtree(cache_root)

    def fresh_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    def baseline() -> None:
        subprocess.run(f"cd {src} && find . -type f -print0 | xargs -0 sha256sum >/dev/null && "
                       f"cp -r . {out} && sync -f {out}", shell=True, check=True)

    cold = median_time(lambda: fetch_data(plan, Cache(cache_root), OPTIONS), runs, setup=fresh_cache)
    cold_base = median_time(baseline, runs, setup=fresh_out)
    fresh_cache()
    [fetched] = fetch_data(plan, Cache(cache_root), OPTIONS)
    files = [p for p in fetched.host_path.rglob("*") if p.is_file()]

    def warm() -> None:
        [again] = fetch_data(plan, Cache(cache_root), OPTIONS)
        assert again.cache_hit

    def hash_all() -> None:
        for path in files:
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")

    warm_s = median_time(warm, 5)
    hash_s = median_time(hash_all, 5)
    fresh_cache()
    what = "" if size is None else f" ({size >> 20} MiB files)"
    mark, warm_mark = ("(d)", "(d')") if size is None else ("(d2)", "(d2')")
    return [
        row(f"{mark} cold fetch + verify of a {count:,}-file directory dataset{what}", cold, cold_base, 1.3,
            baseline="sha256sum each + cp -r + sync",
            note=f"{count / cold:,.0f} files/s; one syncfs, then links into blobs/ and one rename"),
        row(f"{warm_mark} warm re-check of the {count:,}-file directory dataset{what}", warm_s, hash_s, 0.01,
            baseline="sha256 of its files (hashlib, page cache warm)", note="one stat per member vs the tree fingerprint"),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """All rows; quick shrinks the sizes (for a smoke run)."""
    with tempfile.TemporaryDirectory(prefix="xrun-bench-", dir=os.environ.get("XRUN_BENCH_DIR")) as tmp:
        work = Path(tmp)
        rows = bench_http(work, (64 << 20) if quick else GIB, 3 if quick else 5)
        rows += bench_many_files(work, 1_000 if quick else 10_000, 1 if quick else 3)
        rows += bench_warm(work, 10, (64 << 20) if quick else GIB, 5)
        rows += bench_warm_tree(work, 1_000 if quick else 10_000, 5)
        rows += bench_directory(work, 1_000 if quick else 10_000, 1 if quick else 3)
        rows += bench_directory(work, 100 if quick else 1_000, 1 if quick else 3, size=1 << 20)
        return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| what | xrun median | baseline median | baseline | ratio | goal | pass | note |",
             "|---|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        goal = f"≤ {r['goal']:.2f}" if r["goal"] is not None else "—"
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[r["pass"]]
        lines.append(f"| {r['what']} | {_secs(r['xrun_s'])} | {_secs(r['baseline_s'])} | {r['baseline']} | "
                     f"{r['ratio']:.4f} | {goal} | {verdict} | {r['note']} |")
    return "\n".join(lines)


def _secs(s: float) -> str:
    return f"{s * 1000:.2f} ms" if s < 1 else f"{s:.3f} s"


def main() -> None:
    """Print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only-directory", action="store_true", help="only the directory-dataset rows (d)")
    args = parser.parse_args()
    if args.only_directory:
        with tempfile.TemporaryDirectory(prefix="xrun-bench-", dir=os.environ.get("XRUN_BENCH_DIR")) as tmp:
            work = Path(tmp)
            rows = bench_directory(work, 1_000 if args.quick else 10_000, 1 if args.quick else 3)
            rows += bench_directory(work, 100 if args.quick else 1_000, 1 if args.quick else 3, size=1 << 20)
            print(markdown(rows))
        return
    print(markdown(run(args.quick)))


if __name__ == "__main__":
    main()
