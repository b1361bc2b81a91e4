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

import experiments
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
    write_lock(root, alpha)
    return experiments.write_experiment(root, {"base": base, "lockfile": "requirements.txt"},
                                        files={"train.py": TRAIN}, command=["python3", "train.py"],
                                        outputs=[{"path": "out.json"}], name=name,
                                        exclude=["requirements.txt", "wheels/"])


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
    assert "wrote 3 of 3 dependency layers (" in cold  # the plain progress lines of a non-terminal
    assert "loaded the image (" in cold and loaded_bytes(cold) >= BIG * 0.9
    records = list((cache / "layers").rglob("*.json"))
    # The seed hook and venv, then one layer per wheel, the largest (beta) first; the code last.
    assert len(records) == 3
    deps = {json.loads(r.read_text())["diffId"]: json.loads(r.read_text()) for r in records}
    assert set(deps) == set(first["layers"][-4:-1])
    assert all(d["images"] == [first["imageId"]] for d in deps.values())

    # One line of code changed: the run's build writes and loads the code layer only.
    (exp / "train.py").write_text(TRAIN + "# one line changed\n")
    run = xrun("run", manifest, "--key", str(key), "--runs-dir", str(tmp_path / "runs"), cache=cache)
    assert "3 of 3 dependency layers" in run.stderr and "in the engine already" in run.stderr
    assert "wrote" not in run.stderr
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
    assert "wrote 3 of 3 dependency layers (" in scratch
    assert again["imageId"] == edited["imageId"]

    # And an auditor's rebuild of what the run recorded (assembled from scratch, never loaded): identical.
    rebuilt = xrun("rebuild", str(attestation), "--key", str(pub), "--code", str(exp), "--json",
                   cache=tmp_path / "cache-audit")
    assert json.loads(rebuilt.stdout)["identical"] is True


def test_a_bumped_wheel_rewrites_only_its_layer(tmp_path, base_image):
    exp = tmp_path / "exp"
    manifest = str(write_experiment(exp, base_image))
    cache = tmp_path / "cache"
    first = json.loads(xrun("build", manifest, "--json", cache=cache).stdout)
    write_lock(exp, "1.1")  # alpha, the smallest wheel: its layer is the top dependency layer
    bumped, after = build(manifest, cache)
    assert "2 of 3 dependency layers" in bumped and "wrote 1 of 3 dependency layers (" in bumped
    assert loaded_bytes(bumped) < BIG // 4  # beta's 4 MiB layer was not sent again
    assert after["layers"][:-2] == first["layers"][:-2] and after["layers"][-2] != first["layers"][-2]
    assert len(list((cache / "layers").rglob("*.json"))) == 4
    # `xrun cache ls` lists all four (their bytes are in the engine, the records in the cache); beta, the largest,
    # first, held by both images.
    listed = json.loads(xrun("cache", "ls", "--json", cache=cache).stdout)["layers"]
    assert {r["diffId"] for r in listed} == set(first["layers"][-4:-1]) | {after["layers"][-2]}
    assert listed[0]["size"] > BIG and len(listed[0]["images"]) == 2 and all(r["images"] for r in listed)
    assert "DEPENDENCY LAYER (in the engine)" in xrun("cache", "ls", cache=cache).stdout


def test_too_small_a_disk_is_exit_4_before_writing(tmp_path, base_image, docker_client):
    manifest = str(write_experiment(tmp_path / "exp", base_image, name=NAME + "-disk"))
    cache = tmp_path / "cache"
    proc = xrun("build", manifest, cache=cache, extra={"XRUN_BUILD_DISK_RESERVE": str(1 << 60)}, code=4)
    line = proc.stderr.strip().splitlines()[-1]
    assert str(cache / "tmp") in line and "the dependency layers need about" in line and "free" in line
    assert "Traceback" not in proc.stderr and "wrote" not in proc.stderr
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


