"""The build stage: a cold `build_image` with a 20-wheel lock (fetch + build) and a warm one of the same plan.

- cold: empty wheel cache, no image tag, no Docker layer cache (each repetition's image is removed).
  Baseline: the `docker build` step alone inside that same build, so the ratio is xrun's whole build
  (index lookups, downloads, hashing, inspecting the base, the installer layout) over Docker's part.
  No goal: it is reported.
- warm: the same plan again. Goal: no build at all, well under a second beyond Docker's own API
  latency; the baseline is one `images.get` of the tag (the inspect xrun cannot avoid), and the row
  passes when xrun spends less than 0.25 s more than that.

The base is the test base (bootstrapped from Debian packages, as in tests/conftest.py) pinned by
image ID through `image.bootstrap.imageId`, so no registry is needed; the lock is
written for 20 small packages pinned below, their wheels' hashes read from PyPI's simple API (PEP 691).
Run by hand: `python bench/bench_build.py [--quick]`.

`--real [sci|torch]` (never part of `python -m bench`: it downloads hundreds of MB, torch about 3 GB)
compiles a real lock with `uv pip compile --generate-hashes` at bench time (uv pip-installed into a
bench venv) and measures, side by side, against what a user would script:
- cold build: `xrun build` with an empty cache vs `pip install --no-deps --require-hashes --target`
  (fetching the same wheels) + `docker build` with a `COPY` of that folder and of the code (goal ≤ 0.7);
- edit → result: one line of train.py changed, then `xrun run`, vs `docker build` (the venv layer
  cached, `COPY` of the code) + `docker run` of the same training (goal ≤ 1.2);
- one wheel bumped (tzdata for sci, sympy for torch), everything else cached: `xrun build` vs
  `pip install --target` of the new lock + `docker build`;
- peak disk (the filesystem's used bytes, sampled) and peak RSS of xrun during the cold build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import machine, markdown, median_s, row  # noqa: E402

# Twenty packages with wheels for CPython 3.11 on Linux: pure ones and a few with manylinux wheels.
PINS = ["six==1.16.0", "attrs==23.2.0", "idna==3.7", "certifi==2024.2.2", "charset-normalizer==3.3.2",
        "urllib3==2.2.1", "requests==2.31.0", "packaging==24.0", "pyparsing==3.1.2", "python-dateutil==2.9.0.post0",
        "pytz==2024.1", "tzdata==2024.1", "iniconfig==2.0.0", "pluggy==1.5.0", "click==8.1.7",
        "itsdangerous==2.2.0", "markupsafe==2.1.5", "jinja2==3.1.4", "wcwidth==0.2.13", "tomli-w==1.0.0"]
IMPORTS = ["six", "attrs", "idna", "certifi", "charset_normalizer", "urllib3", "requests", "packaging", "pyparsing",
           "dateutil", "pytz", "tzdata", "iniconfig", "pluggy", "click", "itsdangerous", "markupsafe", "jinja2",
           "wcwidth", "tomli_w"]
WARM_EXTRA_GOAL_S = 0.25


def write_lock(path: Path) -> None:
    """A `--require-hashes` requirements lock of PINS, every wheel's sha256 from PyPI's simple API."""
    from runner.build.wheels import _query_index, index_session

    lines = []
    with index_session() as session:
        for pin in PINS:
            name, version = pin.split("==")
            hashes = sorted(f["sha256"] for f in _query_index(session, "https://pypi.org/simple", name, version))
            lines.append(pin + "".join(f" \\\n    --hash=sha256:{h}" for h in hashes))
    path.write_text("\n".join(lines) + "\n")


def write_experiment(root: Path, base_id: str, lock: Path, salt: str) -> Path:
    """An experiment with the 20-wheel lock over the base pinned by ID; `salt` makes its tag unique."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(f"# {salt}\nimport " + ", ".join(IMPORTS) + "\nprint('ok')\n")
    (root / "requirements.lock").write_text(lock.read_text())
    image = {"bootstrap": {"suite": "bookworm", "packages": ["python3", "python3-numpy"], "imageId": base_id},
             "lockfile": "requirements.lock"}
    manifest = {"apiVersion": "xrun/v1", "kind": "Experiment", "name": "bench-build", "image": image,
                "code": {"path": ".", "exclude": ["requirements.lock"]},
                "seeds": {"global": 1}, "hardware": {"class": "cpu-1"}, "run": {"command": ["python3", "train.py"]},
                "outputs": [{"path": "out.txt"}]}
    (root / "experiment.yaml").write_text(json.dumps(manifest))
    return root / "experiment.yaml"


