"""RFC 3161 trusted time: ask a Time-Stamping Authority to countersign the DSSE signature, and check its answer.

The timestamp covers the signature bytes (sha256 of the DSSE `sig`), as sigstore-go, cosign and
sigstore-python expect, and travels in the Sigstore bundle's
`verificationMaterial.timestampVerificationData.rfc3161Timestamps[].signedTimestamp` as the DER
TimeStampResp. It proves the signature existed at the TSA's time, so a key that leaks later cannot
sign earlier runs unnoticed. The ASN.1 and CMS work is rfc3161-client's (pyca), not ours.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import EnvironmentProblem, IntegrityError, UsageError
from runner.userfiles import read_user_file

if TYPE_CHECKING:  # loaded where a certificate is read: a run without --tsa needs none of it
    from cryptography import x509

TSA_ENV = "XRUN_TSA_URL"
QUERY_TYPE = "application/timestamp-query"  # RFC 3161 §3.4
REQUEST_TIMEOUT = 20.0
ATTEMPTS = 3  # a TSA that hiccups once is retried; one that is down fails the run after a few seconds
MAX_TSA_FILE = 1 << 20


@dataclass(frozen=True)
class TrustedTsa:
    """A Time-Stamping Authority a verifier trusts: its certificate chain (TSA first, root last)."""

    chain: tuple[x509.Certificate, ...]
    source: str  # the file it came from, for messages
    valid_from: datetime | None = None  # trusted_root.json's validFor
    valid_until: datetime | None = None

    @property
    def name(self) -> str:
        """The TSA certificate's subject."""
        return self.chain[0].subject.rfc4514_string()


@dataclass(frozen=True)
class Timestamp:
    """A timestamp that verified: when, by which TSA, trusted through which file."""

    time: datetime
    authority: str
    source: str

    def to_json(self) -> dict[str, Any]:
        """For `xrun verify --json`."""
        return {"time": rfc3339(self.time), "authority": self.authority, "trustedBy": self.source}


def rfc3339(moment: datetime) -> str:
    """UTC, seconds precision, `Z`."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tsa_url(given: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The TSA to ask: --tsa, else $XRUN_TSA_URL (the CI setting), else none."""
    url = given or environ.get(TSA_ENV) or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise UsageError(f"--tsa/{TSA_ENV}: {url!r} is not an http(s) URL of an RFC 3161 Time-Stamping Authority")
    return url


def request_timestamp(url: str, signature: bytes, *, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """The TSA's DER TimeStampResp over sha256(signature), checked to answer this very query.

    A TSA that cannot be reached or refuses is an environment problem (exit 4); an answer over
    other bytes or with another nonce is an integrity failure (exit 3). Nothing is written here.
    """
    import requests
    from rfc3161_client import PKIStatus, TimestampRequestBuilder, decode_timestamp_response

    query = TimestampRequestBuilder().data(signature).nonce(nonce=True).cert_request(cert_request=True).build()
    body = _post(url, query.as_bytes(), timeout, requests)
    try:
        reply = decode_timestamp_response(body)
    except ValueError as exc:
        raise EnvironmentProblem(f"the TSA at {url} answered with something that is not an RFC 3161 "
                                 f"timestamp reply ({_first_line(exc)}); nothing was written") from None
    if reply.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        said = "; ".join(reply.status_string) or f"status {reply.status}"
        raise EnvironmentProblem(f"the TSA at {url} refused the timestamp ({said}); nothing was written")
    info = reply.tst_info
    if info.message_imprint.message != query.message_imprint.message or info.nonce != query.nonce:
        raise IntegrityError(f"the TSA at {url} answered for another query (message imprint or nonce differ); "
                             "nothing was written")
    return body


def _post(url: str, data: bytes, timeout: float, requests: Any) -> bytes:
    problem = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.5 * 2 ** (attempt - 1))
        try:
            response = requests.post(url, data=data, headers={"Content-Type": QUERY_TYPE}, timeout=timeout)
        except requests.RequestException as exc:
            problem = f"cannot reach it ({type(exc).__name__})"
            continue
        if response.status_code >= 500 or response.status_code == 429:
            problem = f"HTTP {response.status_code}"
            continue
        if response.status_code != 200:
            raise EnvironmentProblem(f"the TSA at {url} answered HTTP {response.status_code}; check --tsa/{TSA_ENV}; "
                                     "nothing was written")
        return bytes(response.content)
    raise EnvironmentProblem(f"the TSA at {url}: {problem} after {ATTEMPTS} attempts; the run's attestation was "
                             f"not written (retry, or run without --tsa/{TSA_ENV})")


