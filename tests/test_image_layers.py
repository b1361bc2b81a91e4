"""The dependency layer reused by content, on the real engine: a code edit writes and loads the code layer only.

Small local wheels (tests/wheelmaker.py, one of them 4 MiB) so the deps layer is much larger than the
code layer: what `docker load` is handed shows which layers were sent. `xrun` runs as a subprocess
with stderr not a terminal, so the plain progress lines are what a CI log gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.attest import generate_keypair
from wheelmaker import make_wheel

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
NAME = "img-layers"
BIG = 4 << 20
TRAIN = "import json, alpha, beta\njson.dump({'a': alpha.V, 'b': len(beta.X)}, open('/outputs/out.json', 'w'))\n"


def write_experiment(root: Path, base: str, *, alpha: str = "1.0", name: str = NAME) -> Path:
    """train.py, and a lock of two local wheels: alpha (tiny) and beta (4 MiB), outside the code tree."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(TRAIN)
    write_lock(root, alpha)
    manifest = {
        "apiVersion": "xrun/v1", "kind": "Experiment", "name": name,
        "image": {"base": base, "lockfile": "requirements.txt"},
        "code": {"path": ".", "exclude": ["requirements.txt", "wheels/"]},
        "seeds": {"global": 1}, "hardware": {"class": "cpu-1"},
        "run": {"command": ["python3", "train.py"]}, "outputs": [{"path": "out.json"}],
    }
    (root / "experiment.yaml").write_text(json.dumps(manifest, indent=2))
    return root / "experiment.yaml"


def write_lock(root: Path, alpha: str) -> None:
    """requirements.txt naming alpha==<alpha> and beta by hash."""
    alpha_wheel, alpha_hash = make_wheel(root / "wheels", "alpha", alpha, f"V = {alpha!r}\n")
    beta_wheel, beta_hash = make_wheel(root / "wheels", "beta", "1.0", f"X = {'x' * BIG!r}\n")
    (root / "requirements.txt").write_text(f"./wheels/{alpha_wheel.name} --hash=sha256:{alpha_hash}\n"
                                           f"./wheels/{beta_wheel.name} --hash=sha256:{beta_hash}\n")


def xrun(*args: str, cache: Path, extra: dict[str, str] | None = None, code: int = 0) -> subprocess.CompletedProcess:
    """xrun in a fresh process, stderr a pipe (not a terminal)."""
    env = {**os.environ, "XRUN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), **(extra or {})}
    proc = subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def build(manifest: str, cache: Path) -> tuple[str, dict]:
    """`xrun build` (its stderr: --json would make it quiet), then `xrun build --json` of the image just built."""
    stderr = xrun("build", manifest, cache=cache).stderr
    return stderr, json.loads(xrun("build", manifest, "--json", cache=cache).stdout)


def loaded_bytes(stderr: str) -> int:
    """What `docker load` was handed, from the final progress line 'loaded the image (N UNIT…'."""
    match = re.search(r"loaded the image \(([\d.]+) (B|KiB|MiB|GiB)", stderr)
    assert match, stderr
    return int(float(match[1]) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[match[2]])


def test_code_edit_loads_only_the_code_layer_and_gives_the_from_scratch_id(tmp_path, base_image, docker_client):
    exp = tmp_path / "exp"
    manifest = str(write_experiment(exp, base_image))
    cache = tmp_path / "cache"
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "keys")

    cold, first = build(manifest, cache)
    assert "wrote the dependency layer (" in cold  # the plain progress lines of a non-terminal
    assert "loaded the image (" in cold and loaded_bytes(cold) >= BIG * 0.9
    records = list((cache / "layers").rglob("*.json"))
    assert len(records) == 1
    deps = json.loads(records[0].read_text())
    assert deps["diffId"] == first["layers"][-2] and deps["images"] == [first["imageId"]]

    # One line of code changed: the run's build writes and loads the code layer only.
    (exp / "train.py").write_text(TRAIN + "# one line changed\n")
    run = xrun("run", manifest, "--key", str(key), "--runs-dir", str(tmp_path / "runs"), cache=cache)
    assert "in the engine already" in run.stderr and "wrote the dependency layer" not in run.stderr
    assert loaded_bytes(run.stderr) < BIG // 4  # the code layer, not the 4 MiB deps layer
    attestation = next((tmp_path / "runs").glob("*/provenance.intoto.jsonl"))
    rundir = attestation.parent
    assert json.loads((rundir / "outputs" / "out.json").read_text()) == {"a": "1.0", "b": BIG}
    edited = json.loads(xrun("build", manifest, "--json", cache=cache).stdout)
    assert edited["cached"] and edited["layers"][:-1] == first["layers"][:-1]
    assert edited["layers"][-1] != first["layers"][-1]

    # From scratch: the image removed, an empty cache: every layer written again, the same image ID.
    docker_client.images.remove(edited["imageId"], force=True)
    docker_client.images.remove(first["imageId"], force=True)
    scratch, again = build(manifest, tmp_path / "cache-empty")
    assert "wrote the dependency layer (" in scratch
    assert again["imageId"] == edited["imageId"]

    # And an auditor's rebuild of what the run recorded (assembled from scratch, never loaded): identical.
    rebuilt = xrun("rebuild", str(attestation), "--key", str(pub), "--code", str(exp), "--json",
                   cache=tmp_path / "cache-audit")
    assert json.loads(rebuilt.stdout)["identical"] is True


