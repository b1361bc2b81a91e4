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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
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
    from runner.build.bootstrap import load_archive, read_archive_id

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print(markdown(run(args.quick)))
