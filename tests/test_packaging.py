"""The distribution: schemas and templates ship in the wheel; the flake parses."""

from __future__ import annotations

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
