"""DSSE: PAE golden bytes, the specification's own test vectors, base64 rules, envelope decoding."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from runner.attest import dsse
from runner.attest.keys import Verifier, keyid

# --- PAE ---------------------------------------------------------------------------------------

def test_pae_of_the_protocol_example() -> None:
    # secure-systems-lab/dsse protocol.md, "Test Vectors"
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_utf8_bytes_not_characters() -> None:
    payload_type = "application/vnd.exämple+json"  # 28 characters, 29 bytes
    assert dsse.pae(payload_type, b"{}").startswith(b"DSSEv1 29 application/vnd.ex\xc3\xa4mple+json 2 {}")


def test_pae_of_an_empty_body_keeps_the_trailing_space() -> None:
    assert dsse.pae("application/vnd.in-toto+json", b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


def test_pae_of_an_empty_type() -> None:
    assert dsse.pae("", b"x") == b"DSSEv1 0  1 x"


def test_pae_is_binary_safe() -> None:
    body = bytes(range(256))
    assert dsse.pae("t", body) == b"DSSEv1 1 t 256 " + body


# --- the ECDSA P-256 vector of protocol.md -------------------------------------------------------

PROTOCOL_X = 46950820868899156662930047687818585632848591499744589407958293238635476079160
PROTOCOL_Y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
PROTOCOL_D = 97358161215184420915383655311931858321456579547487070936769975997791359926199
PROTOCOL_ENVELOPE = {
    "payload": "aGVsbG8gd29ybGQ=",
    "payloadType": "http://example.com/HelloWorld",
    "signatures": [{"sig": "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="}],
}


def _protocol_key() -> ec.EllipticCurvePrivateKey:
    key = ec.derive_private_key(PROTOCOL_D, ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    assert (numbers.x, numbers.y) == (PROTOCOL_X, PROTOCOL_Y)
    return key


def _raw_to_der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def test_protocol_vector_verifies_against_our_pae() -> None:
    envelope = dsse.Envelope.from_json(PROTOCOL_ENVELOPE)
    assert envelope.payload == b"hello world"
    public = _protocol_key().public_key()
    # The vector's signature is raw r||s (Cryptodome); xrun uses DER, so convert before verifying.
    der = _raw_to_der(envelope.signatures[0].sig)
    verifier = Verifier("ecdsa-p256", keyid(public), public, "protocol.md")
    assert verifier.verify(der, envelope.pae())
    assert not verifier.verify(der, dsse.pae("http://example.com/HelloWorld", b"hello world!"))


def test_protocol_vector_signature_reproduced_with_rfc6979() -> None:
    try:
        algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        der = _protocol_key().sign(dsse.pae("http://example.com/HelloWorld", b"hello world"), algorithm)
    except Exception as exc:  # pragma: no cover - needs OpenSSL >= 3.2
        pytest.skip(f"deterministic ECDSA unavailable: {exc}")
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert base64.b64encode(raw).decode() == PROTOCOL_ENVELOPE["signatures"][0]["sig"]


def test_raw_r_s_signatures_are_rejected() -> None:
    public = _protocol_key().public_key()
    verifier = Verifier("ecdsa-p256", keyid(public), public, "protocol.md")
    raw = dsse.Envelope.from_json(PROTOCOL_ENVELOPE).signatures[0].sig
    assert not verifier.verify(raw, dsse.pae("http://example.com/HelloWorld", b"hello world"))


# --- the DSSE repository's testvectors/vectors.json (Ed25519, RFC 8032 keys) ----------------------
# Each signature was re-derived independently with `cryptography` before being copied here.

KEYS = {
    "A": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "B": "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
}
STATEMENT_B64 = "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ=="
SIG_A = "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
SIG_B = "c1+67/aT0yqEpwx8PsVY3MLHsj9D0CZ014/Fv/QlG59P+9CobUZ7xECJ/V3USG0Ob9CiE5LjReEZUzNF2l7eBw=="
INTOTO = "application/vnd.in-toto+json"
PAE_STATEMENT = ("445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203433207b225f74797065"
                 "223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d")
VECTORS = [
    # id, payload, payloadType, [(sig, keyid)], trusted, threshold, supported types, pae hex, expect
    ("single-signature", STATEMENT_B64, INTOTO, [(SIG_A, "A")], "A", 1, [INTOTO], PAE_STATEMENT, True),
    ("url-safe-base64", "-_-_Pj8=", INTOTO,
     [("P-_KHICeR7tI6S_YyejJTRtrXhcQyQ2LYPaL8h90KjC9qN8HU_svOQ6TuDOT1HIrsGW886DbWNWcCmX5twLrAw==", "A")], "A", 1,
     [INTOTO], "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203520fbffbf3e3f", True),
    ("payload-type-swapped", STATEMENT_B64, "application/vnd.example.other+json", [(SIG_A, "A")], "A", 1,
     [INTOTO, "application/vnd.example.other+json"], PAE_STATEMENT, False),
    ("non-ascii-payload-type", STATEMENT_B64, "application/vnd.exämple+json",
     [("xmSk/ug66ysT7ayhkCIjhAq42zgZXSsEWuzUaNL7w2eGAdF/NU6/fRXPtmfN+5DNSAs5/i2lUnHjbbjPsu0tAw==", "A")], "A", 1,
     ["application/vnd.exämple+json"],
     "445353457631203239206170706c69636174696f6e2f766e642e6578c3a46d706c652b6a736f6e203433207b225f74797065223a2268"
     "747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d", True),
    ("empty-payload", "", INTOTO,
     [("gSggCAaTLTYyRH6FIDBem6meyIynsYy8RTHVzwx9tnTb7Bg/1jMWnuVgI/gffqmbsC2VX5/jHfkkDqsj7CDbDg==", "A")], "A", 1,
     [INTOTO], "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203020", True),
    ("empty-payload-type", STATEMENT_B64, "",
     [("iC3q/+3Rm0+lpAJRueDmDh15PnwCfxKmS0NAfKsbv+zgulXQC/WM9trc+j1XEqlwDIg/vf/uNfebeD6sxInrDg==", "A")], "A", 1,
     [INTOTO], "445353457631203020203433207b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f5374617465"
               "6d656e742f7631227d",
     False),
    ("threshold-two-distinct-keys", STATEMENT_B64, INTOTO, [(SIG_A, "A"), (SIG_B, "B")], "AB", 2, [INTOTO],
     PAE_STATEMENT, True),
    ("threshold-two-one-key-twice", STATEMENT_B64, INTOTO, [(SIG_A, "A"), (SIG_A, "A")], "AB", 2, [INTOTO],
     PAE_STATEMENT, False),
    ("threshold-two-without-keyids", STATEMENT_B64, INTOTO, [(SIG_A, ""), (SIG_B, "")], "AB", 2, [INTOTO],
     PAE_STATEMENT, True),
]


def _vector_verifier(name: str) -> Verifier:
    public = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS[name])).public_key()
    return Verifier("ed25519", keyid(public), public, name)


@pytest.mark.parametrize("vector", VECTORS, ids=[v[0] for v in VECTORS])
def test_dsse_test_vectors(vector: tuple) -> None:
    name, payload, payload_type, sigs, trusted, threshold, supported, pae_hex, expect = vector
    envelope = dsse.Envelope.from_json({
        "payload": payload, "payloadType": payload_type,
        "signatures": [{"sig": s, "keyid": k} for s, k in sigs],
    })
    # `pae` is what the signatures cover; in the swapped vector that is the in-toto type's PAE.
    signed_type = INTOTO if name == "payload-type-swapped" else payload_type
    assert dsse.pae(signed_type, envelope.payload).hex() == pae_hex
    # The vectors' keyids ("A", "B") are not our keyids: they are hints only, and keys are still tried.
    accepted = dsse.verify_signatures(envelope, [_vector_verifier(name) for name in trusted])
    result = len(accepted) >= threshold and envelope.payload_type in supported
    assert result is expect


def test_our_ed25519_signing_reproduces_the_vector() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["A"]))

    class _Signer:
        keyid = "A"

        def sign(self, data: bytes) -> bytes:
            return key.sign(data)

    envelope = dsse.sign(base64.b64decode(STATEMENT_B64), _Signer())
    assert envelope.to_json() == {"payloadType": INTOTO, "payload": STATEMENT_B64,
                                  "signatures": [{"keyid": "A", "sig": SIG_A}]}


# --- base64 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["+/+/Pj8=", "+/+/Pj8", "-_-_Pj8=", "-_-_Pj8"])
def test_b64decode_accepts_standard_and_url_safe_padded_or_not(text: str) -> None:
    assert dsse.b64decode(text) == b"\xfb\xff\xbf>?"


@pytest.mark.parametrize("text", ["+_", "a b=", "QQ=", "Q", "QQ===", "QQ=Q", "é", "QUJD\n"])
def test_b64decode_rejects_what_is_not_base64(text: str) -> None:
    with pytest.raises(ValueError):
        dsse.b64decode(text)


def test_b64decode_of_empty_is_empty() -> None:
    assert dsse.b64decode("") == b""


# --- envelope decoding ---------------------------------------------------------------------------

@pytest.mark.parametrize("obj, message", [
    ([], "JSON object"),
    ({"payloadType": INTOTO, "signatures": []}, "'payload'"),
    ({"payload": "", "signatures": []}, "'payloadType'"),
    ({"payload": "", "payloadType": INTOTO}, "'signatures'"),
    ({"payload": "!!", "payloadType": INTOTO, "signatures": []}, "payload"),
    ({"payload": "", "payloadType": 3, "signatures": []}, "payloadType"),
    ({"payload": "", "payloadType": INTOTO, "signatures": {}}, "list"),
    ({"payload": "", "payloadType": INTOTO, "signatures": [{"keyid": "x"}]}, "'sig'"),
    ({"payload": "", "payloadType": INTOTO, "signatures": [{"sig": "%%"}]}, "signatures[0].sig"),
    ({"payload": "", "payloadType": INTOTO, "signatures": [{"sig": "", "keyid": 7}]}, "keyid"),
])
def test_envelope_from_json_says_what_is_wrong(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dsse.Envelope.from_json(obj)


def test_envelope_round_trip_and_compact_line() -> None:
    envelope = dsse.Envelope(b'{"a":1}', INTOTO, (dsse.Signature(b"\x01\x02", "k"),))
    line = envelope.to_line()
    assert "\n" not in line and " " not in line
    assert dsse.Envelope.from_json(envelope.to_json()) == envelope


def test_unsigned_envelope_has_empty_signatures() -> None:
    envelope = dsse.sign(b"{}", None)
    assert envelope.to_json()["signatures"] == []