def test_a_bumped_wheel_writes_the_dependency_layer_again(tmp_path, base_image):
    exp = tmp_path / "exp"
    manifest = str(write_experiment(exp, base_image))
    cache = tmp_path / "cache"
    first = json.loads(xrun("build", manifest, "--json", cache=cache).stdout)
    write_lock(exp, "1.1")
    bumped, after = build(manifest, cache)
    assert "wrote the dependency layer (" in bumped and "in the engine already" not in bumped
    assert after["layers"][-2] != first["layers"][-2]
    assert len(list((cache / "layers").rglob("*.json"))) == 2


def test_too_small_a_disk_is_exit_4_before_writing(tmp_path, base_image, docker_client):
    manifest = str(write_experiment(tmp_path / "exp", base_image, name=NAME + "-disk"))
    cache = tmp_path / "cache"
    proc = xrun("build", manifest, cache=cache, extra={"XRUN_BUILD_DISK_RESERVE": str(1 << 60)}, code=4)
    line = proc.stderr.strip().splitlines()[-1]
    assert str(cache / "tmp") in line and "the dependency layer needs about" in line and "free" in line
    assert "Traceback" not in proc.stderr and "wrote the dependency layer" not in proc.stderr
    assert list((cache / "tmp").iterdir()) == []
    assert not (cache / "layers").exists()
    assert docker_client.images.list(name=f"xrun/{NAME}-disk") == []


@pytest.fixture(autouse=True, scope="module")
def _cleanup(docker_client):
    yield
    for img in docker_client.images.list(name=f"xrun/{NAME}") + docker_client.images.list(name=f"xrun/{NAME}-disk"):
        try:
            docker_client.images.remove(img.id, force=True)
        except Exception:  # noqa: BLE001
            pass


def test_a_killed_builds_folder_counts_in_cache_gc(tmp_path):
    from runner.fetch import Cache, gc_cache

    cache = Cache(tmp_path / "cache")
    stale = cache.root / "tmp" / "xrun-build-abc"
    stale.mkdir(parents=True)
    (stale / "deps.tar").write_bytes(b"x" * 5000)
    os.utime(stale, (1.0e9, 1.0e9))
    dry = gc_cache(cache, keep=set(), older_than_s=3600, dry_run=True)
    assert [(r.kind, r.path, r.size) for r in dry] == [("partial", stale, 5000)] and stale.exists()
    gc_cache(cache, keep=set(), older_than_s=3600)
    assert not stale.exists()
