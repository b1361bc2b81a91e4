"""The one key style of everything xrun writes for machines: camelCase, mapped here and nowhere else.

Every `--json` object and every record (run.json, `runs ls`, `build`, `reproduce`) is made by
`to_wire` from a typed result, so Python's snake_case field names become camelCase in one place.
Keys of mappings are data (output paths, metric names, digests' algorithms) and are never renamed.
The plan keeps its own spelling: it feeds the plan digest, and changes only with a new plan format.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from enum import Enum
from pathlib import PurePath
from typing import Any


class WireEnum(str, Enum):
    """A str-valued enum written as its value, so run.json and every `--json` object read as before.

    `str()` and f-strings give the value on every Python (3.11 changed what a str mixin formats as).
    A value xrun does not know, written by a newer xrun, reads back as a member of its own and is
    written back unchanged, as `RunRecord.extra` keeps unknown keys.
    """

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member


def camel(name: str) -> str:
    """snake_case → camelCase ('run_dir' → 'runDir', 'sha256' stays)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """camelCase → snake_case, the inverse of camel() for the names xrun uses."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def to_wire(value: Any) -> Any:
    """Plain JSON data: dataclasses by their fields (camelCase), paths and times as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        custom = getattr(value, "to_json", None)
        if callable(custom):
            return custom()
        return {camel(f.name): to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("_")}
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, Enum):
        return value.value
    return value


def fields_to_wire(obj: Any, *, omit_none: bool = False) -> dict[str, Any]:
    """A dataclass's own fields as a camelCase dict (for a to_json that adds or drops a few keys)."""
    out = {camel(f.name): to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return {k: v for k, v in out.items() if v is not None} if omit_none else out
