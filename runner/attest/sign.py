"""Sign a statement and write the attestation files next to the run, all or nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.attest import dsse
from runner.attest.bundle import to_bundle
from runner.attest.files import replace_all
from runner.attest.keys import Signer
from runner.errors import EnvironmentProblem, IntegrityError


@dataclass(frozen=True)
class WrittenAttestation:
    """What write_attestation wrote."""

    attestation: Path  # provenance.intoto.jsonl
    bundle: Path | None  # provenance.sigstore.json (signed only)
    keyid: str | None  # None when unsigned
    envelope: dsse.Envelope
    timestamped: bool = False  # the bundle carries an RFC 3161 timestamp (--tsa)

    @property
    def signed(self) -> bool:
        """True when the envelope carries a signature."""
        return self.keyid is not None


def serialize_statement(statement: dict[str, Any]) -> bytes:
    """The payload bytes: compact UTF-8 JSON. These exact bytes are signed and never re-serialised."""
    return json.dumps(statement, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sign_statement(statement: dict[str, Any], signer: Signer | None) -> dsse.Envelope:
    """A DSSE envelope over the statement; unsigned (signatures: []) when signer is None."""
    envelope = dsse.sign(serialize_statement(statement), signer)
    if signer is not None and not dsse.verify_signatures(envelope, [signer.verifier()]):
        # A faulty signature must never reach disk (hardware or library fault).
        raise IntegrityError(f"the signature made with {signer.source} does not verify; nothing was written")
    return envelope


def write_attestation(statement: dict[str, Any], signer: Signer | None, attestation_path: Path,
                      bundle_path: Path | None = None, *, tsa_url: str | None = None) -> WrittenAttestation:
    """Sign and write `.intoto.jsonl` (+ the Sigstore bundle when signed), atomically as a pair.

    With a TSA, its RFC 3161 timestamp over the signature goes into the bundle; a TSA that fails
    fails the whole write (exit 4 or 3), so no attestation lacks the timestamp that was asked for.
    """
    envelope = sign_statement(statement, signer)
    files: list[tuple[Path, bytes]] = [(Path(attestation_path), (envelope.to_line() + "\n").encode("ascii"))]
    written_bundle = None
    timestamps: tuple[bytes, ...] = ()
    if tsa_url is not None and signer is not None and bundle_path is not None:
        from runner.attest.timestamp import request_timestamp

        timestamps = (request_timestamp(tsa_url, envelope.signatures[0].sig),)
    if signer is not None and bundle_path is not None:
        bundle = to_bundle(envelope, signer.keyid, timestamps)
        files.append((Path(bundle_path), (json.dumps(bundle, indent=2) + "\n").encode("ascii")))
        written_bundle = Path(bundle_path)
    try:
        replace_all(files)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write the attestation: {exc}; nothing was written") from None
    return WrittenAttestation(attestation=Path(attestation_path), bundle=written_bundle,
                              keyid=signer.keyid if signer else None, envelope=envelope, timestamped=bool(timestamps))