# --- trusting TSAs ---------------------------------------------------------------------------

def load_tsa_chain(path: Path | str) -> TrustedTsa:
    """A PEM file holding the TSA certificate, then its intermediates and root (cosign's --timestamp-certificate-chain)."""
    path = Path(path)
    data = read_user_file(path, "TSA certificate chain", max_bytes=MAX_TSA_FILE)
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise UsageError(f"{path}: not a PEM certificate chain ({_first_line(exc)}); give the TSA's chain, "
                         "TSA certificate first, root last") from None
    return TrustedTsa(tuple(chain), str(path))


def load_trusted_root(path: Path | str) -> list[TrustedTsa]:
    """The timestampAuthorities of a Sigstore trusted_root.json (what cosign --trusted-root reads)."""
    path = Path(path)
    data = read_user_file(path, "trusted root", max_bytes=MAX_TSA_FILE)
    try:
        doc = json.loads(data)
        authorities = [_authority(entry, str(path)) for entry in doc.get("timestampAuthorities") or []]
    except (ValueError, AttributeError, TypeError, KeyError, binascii.Error) as exc:
        raise UsageError(f"{path}: not a Sigstore trusted_root.json with timestampAuthorities "
                         f"({_first_line(exc) if isinstance(exc, ValueError) else type(exc).__name__})") from None
    if not authorities:
        raise UsageError(f"{path}: the trusted root lists no timestampAuthorities; add the TSA's certChain")
    return authorities


def _authority(entry: dict[str, Any], source: str) -> TrustedTsa:
    from cryptography import x509

    certificates = entry["certChain"]["certificates"]
    chain = tuple(x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"], validate=True)) for c in certificates)
    if not chain:
        raise ValueError("a timestampAuthority has an empty certChain")
    valid = entry.get("validFor") or {}
    return TrustedTsa(chain, source, _time(valid.get("start")), _time(valid.get("end")))


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- verifying -------------------------------------------------------------------------------

def verify_timestamp(reply: bytes, signature: bytes, trusted: list[TrustedTsa]) -> Timestamp:
    """The time a trusted TSA put on sha256(signature); ValueError says why it is refused."""
    from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

    try:
        response = decode_timestamp_response(reply)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3161 timestamp reply ({_first_line(exc)})") from None
    reasons = []
    for tsa in trusted:
        builder = VerifierBuilder().tsa_certificate(tsa.chain[0])
        for intermediate in tsa.chain[1:-1]:
            builder = builder.add_intermediate_certificate(intermediate)
        builder = builder.add_root_certificate(tsa.chain[-1])
        try:
            builder.build().verify_message(response, signature)
        except (VerificationError, ValueError) as exc:
            reasons.append(f"{tsa.name}: {_first_line(exc)}")
            continue
        moment = response.tst_info.gen_time.astimezone(timezone.utc)
        if (tsa.valid_from and moment < tsa.valid_from) or (tsa.valid_until and moment > tsa.valid_until):
            reasons.append(f"{tsa.name}: the time {rfc3339(moment)} is outside the validity the trusted root gives it")
            continue
        return Timestamp(moment, tsa.name, tsa.source)
    raise ValueError("no trusted TSA verifies it (" + "; ".join(reasons) + ")")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
