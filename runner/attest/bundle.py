"""Sigstore bundle v0.3 around a DSSE envelope, verified with a public key (no Fulcio, no Rekor).

Format: sigstore/protobuf-specs `dev.sigstore.bundle.v1.Bundle`, serialised with the protobuf JSON
mapping (camelCase field names, bytes as base64), which is what cosign and sigstore-go parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.attest.dsse import Envelope, b64decode, b64encode

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# Older spellings that carry a DSSE envelope the same way; accepted on input only.
READABLE_MEDIA_TYPES = (
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
)


@dataclass(frozen=True)
class BundleContent:
    """What a bundle carries: the envelope, the key hint, and RFC 3161 timestamps (DER TimeStampResp each)."""

    envelope: Envelope
    hint: str
    timestamps: tuple[bytes, ...] = ()


def to_bundle(envelope: Envelope, hint: str, timestamps: tuple[bytes, ...] = ()) -> dict[str, Any]:
    """The bundle dict; the envelope must carry exactly one signature (the bundle format's rule)."""
    if len(envelope.signatures) != 1:
        raise ValueError(f"a Sigstore bundle holds exactly one DSSE signature, not {len(envelope.signatures)}")
    material: dict[str, Any] = {
        # The key travels out of band (cosign --key); the hint names it, as keyid does.
        "publicKey": {"hint": hint},
        # No transparency log: trusted time comes from an RFC 3161 timestamp (--tsa) or is absent
        # (then cosign needs --insecure-ignore-tlog).
        "tlogEntries": [],
    }
    if timestamps:
        material["timestampVerificationData"] = {
            "rfc3161Timestamps": [{"signedTimestamp": b64encode(t)} for t in timestamps]}
    return {"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": material, "dsseEnvelope": envelope.to_json()}


def is_bundle(obj: Any) -> bool:
    """True when a parsed JSON document looks like a Sigstore bundle rather than an envelope."""
    return isinstance(obj, dict) and "mediaType" in obj and "payload" not in obj


def from_bundle(obj: Any) -> BundleContent:
    """The envelope, key hint and timestamps of a bundle; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("a Sigstore bundle must be a JSON object")
    media_type = obj.get("mediaType")
    if media_type not in READABLE_MEDIA_TYPES:
        raise ValueError(f"unsupported bundle mediaType {media_type!r}; expected {BUNDLE_MEDIA_TYPE}")
    material = obj.get("verificationMaterial")
    if not isinstance(material, dict):
        raise ValueError("the bundle has no verificationMaterial")
    if "dsseEnvelope" not in obj:
        kind = "a messageSignature" if "messageSignature" in obj else "no content"
        raise ValueError(f"the bundle holds {kind}, not a dsseEnvelope")
    envelope = Envelope.from_json(obj["dsseEnvelope"])
    if len(envelope.signatures) != 1:
        raise ValueError(f"the bundle's dsseEnvelope must hold exactly one signature, not {len(envelope.signatures)}")
    public_key = material.get("publicKey")
    hint = public_key.get("hint", "") if isinstance(public_key, dict) else ""
    return BundleContent(envelope, hint if isinstance(hint, str) else "", _timestamps(material))


def _timestamps(material: dict[str, Any]) -> tuple[bytes, ...]:
    data = material.get("timestampVerificationData") or {}
    items = data.get("rfc3161Timestamps") if isinstance(data, dict) else None
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ValueError("timestampVerificationData.rfc3161Timestamps must be a list")
    found = []
    for i, item in enumerate(items):
        value = item.get("signedTimestamp") if isinstance(item, dict) else None
        if not isinstance(value, str):
            raise ValueError(f"rfc3161Timestamps[{i}] has no signedTimestamp string")
        try:
            found.append(b64decode(value))
        except ValueError as exc:
            raise ValueError(f"rfc3161Timestamps[{i}].signedTimestamp: {exc}") from None
    return tuple(found)
