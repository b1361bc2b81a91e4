"""The distribution: schemas and templates ship in the wheel; the flake parses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_flake_parses():
    nix = shutil.which("nix-instantiate")
    if not nix:
        pytest.skip("nix-instantiate is not installed (Debian: apt-get install nix-bin)")
    proc = subprocess.run([nix, "--parse", str(REPO / "flake.nix")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_wheel_ships_schemas_and_templates(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("xrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "runner/schemas/experiment.schema.json" in names
    assert "runner/schemas/hardware-classes.json" in names
    assert "runner/templates/sitecustomize.py" in names
    assert "runner/build/layers.py" in names
    # Every module of the package ships: a sub-package missing from pyproject's list would not.
    modules = {str(p.relative_to(REPO)) for p in (REPO / "runner").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= set(names), sorted(modules - set(names))
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_works_outside_the_repository(tmp_path: Path):
    """`pip install .` then xrun from another folder: schemas, templates and the report's plotly are there."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("xrun-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    # `xrun report` works after a plain install: plotly is a dependency, not an extra.
    assert any(line.startswith("Requires-Dist: plotly") and "extra ==" not in line for line in metadata.splitlines())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The wheel's files go into the fresh venv; its dependencies come from the test venv's site-packages,
    # added as a plain path (its .pth files, among them the editable checkout's, are not read).
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "plotly").is_dir())
    (site / "deps.pth").write_text(f"{deps}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XRUN_CACHE_DIR": str(tmp_path / "cache")}

    def xrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-c", "import sys; from runner.cli import main; sys.exit(main())", *args],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import runner, plotly; print(runner.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the installed copy, not the checkout
    version = xrun("--version")
    assert version.returncode == 0 and version.stdout.startswith("xrun "), version
    schema = xrun("schema")
    assert schema.returncode == 0 and '"$schema"' in schema.stdout, schema.stderr
    plan = xrun("plan", str(REPO / "examples" / "quickstart" / "experiment.yaml"), "--json")
    assert plan.returncode == 0, plan.stderr
    assert "python3-numpy" in plan.stdout
