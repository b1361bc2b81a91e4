"""Experiment folders for the tests: one manifest writer, and the experiments several test modules share.

Test modules import from here (and from the other helper modules beside it), never from each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.build.layers import (ImageConfig, LayerBuilder, history_entry, image_exists, load_archive,
                                 write_layer, write_load_archive)
from runner.manifest import load_manifest
from runner.plan import Plan, resolve_plan

SIX_WHEEL = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
SIX_SDIST = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926"
# One small data file most experiments mount: its text and the item that pins it.
INPUT_TEXT = "hello\n"
INPUT = {"name": "input", "uri": "input.txt", "sha256": hashlib.sha256(INPUT_TEXT.encode()).hexdigest()}


def write_experiment(root: Path, image: str | Mapping[str, Any], *, files: Mapping[str, str], command: list[str],
                     outputs: list[dict[str, Any]], name: str, seed: int = 1, cls: str = "cpu-1",
                     timeout: str | None = None, exclude: Sequence[str] = (), data: Sequence[Mapping[str, Any]] = (),
                     extra: Mapping[str, Any] | None = None) -> Path:
    """An experiment folder: the files written, a manifest naming them (JSON is YAML); the manifest's path."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    manifest = {
        "apiVersion": "xrun/v1", "kind": "Experiment", "name": name,
        "image": dict(image) if isinstance(image, Mapping) else {"base": image},
        "code": {"path": ".", "exclude": list(exclude)},
        **({"data": [dict(d) for d in data]} if data else {}),
        "seeds": {"global": seed}, "hardware": {"class": cls},
        "run": {"command": command, **({"timeout": timeout} if timeout else {})},
        "outputs": outputs, **(extra or {}),
    }
    path = root / "experiment.yaml"
    path.write_text(json.dumps(manifest, indent=2))
    return path


# The markers of a Linux CPython 3.11 on x86_64, for choosing a lock's packages.
LINUX_311 = {"implementation_name": "cpython", "implementation_version": "3.11.2", "os_name": "posix",
             "platform_machine": "x86_64", "platform_release": "6.1", "platform_system": "Linux",
             "platform_version": "#1", "python_full_version": "3.11.2", "platform_python_implementation": "CPython",
             "python_version": "3.11", "sys_platform": "linux"}


def make_run(runs: Path, run_id: str, seed: int, digest: str, loss: float, status: str = "succeeded") -> Path:
    """A finished run directory as xrun writes it (manifest copy, plan.json, run.json), no engine needed."""
    path = runs / run_id
    (path / "outputs").mkdir(parents=True)
    (path / "manifest.yaml").write_text(f"name: demo\nseeds: {{global: {seed}}}\n")
    (path / "plan.json").write_text(json.dumps({"name": "demo", "seeds": {"global": seed}}))
    (path / "run.json").write_text(json.dumps({
        "runId": run_id, "name": "demo", "status": status, "startedOn": "2026-11-23T10:00:00Z",
        "finishedOn": "2026-11-23T10:00:07Z", "outputs": {"model.npy": digest},
        "metrics": {"metrics.json": {"loss": loss}}, "host": {"cpu_count": 2}}))
    return path



# --- the probe: what the run stage's isolation tests look at ---------------------------------------

PROBE = r'''
import json, os, random, socket, sys
import numpy as np

def attempt(fn):
    try:
        fn()
        return "succeeded"
    except Exception as exc:
        return f"failed: {type(exc).__name__}"

def tcp():
    s = socket.create_connection(("1.1.1.1", 53), timeout=3)
    s.close()

def write_data():
    open("/data/input.txt", "a").write("x")

def write_root():
    open("/evil", "w").write("x")

caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
report = {
    "tcp": attempt(tcp),
    "write_data": attempt(write_data),
    "write_root": attempt(write_root),
    "cap_eff": caps,
    "uid": os.getuid(),
    "no_new_privs": [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0],
    "seed_env": os.environ.get("XRUN_SEED"),
    "hashseed": os.environ.get("PYTHONHASHSEED"),
    "random": random.random(),
    "numpy": float(np.random.rand()),
    "data": open("/data/input.txt").read(),
    "cwd": os.getcwd(),
}
os.makedirs("/outputs/more", exist_ok=True)
open("/outputs/more/b.txt", "w").write("b")
json.dump(report, open("/outputs/probe.json", "w"), sort_keys=True)
json.dump({"value": report["numpy"], "nested": {"x": 1}}, open("/outputs/metrics.json", "w"))
print("probe done")
'''


def probe_experiment(root: Path, base_image: str, *, seed: int = 1, command: list[str] | None = None,
                     timeout: str = "5m", cls: str = "cpu-1", outputs: list[dict] | None = None) -> Path:
    """A small experiment in root: the probe script, one data file, a manifest."""
    return write_experiment(
        root, base_image, name="probe", files={"probe.py": PROBE, "input.txt": INPUT_TEXT},
        exclude=["input.txt"], data=[{**INPUT, "path": "input.txt"}], seed=seed, cls=cls,
        command=command or ["python3", "probe.py"], timeout=timeout,
        outputs=outputs or [{"path": "probe.json"}, {"path": "more"}, {"path": "metrics.json", "metrics": True}])


# --- images -----------------------------------------------------------------------------------------

CODE = {"train.py": "print('hello')\n", "pkg/__init__.py": "", "pkg/util.py": "X = 1\n", "run.sh": "#!/bin/sh\n"}


def image_experiment(root: Path, image: Mapping[str, Any], *, name: str = "imgtest",
                     lock: tuple[str, str] | None = None, code: dict[str, str] | None = None) -> Path:
    """An experiment folder for the build: code files, an optional lockfile (name, text), a manifest."""
    files = dict(code or {"train.py": "print('hi')\n", "pkg/util.py": "X = 1\n"})
    image = dict(image)
    if lock is not None:
        files[lock[0]] = lock[1]
        image["lockfile"] = lock[0]
    return write_experiment(root, image, name=name, files=files, exclude=[lock[0]] if lock else [],
                            command=["python3", "train.py"], outputs=[{"path": "out.txt"}])


def plan_for(manifest: Path) -> Plan:
    """The resolved plan of a manifest file."""
    return resolve_plan(load_manifest(manifest))


def requirements_lock(wheel_hash: str = SIX_WHEEL) -> tuple[str, str]:
    """A requirements.txt pinning six 1.16.0 by its sdist's and a wheel's hash: (name, text)."""
    return ("requirements.txt", "# pip-compile --generate-hashes\n"
            f"six==1.16.0 \\\n    --hash=sha256:{SIX_SDIST} \\\n    --hash=sha256:{wheel_hash}\n")


def golden_base(client, tmp_path: Path) -> str:
    """A one-layer base from fixed bytes (no Python: nothing is probed), loaded into the engine."""
    layer = LayerBuilder()
    layer.add_bytes("etc/os-release", b"NAME=xrun-golden\n")
    layer.add_bytes("bin/true", b"#!/bin/sh\n", 0o755)
    written = write_layer(layer, tmp_path / "golden-layer.tar")
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=(written.diff_id,),
                         history=(history_entry("xrun test: golden base"),),
                         container={"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]}).to_bytes()
    archive = tmp_path / "golden-base.tar"
    image_id = write_load_archive(archive, config, [(written.diff_id, written.path)])
    if not image_exists(client, image_id):
        load_archive(client, archive, image_id)
    client.api.tag(image_id, "xrun-test/golden-base", "1", force=True)
    return image_id
