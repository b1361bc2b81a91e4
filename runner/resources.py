"""Locate the data files shipped with xrun (schemas/, templates/), installed or from a checkout."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The `schemas` or `templates` folder: inside the wheel, else beside the package in a checkout."""
    for candidate in (_HERE / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"xrun's {name}/ folder is missing from the installation")