def _base(client: Any) -> str:
    """The test base by image ID (bootstrapped and cached per machine by the test fixture's code)."""
    import docker.errors

    from conftest import base_archive
    from runner.build.layers import load_archive, read_archive_id

    archive = base_archive()
    image_id = read_archive_id(archive)
    try:
        client.images.get(image_id)
    except docker.errors.ImageNotFound:
        load_archive(client, archive, image_id)
    return image_id


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Cold and warm build_image rows."""
    from runner.build import image as image_mod
    from runner.engine.client import docker_client
    from runner.fetch import Cache
    from runner.manifest import load_manifest
    from runner.plan import resolve_plan

    client = docker_client()
    base_id = _base(client)
    cold_runs = 1 if quick else 3
    warm_runs = 10 if quick else 30
    docker_times: list[float] = []
    real_build = image_mod.load_assembly

    def timed_build(*args: Any, **kwargs: Any) -> str:
        start = time.perf_counter()
        try:
            return real_build(*args, **kwargs)
        finally:
            docker_times.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="xrun-bench-build-") as work:
        lock = Path(work) / "requirements.lock"
        write_lock(lock)
        cold: list[float] = []
        built = None
        image_mod.load_assembly = timed_build  # type: ignore[assignment]
        try:
            for i in range(cold_runs):
                manifest = write_experiment(Path(work) / f"exp{i}", base_id, lock, f"{time.time()} {i}")
                plan = resolve_plan(load_manifest(manifest))
                cache = Cache(Path(work) / f"cache{i}")  # empty: every wheel is downloaded
                start = time.perf_counter()
                built = image_mod.build_image(plan, cache, client, quiet=True)
                cold.append(time.perf_counter() - start)
                assert not built.cached and len(built.wheels) == 20, built.wheels
                out = client.containers.run(built.id, ["python3", "train.py"], network_mode="none", remove=True,
                                            user="65534:65534")
                assert out.strip() == b"ok", out
                if i < cold_runs - 1:  # no Docker layer cache for the next repetition
                    client.images.remove(built.id, force=True)
        finally:
            image_mod.load_assembly = real_build  # type: ignore[assignment]
        assert built is not None
        warm = median_s(lambda: _warm(image_mod, plan, cache, client), warm_runs)
        inspect = median_s(lambda: client.images.get(built.tag), warm_runs)
        client.images.remove(built.id, force=True)
    cold_s, docker_s = statistics.median(cold), statistics.median(docker_times)
    warm_row = row("warm `build_image` of an unchanged plan (no build)", warm, inspect, None,
                   note=f"{(warm - inspect) * 1000:.1f} ms beyond one image inspect; goal < "
                        f"{WARM_EXTRA_GOAL_S * 1000:.0f} ms", baseline="docker inspect")
    warm_row["goal"] = f"+{WARM_EXTRA_GOAL_S * 1000:.0f} ms"
    warm_row["pass"] = warm - inspect < WARM_EXTRA_GOAL_S
    return [
        row("cold `build_image`, 20-wheel requirements lock (index + fetch + layout + assemble + load)", cold_s, docker_s,
            None, note=f"fetch/inspect/layout {cold_s - docker_s:.2f} s; {len(PINS)} wheels; empty cache, "
                       "no layer cache", baseline="its docker load step"),
        warm_row,
    ]


def _warm(image_mod: Any, plan: Any, cache: Any, client: Any) -> None:
    built = image_mod.build_image(plan, cache, client, quiet=True)
    assert built.cached


# --- a real environment, compiled by uv at bench time ---------------------------------------------

REAL_SETS = {"sci": (["numpy", "scipy", "pandas"], "tzdata"), "torch": (["torch==2.*"], "sympy")}
REAL_TRAIN = {
    "sci": "import numpy as np, pandas as pd, scipy.linalg\n"
           "a = np.random.default_rng(1).standard_normal((300, 300))\n"
           "x = scipy.linalg.solve(a, a.sum(axis=1))\n"
           "pd.DataFrame({'x': x}).describe().to_csv('/outputs/out.csv')\n",
    "torch": "import torch\ntorch.manual_seed(1)\n"
             "net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))\n"
             "opt = torch.optim.SGD(net.parameters(), lr=0.05)\nx = torch.randn(512, 16); y = x.sum(1, keepdim=True)\n"
             "for _ in range(50):\n    opt.zero_grad(); loss = ((net(x) - y) ** 2).mean(); loss.backward(); opt.step()\n"
             "open('/outputs/out.csv', 'w').write(f'{loss.item():.6f}\\n')\n",
}


def sh(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout (stderr shown on failure)."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def timed(fn: Any) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def uv_compile(work: Path, requirements: list[str], out: Path) -> None:
    """A hash-locked requirements file for CPython 3.11 on manylinux_2_28 x86_64, by uv."""
    uv = work / "uv-venv" / "bin" / "uv"
    if not uv.exists():
        sh(sys.executable, "-m", "venv", work / "uv-venv")
        sh(work / "uv-venv" / "bin" / "pip", "install", "-q", "uv")
    (work / "requirements.in").write_text("\n".join(requirements) + "\n")
    sh(uv, "pip", "compile", work / "requirements.in", "--generate-hashes", "--python-version", "3.11",
       "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--quiet", "-o", out)


def locked_version(lock: Path, name: str) -> str:
    """The version a lock pins for name."""
    for line in lock.read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise SystemExit(f"{lock}: {name} is not in the lock")


class DiskPeak:
    """The filesystem's peak used bytes above the start, sampled every 0.2 s."""

    def __init__(self, path: Path) -> None:
        self._path, self.peak = path, 0
        self._start = shutil.disk_usage(path).used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, shutil.disk_usage(self._path).used - self._start)

    def __enter__(self) -> "DiskPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def xrun_cli(*args: str | Path, cache: Path) -> float:
    """`xrun ARGS` in a fresh process (as a user runs it); its peak RSS in bytes (GNU time)."""
    env = {**os.environ, "XRUN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    out = subprocess.run(["/usr/bin/time", "-f", "XRUN-RSS %M", sys.executable, "-m", "runner.cli",
                          *map(str, args)], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"xrun {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return float(out.stderr.rsplit("XRUN-RSS ", 1)[1].split()[0]) * 1024