def test_two_wheels_that_install_one_file_are_exit_2_naming_both(tmp_path):
    from runner.build.wheels import ResolvedWheel, check_overlaps
    from runner.errors import ManifestError

    first, _ = make_wheel(tmp_path / "a", "gamma", "1.0", "X = 1\n")
    second, _ = make_wheel(tmp_path / "b", "gamma", "2.0", "X = 2\n")
    wheels = [(ResolvedWheel("gamma", v, p.name, "", "0" * 64), p) for v, p in (("1.0", first), ("2.0", second))]
    with pytest.raises(ManifestError) as info:
        check_overlaps(wheels)
    assert info.value.exit_code == 2 and "gamma.py" in str(info.value)
    assert first.name in str(info.value) and second.name in str(info.value)


def test_a_long_phase_prints_periodic_lines_and_a_total_when_not_on_a_terminal(monkeypatch):
    import time

    from runner.progress import RecordingProgress, measured

    monkeypatch.setenv("XRUN_PROGRESS_INTERVAL", "0.05")
    progress = RecordingProgress()
    with measured(progress, "writing 2 of 2 dependency layers", "wrote 2 of 2 dependency layers", 4 << 20) as meter:
        meter.advance(1 << 20)
        deadline = time.monotonic() + 30  # a bound, not a timing: the ticker thread prints on its own
        while not progress.messages and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [m for kind, m in progress.messages if kind == "info"]
    assert lines[0].startswith("writing 2 of 2 dependency layers: 1.0 MiB of ~4.0 MiB, ")
    assert lines[-1].startswith("wrote 2 of 2 dependency layers (1.0 MiB of ~4.0 MiB, ") and "/s, " in lines[-1]


def _wheel_with_scripts(folder: Path) -> Path:
    """A wheel with a module, a console entry point and a `#!python` script under .data/scripts."""
    import base64
    import hashlib
    import zipfile

    dist = "delta-1.0.dist-info"
    files = {"delta.py": b"def main():\n    print('d')\n",
             "delta-1.0.data/scripts/delta-tool": b"#!python\nimport delta\ndelta.main()\n",
             f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: delta\nVersion: 1.0\n",
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{dist}/entry_points.txt": b"[console_scripts]\ndelta = delta:main\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "delta-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return wheel


def test_the_layer_holds_what_installer_puts_on_disk_records_and_scripts_included(tmp_path):
    """Installing straight into the tar gives the files, bytes and modes installer writes onto a disk."""
    import hashlib
    import io
    import tarfile

    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    from runner.build.layers import LayerWriter
    from runner.build.wheels import VENV, ResolvedWheel, target_from_facts, write_wheels

    site = f"{VENV}/lib/python3.11/site-packages"
    target = target_from_facts({
        "executable": "/usr/bin/python3.11", "version": [3, 11, 2], "implementation": "cpython",
        "soabi": "cpython-311-x86_64-linux-gnu", "platform": "linux-x86_64", "bits": 64, "libc": "glibc 2.36",
        "environment": {}, "paths": {"purelib": site, "platlib": site, "scripts": f"{VENV}/bin", "data": VENV,
                                     "include": f"{VENV}/include/python3.11"}})
    wheel = _wheel_with_scripts(tmp_path / "w")
    root = tmp_path / "root"
    scheme = {"purelib": site, "platlib": site, "scripts": f"{VENV}/bin", "data": VENV,
              "headers": f"{VENV}/include/python3.11/site/python3.11/delta"}
    with WheelFile.open(wheel) as source:
        install(source, SchemeDictionaryDestination(scheme, interpreter=f"{VENV}/bin/python", script_kind="posix",
                                                    destdir=str(root)), additional_metadata={"INSTALLER": b"xrun\n"})
    on_disk = {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), 0o755 if p.stat().st_mode & 0o111
                                          else 0o644) for p in root.rglob("*") if p.is_file()}
    out = io.BytesIO()
    layer = LayerWriter(out)
    write_wheels(target, [(ResolvedWheel("delta", "1.0", wheel.name, "", "0" * 64), wheel)], layer)
    layer.close(None)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        in_tar = {m.name: (hashlib.sha256(tar.extractfile(m).read()).hexdigest(), m.mode) for m in tar if m.isfile()}
    assert in_tar == on_disk
    assert {"opt/xrun/venv/bin/delta", "opt/xrun/venv/bin/delta-tool"} <= set(in_tar)
