"""DSSE v1 envelopes: PAE, signing, and the decoding rules verifiers must follow.

Spec: https://github.com/secure-systems-lab/dsse (protocol.md, envelope.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

PAYLOAD_TYPE = "application/vnd.in-toto+json"

_STD_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_URL_B64 = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


class SignsBytes(Protocol):
    """What signing needs from a key."""

    @property
    def keyid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class ChecksSignatures(Protocol):
    """What verification needs from a trusted key."""

    @property
    def keyid(self) -> str: ...

    def verify(self, signature: bytes, data: bytes) -> bool: ...


def pae(payload_type: str, payload: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body; LEN counts bytes."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def b64encode(data: bytes) -> str:
    """Standard base64 with padding: what every DSSE and Sigstore reader accepts."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE: verifiers MUST accept either)."""
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    if _STD_B64.match(text):
        alphabet = None
    elif _URL_B64.match(text):
        alphabet = b"-_"
    else:
        raise ValueError("not base64 (characters outside the standard and URL-safe alphabets, or mixed)")
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        raise ValueError("not base64 (impossible length)")
    if text != body and len(text) % 4:
        raise ValueError("not base64 (wrong padding)")
    padded = body + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64 ({exc})") from None


@dataclass(frozen=True)
class Signature:
    """One DSSE signature; keyid is an unauthenticated hint."""

    sig: bytes
    keyid: str = ""

    def to_json(self) -> dict[str, str]:
        """{"keyid": …, "sig": base64} (keyid omitted when empty)."""
        out = {"keyid": self.keyid} if self.keyid else {}
        out["sig"] = b64encode(self.sig)
        return out


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: the exact payload bytes, their type, and signatures over their PAE."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...] = ()

    def pae(self) -> bytes:
        """The bytes every signature covers."""
        return pae(self.payload_type, self.payload)

    def to_json(self) -> dict[str, Any]:
        """The DSSE JSON envelope."""
        return {"payloadType": self.payload_type, "payload": b64encode(self.payload),
                "signatures": [s.to_json() for s in self.signatures]}

    def to_line(self) -> str:
        """One compact JSON line (no newline), for .intoto.jsonl."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        """Decode a DSSE JSON envelope; ValueError says what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("a DSSE envelope must be a JSON object")
        for field in ("payload", "payloadType", "signatures"):
            if field not in obj:
                raise ValueError(f"the envelope has no {field!r}")
        if not isinstance(obj["payloadType"], str):
            raise ValueError("payloadType must be a string")
        if not isinstance(obj["signatures"], list):
            raise ValueError("signatures must be a list")
        try:
            payload = b64decode(obj["payload"])
        except ValueError as exc:
            raise ValueError(f"payload: {exc}") from None
        signatures = []
        for i, item in enumerate(obj["signatures"]):
            if not isinstance(item, dict) or "sig" not in item:
                raise ValueError(f"signatures[{i}] must be an object with 'sig'")
            keyid = item.get("keyid", "")
            if keyid is None:
                keyid = ""
            if not isinstance(keyid, str):
                raise ValueError(f"signatures[{i}].keyid must be a string")
            try:
                sig = b64decode(item["sig"])
            except ValueError as exc:
                raise ValueError(f"signatures[{i}].sig: {exc}") from None
            signatures.append(Signature(sig=sig, keyid=keyid))
        return cls(payload=payload, payload_type=obj["payloadType"], signatures=tuple(signatures))


def sign(payload: bytes, signer: SignsBytes | None, payload_type: str = PAYLOAD_TYPE) -> Envelope:
    """An envelope over exactly these payload bytes; no signer gives an unsigned envelope."""
    if signer is None:
        return Envelope(payload=payload, payload_type=payload_type)
    sig = signer.sign(pae(payload_type, payload))
    return Envelope(payload=payload, payload_type=payload_type, signatures=(Signature(sig=sig, keyid=signer.keyid),))


K = TypeVar("K", bound=ChecksSignatures)


@dataclass(frozen=True)
class Accepted(Generic[K]):
    """A signature that a trusted key verified."""

    index: int  # position in the envelope's signatures
    key: K


def verify_signatures(envelope: Envelope, keys: Iterable[K]) -> list[Accepted[K]]:
    """Every (signature, key) pair that verifies, at most one per distinct key.

    The keyid is only a hint (DSSE forbids security decisions on it): keys whose keyid matches are
    tried first, then every other key, so a signature with a foreign or missing keyid still counts.
    """
    keys = list(keys)
    message = envelope.pae()
    accepted: list[Accepted[K]] = []
    used: set[int] = set()
    for index, signature in enumerate(envelope.signatures):
        ordered = sorted(range(len(keys)), key=lambda k: keys[k].keyid != signature.keyid)
        for k in ordered:
            if k in used:
                continue
            if keys[k].verify(signature.sig, message):
                accepted.append(Accepted(index=index, key=keys[k]))
                used.add(k)
                break
    return accepted