def reference_dir(ref: Path, base_tag: str, lock: Path, code: Path) -> None:
    """What a user scripts: wheels fetched and installed by pip into venv/, a Dockerfile copying it and the code."""
    shutil.rmtree(ref / "venv", ignore_errors=True)
    ref.mkdir(parents=True, exist_ok=True)
    sh(sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--no-deps", "--require-hashes",
       "--only-binary=:all:", "--target", ref / "venv", "-r", lock)
    shutil.copytree(code, ref / "code", dirs_exist_ok=True)
    (ref / "Dockerfile").write_text(f"FROM {base_tag}\nCOPY venv/ /opt/venv/\nENV PYTHONPATH=/opt/venv\n"
                                    "WORKDIR /workspace\nCOPY code/ /workspace/\n")


def run_real(which: str, edits: int) -> list[dict[str, Any]]:
    """The cold / edit → result / bumped rows for a real lock compiled by uv now."""
    from runner.engine.client import docker_client

    client = docker_client()
    base_id = _base(client)
    base_tag = "xrun-bench-base:real"
    client.images.get(base_id).tag("xrun-bench-base", "real")
    requirements, bump = REAL_SETS[which]
    with tempfile.TemporaryDirectory(prefix="xrun-bench-real-", dir=os.environ.get("XRUN_BENCH_DIR")) as tmp:
        work = Path(tmp)
        lock = work / "lock-a.txt"
        uv_compile(work, requirements, lock)
        old = locked_version(lock, bump)
        lock_b = work / "lock-b.txt"
        uv_compile(work, requirements + [f"{bump}<{old}"], lock_b)
        wheels = sum(1 for line in lock.read_text().splitlines() if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==", line))

        exp = work / "exp"
        exp.mkdir()
        (exp / "train.py").write_text(REAL_TRAIN[which])
        shutil.copy(lock, exp / "requirements.lock")
        manifest = {"apiVersion": "xrun/v1", "kind": "Experiment", "name": "bench-real",
                    "image": {"bootstrap": {"suite": "bookworm", "packages": ["python3", "python3-numpy"],
                                            "imageId": base_id}, "lockfile": "requirements.lock"},
                    "code": {"path": ".", "exclude": ["requirements.lock"]}, "seeds": {"global": 1},
                    "hardware": {"class": "cpu-2"}, "run": {"command": ["python3", "train.py"], "timeout": "30m"},
                    "outputs": [{"path": "out.csv"}]}
        (exp / "experiment.yaml").write_text(json.dumps(manifest))
        cache = work / "cache"

        # Cold: xrun (empty cache), then the reference (pip fetches and installs, docker build without cache).
        with DiskPeak(work) as disk:
            start = time.perf_counter()
            rss = xrun_cli("build", exp / "experiment.yaml", "--quiet", cache=cache)
            cold_xrun = time.perf_counter() - start
        built = json.loads(sh(sys.executable, "-m", "runner.cli", "build", exp / "experiment.yaml", "--json",
                              env={**os.environ, "XRUN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}, cwd=REPO))
        image_bytes = client.images.get(built["imageId"]).attrs["Size"] - client.images.get(base_id).attrs["Size"]
        ref = work / "ref"
        code = work / "code"
        code.mkdir()
        shutil.copy(exp / "train.py", code / "train.py")
        pip_s = timed(lambda: reference_dir(ref, base_tag, lock, code))
        build_s = timed(lambda: sh("docker", "build", "-q", "--no-cache", "-t", "xrun-bench-ref:real", ref))
        cold_ref = pip_s + build_s

        # Edit → result: one line of train.py changed each time.
        outputs = work / "ref-out"
        outputs.mkdir(mode=0o777)
        xrun_edit: list[float] = []
        ref_edit: list[float] = []
        for i in range(edits):
            (exp / "train.py").write_text(REAL_TRAIN[which] + f"# edit {i}\n")
            start = time.perf_counter()
            xrun_cli("run", exp / "experiment.yaml", "--quiet", "--runs-dir", work / "runs", cache=cache)
            xrun_edit.append(time.perf_counter() - start)
            (ref / "code" / "train.py").write_text(REAL_TRAIN[which] + f"# edit {i}\n")
            start = time.perf_counter()
            sh("docker", "build", "-q", "-t", "xrun-bench-ref:real", ref)
            sh("docker", "run", "--rm", "--network", "none", "-v", f"{outputs}:/outputs", "xrun-bench-ref:real",
               "python3", "train.py")
            ref_edit.append(time.perf_counter() - start)

        # One wheel bumped, everything else cached.
        shutil.copy(lock_b, exp / "requirements.lock")
        bumped_xrun = timed(lambda: xrun_cli("build", exp / "experiment.yaml", "--quiet", cache=cache))
        bumped_ref = timed(lambda: reference_dir(ref, base_tag, lock_b, code))
        bumped_ref += timed(lambda: sh("docker", "build", "-q", "-t", "xrun-bench-ref:real", ref))
        new = locked_version(lock_b, bump)

    for image in client.images.list(name="xrun/bench-real") + client.images.list(name="xrun-bench-ref"):
        client.images.remove(image.id, force=True)
    client.images.remove(base_tag)
    label = f"{which} ({', '.join(requirements)}: {wheels} wheels, image +{image_bytes / 2**30:.2f} GiB)"
    rows = [
        row(f"cold build, {label}", cold_xrun, cold_ref, 0.7,
            note=f"reference: pip fetch + install {pip_s:.1f} s, docker build {build_s:.1f} s; peak disk "
                 f"+{disk.peak / 2**30:.2f} GiB, peak RSS {rss / 2**20:.0f} MiB", baseline="pip --target + docker build"),
        row(f"edit → result, {label}", statistics.median(xrun_edit), statistics.median(ref_edit), 1.2,
            note=f"median of {edits}; one line of train.py changed, then `xrun run`",
            baseline="docker build (venv cached, COPY code) + docker run"),
        row(f"one wheel bumped ({bump} {old} → {new}), {label}", bumped_xrun, bumped_ref, None,
            note="everything else cached", baseline="pip --target + docker build"),
    ]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--real", choices=sorted(REAL_SETS), nargs="?", const="sci",
                        help="a real lock compiled by uv now (downloads: sci ~100 MB, torch ~3 GB)")
    parser.add_argument("--edits", type=int, default=5, help="edit → result repetitions (--real)")
    args = parser.parse_args()
    print(machine())
    print(markdown(run_real(args.real, args.edits) if args.real else run(args.quick)))
