"""The result types of verification, shared by verify.py and the policy rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.errors import EXIT_INTEGRITY, EXIT_OK
from runner.wire import fields_to_wire

if TYPE_CHECKING:
    from runner.attest.timestamp import Timestamp


@dataclass(frozen=True)
class Check:
    """One verification step: a name, PASS or FAIL, and why."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """`PASS  name: detail` — what `xrun verify` prints."""
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        """For `xrun verify --json`."""
        return fields_to_wire(self)


@dataclass(frozen=True)
class Verdict:
    """All checks of one verification; it passes only when every check passes."""

    checks: tuple[Check, ...]
    attestation: str = ""
    statement: dict[str, Any] | None = field(default=None, compare=False)  # the verified payload, when parsed
    timestamp: Timestamp | None = None  # the verified RFC 3161 time of the signature

    @property
    def ok(self) -> bool:
        """True when there is at least one check and all pass."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when everything passed, 3 (integrity failure) otherwise."""
        return EXIT_OK if self.ok else EXIT_INTEGRITY

    @property
    def failures(self) -> list[Check]:
        """The failing checks."""
        return [c for c in self.checks if not c.ok]

    def lines(self) -> list[str]:
        """One line per check, then a summary line."""
        failed = len(self.failures)
        summary = (f"VERIFIED: all {len(self.checks)} checks passed" if self.ok
                   else f"NOT VERIFIED: {failed} of {len(self.checks)} checks failed")
        return [c.line() for c in self.checks] + [summary]

    def to_json(self) -> dict[str, Any]:
        """For `xrun verify --json`."""
        out = {"attestation": self.attestation, "ok": self.ok, "checks": [c.to_json() for c in self.checks]}
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp.to_json()
        return out
