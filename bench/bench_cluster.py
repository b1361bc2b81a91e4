"""Cluster rows: submit-to-start latency of `xrun submit` vs `sbatch --wrap` of the same `docker run`,
and a 4-seed sweep through Slurm vs 4 sequential local runs (wall time).

Goal: xrun adds under 1 s to a submission beyond the first build. Starts its own one-node Slurm
(tests/slurmcluster.py) and local registry, and uses the test base image (tests/conftest.py).
Run by hand: `python bench/bench_cluster.py [--quick]`. Slurm's scheduling delay is in both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import machine, markdown, row  # noqa: E402

STAMP = ["python3", "-c", "import time; open('/outputs/t.txt', 'w').write(repr(time.time()))"]


def _registry(root: Path) -> tuple[subprocess.Popen, str]:
    import requests

    from conftest import _free_port

    port = _free_port()
    (root / "config.yml").write_text(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: "
                                     f"{{rootdirectory: {root / 'data'}}}}}\nhttp: {{addr: '127.0.0.1:{port}'}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


def _base(client: Any, host: str) -> str:
    from conftest import Registry, base_archive, push_image
    from runner.build.layers import load_archive, read_archive_id

    archive = base_archive()
    image_id = read_archive_id(archive)
    try:
        client.images.get(image_id)
    except Exception:  # noqa: BLE001 - not loaded yet
        load_archive(client, archive, image_id)
    return push_image(client, Registry(host, Path("/")), image_id, "xrun-base")


def _xrun(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "runner.cli", *args, "--json", "--quiet"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def _wait_file(path: Path, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.05)
    return float(path.read_text())


def _latency_xrun(manifest: Path, work: Path, shared: Path, i: int) -> float:
    start = time.time()
    result = _xrun("submit", str(manifest), "--backend", "slurm", "--shared-dir", str(shared),
                   "--runs-dir", str(work / "runs"))
    run_dir = Path(result["runs"][0]["runDir"])
    return _wait_file(run_dir / "outputs" / "t.txt") - start


def _latency_sbatch(image: str, work: Path, i: int) -> float:
    out = work / f"bare{i}"
    out.mkdir()
    os.chmod(out, 0o777)
    cmd = ("docker run --rm --network none --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges "
           f"--user 65534:65534 --cpus 1 --memory 2g --pids-limit 4096 --mount type=bind,source={out},target=/outputs "
           f"{image} " + shlex.join(STAMP))
    start = time.time()
    subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=2G", f"--output={work}/bare{i}.log", "--wrap",
                    cmd], check=True, capture_output=True)
    return _wait_file(out / "t.txt") - start


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Submit latency and a 4-seed sweep."""
    from runner.engine.client import docker_client
    from slurmcluster import start_cluster, stop_cluster
    from test_run import write_experiment

    runs = 3 if quick else 5
    work = Path(tempfile.mkdtemp(prefix="xrun-bench-cluster-"))
    cluster = start_cluster(work / "slurm")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        (work / "registry").mkdir()
        registry, host = _registry(work / "registry")
        client = docker_client()
        base = _base(client, host)
        shared = work / "shared"
        os.environ["XRUN_CACHE_DIR"] = str(shared / "cache")
        stamp = write_experiment(work / "stamp", base, command=STAMP, outputs=[{"path": "t.txt"}])
        first = _xrun("submit", str(stamp), "--backend", "slurm", "--shared-dir", str(shared), "--runs-dir",
                      str(work / "runs"), "--wait")  # the first build and image archive: not timed
        image = first["imageId"]
        ours = statistics.median(_latency_xrun(stamp, work, shared, i) for i in range(runs))
        bare = statistics.median(_latency_sbatch(image, work, i) for i in range(runs))
        rows = [row("submit-to-start: `xrun submit` (warm) vs `sbatch --wrap 'docker run …'`", ours, bare, None,
                    note=f"xrun adds {(ours - bare) * 1000:.0f} ms (goal < 1 s)", baseline="sbatch --wrap")]
        sweep = write_experiment(work / "sweep", base)
        start = time.perf_counter()
        _xrun("submit", str(sweep), "--backend", "slurm", "--shared-dir", str(shared), "--runs-dir",
              str(work / "runs"), "--seeds", "1-4", "--wait")
        slurm_s = time.perf_counter() - start
        start = time.perf_counter()
        _xrun("submit", str(sweep), "--backend", "local", "--runs-dir", str(work / "runs-local"), "--seeds", "1-4")
        local_s = time.perf_counter() - start
        rows.append(row("4-seed sweep: Slurm job array (submit --wait, signed) vs 4 sequential local runs", slurm_s,
                        local_s, None, note=f"node declares 8 CPUs on {os.cpu_count()} real cores",
                        baseline="submit --backend local"))
        return rows
    finally:
        if "registry" in locals():
            registry.terminate()
        stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(machine())
    print(markdown(run(parser.parse_args().quick)))
