"""Cluster rows: submit-to-start latency of `xrun submit` vs `sbatch --wrap` of the same `docker run`,
a 4-seed sweep through Slurm vs 4 sequential local runs, and N-member sweeps (`--members 50,200`):
`xrun submit --seeds 1-N` + `xrun wait SWEEP --key K` (every member run, checked and signed) vs a
plain `sbatch --array=0-(N-1)` of the same `docker run` (wall time, one run each, side by side).

Goals: xrun adds under 1 s to a submission beyond the first build, and ≤ 0.5 s per sweep member
beyond the plain array. Starts its own one-node Slurm (tests/slurmcluster.py) and local registry,
and uses the test base image (tests/conftest.py). Run by hand:
`python bench/bench_cluster.py [--quick] [--members 50,200] [--sweeps-only]`. Slurm's scheduling delay
is in both columns.
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


def _xrun(*args: str, quiet: bool = True) -> Any:
    out = subprocess.run([sys.executable, "-m", "runner.cli", *args, "--json", *(["--quiet"] if quiet else [])],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
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


def _docker_run(image: str, out: str, seed: str) -> str:
    """The `docker run` xrun's run stage amounts to (same isolation and limits), for the plain baselines."""
    return ("docker run --rm --network none --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges "
            f"--user 65534:65534 --cpus 1 --memory 2g --pids-limit 4096 -e XRUN_SEED={seed} -e PYTHONHASHSEED={seed} "
            f"--mount type=bind,source={out},target=/outputs --workdir /workspace {image} " + shlex.join(SEEDED))


SEEDED = ["python3", "-c", "import json, os; json.dump({'value': int(os.environ['XRUN_SEED']) * 7 % 13}, "
          "open('/outputs/metrics.json', 'w'))"]


def _sweep_xrun(manifest: Path, work: Path, shared: Path, key: Path, members: int) -> float:
    start = time.perf_counter()
    submitted = _xrun("submit", str(manifest), "--backend", "slurm", "--shared-dir", str(shared), "--runs-dir",
                      str(work / f"runs-{members}"), "--seeds", f"1-{members}")
    waited = _xrun("wait", submitted["sweep"], "--runs-dir", str(work / f"runs-{members}"), "--key", str(key),
                   quiet=False)
    elapsed = time.perf_counter() - start
    if not all(r.get("attestation") for r in waited):
        raise RuntimeError(f"not every member was signed: {[r for r in waited if not r.get('attestation')][:2]}")
    return elapsed


def _sweep_sbatch(image: str, work: Path, members: int) -> float:
    outs = work / f"bare-{members}"
    for i in range(members):
        (outs / str(i)).mkdir(parents=True)
        os.chmod(outs / str(i), 0o777)
    script = work / f"bare-{members}.sbatch"
    script.write_text("#!/bin/bash\n" + _docker_run(image, f"{outs}/$SLURM_ARRAY_TASK_ID",
                                                       "$((SLURM_ARRAY_TASK_ID + 1))") + "\n")
    start = time.perf_counter()
    subprocess.run(["sbatch", "--parsable", f"--array=0-{members - 1}", "--cpus-per-task=1", "--mem=2G",
                    f"--output={work}/bare-{members}-%a.log", str(script)], check=True, capture_output=True)
    deadline = time.monotonic() + 3600
    for i in range(members):
        while not (outs / str(i) / "metrics.json").exists() or not (outs / str(i) / "metrics.json").stat().st_size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"member {i} of the plain array never wrote its output")
            time.sleep(0.05)
    return time.perf_counter() - start


def _node_overhead(runs: Path) -> str:
    """Median seconds a node's xrun spent per member before the container started and around it (run.json)."""
    from datetime import datetime

    def stamp(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timestamp()

    before = []
    for record_file in runs.glob("*/run.json"):
        record = json.loads(record_file.read_text())
        if record.get("containerStartedOn") and record.get("startedOn"):
            before.append(stamp(record["containerStartedOn"]) - stamp(record["startedOn"]))
    return f"node: median {statistics.median(before):.0f} s from node-run start to container start" if before else ""


def sweep_rows(members: list[int], work: Path, shared: Path, base: str, image: str) -> list[dict[str, Any]]:
    """N-member sweeps: xrun (submit, wait, signed) vs a plain `sbatch --array` of the same docker run."""
    from runner.attest import generate_keypair
    from experiments import probe_experiment

    key, _ = generate_keypair("ed25519", work / "keys", None)
    manifest = probe_experiment(work / "sweepN", base, command=SEEDED, outputs=[{"path": "metrics.json",
                                                                                "metrics": True}])
    rows = []
    for n in members:
        ours = _sweep_xrun(manifest, work, shared, key, n)
        print(f"{n} members: xrun {ours:.1f} s", file=sys.stderr, flush=True)
        bare = _sweep_sbatch(image, work, n)
        print(f"{n} members: plain sbatch --array {bare:.1f} s", file=sys.stderr, flush=True)
        per = (ours - bare) / n
        rows.append(row(f"{n}-member sweep: `xrun submit --seeds` + `xrun wait SWEEP --key` (all signed) vs plain "
                        f"`sbatch --array` of the same `docker run`", ours, bare, None,
                        note=f"xrun adds {per:.2f} s per member (goal ≤ 0.5 s); "
                             f"{_node_overhead(work / f'runs-{n}')}", baseline="sbatch --array"))
    return rows


def run(quick: bool = False, members: list[int] | None = None, sweeps_only: bool = False) -> list[dict[str, Any]]:
    """Submit latency and a 4-seed sweep."""
    from runner.engine.client import docker_client
    from slurmcluster import start_cluster, stop_cluster
    from experiments import probe_experiment

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
        stamp = probe_experiment(work / "stamp", base, command=STAMP, outputs=[{"path": "t.txt"}])
        first = _xrun("submit", str(stamp), "--backend", "slurm", "--shared-dir", str(shared), "--runs-dir",
                      str(work / "runs"), "--wait")  # the first build and image archive: not timed
        image = first["imageId"]
        if sweeps_only:
            return sweep_rows(members or [], work, shared, base, image)
        ours = statistics.median(_latency_xrun(stamp, work, shared, i) for i in range(runs))
        bare = statistics.median(_latency_sbatch(image, work, i) for i in range(runs))
        rows = [row("submit-to-start: `xrun submit` (warm) vs `sbatch --wrap 'docker run …'`", ours, bare, None,
                    note=f"xrun adds {(ours - bare) * 1000:.0f} ms (goal < 1 s)", baseline="sbatch --wrap")]
        sweep = probe_experiment(work / "sweep", base)
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
        return rows + sweep_rows(members or [], work, shared, base, image)
    finally:
        if "registry" in locals():
            registry.terminate()
        stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--members", default="", help="sweep sizes, e.g. 50,200 (default: no sweep rows)")
    parser.add_argument("--sweeps-only", action="store_true", help="only the N-member sweep rows")
    args = parser.parse_args()
    print(machine())
    print(markdown(run(args.quick, [int(n) for n in args.members.split(",") if n], args.sweeps_only)))
