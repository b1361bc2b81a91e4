"""Typed results that a command composes from several library results, for its renderers.

Each is a plain dataclass: `runner/report/json.py` maps its fields to camelCase through
`runner/wire.py`, `runner/report/text.py` formats it for people.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.wire import fields_to_wire

if TYPE_CHECKING:
    from runner.build.depslayer import DepsRecord
    from runner.codetree import CodeSummary
    from runner.fetch import CacheEntry
    from runner.fetch.maintenance import Removed, VerifyResult
    from runner.hardware import HardwareClass, Host
    from runner.runs.record import RunRecord


@dataclass(frozen=True)
class Validation:
    """`xrun validate`: one manifest's verdict (name and sha256 only when valid)."""

    manifest: Path
    valid: bool
    problems: list[str]
    name: str | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """camelCase; an invalid manifest has no name or sha256."""
        return fields_to_wire(self, omit_none=True)


@dataclass(frozen=True)
class PlanView:
    """`xrun plan --json`: the plan (in its own spelling), its two digests, and what the code tree holds."""

    digest: str
    build_digest: str
    plan: dict[str, Any]
    code_tree: CodeSummary


@dataclass(frozen=True)
class HardwareView:
    """`xrun hardware`: the catalog, this host, and which classes it fits."""

    classes: dict[str, HardwareClass]
    host: Host
    fits: dict[str, bool]


@dataclass(frozen=True)
class CacheListing:
    """`xrun cache ls`."""

    root: Path
    entries: list[CacheEntry]
    layers: list[DepsRecord] = field(default_factory=list)  # dependency layers built here (held by the engine)


@dataclass(frozen=True)
class CacheCheck:
    """`xrun cache verify`."""

    ok: bool
    entries: list[VerifyResult]


@dataclass(frozen=True)
class CacheCollection:
    """`xrun cache gc`."""

    dry_run: bool
    removed: list[Removed]


@dataclass(frozen=True)
class KeyPair:
    """`xrun keygen`: the files written and the public key's id."""

    key: Path
    pub: Path
    keyid: str
    type: str
    encrypted: bool


@dataclass(frozen=True)
class RunView:
    """`xrun runs show`: a run's directory, record and plan."""

    run_dir: Path
    record: RunRecord
    plan: dict[str, Any]


def seed_list(seeds: Sequence[int]) -> str:
    """'1-6, 9, 11, 12': runs of three or more consecutive seeds folded (200 members are one short line); the
    text and HTML renderers both name a sweep's seeds this way."""
    runs: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs]
    return ", ".join(parts) or "none"
