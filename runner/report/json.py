"""The `--json` renderer: typed results to JSON text in the one key style (runner/wire.py)."""

from __future__ import annotations

import json
from typing import Any

from runner.wire import to_wire


def render(value: Any) -> str:
    """Indented, key-sorted JSON of a typed result (dataclasses map to camelCase through to_wire)."""
    return json.dumps(to_wire(value), indent=2, sort_keys=True, default=str)
