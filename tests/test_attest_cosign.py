"""cosign (the Sigstore CLI, not our code) verifies xrun's bundle and `.jsonl`, and rejects every tampering.

Debian 13 packages cosign; on Debian 12 hosts the .deb is fetched with `apt-get download` using a
private sources list and state folder (trixie, from the host's own mirror; the system's apt setup is
never touched) and unpacked with `dpkg-deb -x` into the test cache, once per machine.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cosignbin import cosign_from_debian
from signedmodel import signed_model
from runner.attest import generate_keypair

# An empty trusted root: cosign 2.x wants one with --bundle even when only a key is trusted.
EMPTY_TRUSTED_ROOT = {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}


@pytest.fixture(scope="session")
def cosign() -> str:
    """A cosign binary: on PATH, else unpacked from Debian trixie's .deb (2.5) into the test cache."""
    return shutil.which("cosign") or cosign_from_debian("trixie")


@pytest.fixture()
def signed(tmp_path: Path) -> dict[str, Path]:
    """An ECDSA-signed attestation of model.pkl: key, .jsonl, bundle and an empty trusted root."""
    signed = signed_model(tmp_path)
    root = tmp_path / "trusted_root.json"
    root.write_text(json.dumps(EMPTY_TRUSTED_ROOT))
    return {"pub": signed.pub, "model": signed.model, "jsonl": signed.jsonl, "bundle": signed.bundle,
            "root": root, "dir": tmp_path}


def bundle_cmd(cosign: str, s: dict[str, Path], *, key: Path | None = None, artifact: Path | None = None,
               bundle: Path | None = None) -> list[str]:
    """The command docs/buildtype.md gives for the bundle."""
    return [cosign, "verify-blob-attestation", "--key", str(key or s["pub"]), "--bundle", str(bundle or s["bundle"]),
            "--new-bundle-format", "--trusted-root", str(s["root"]), "--insecure-ignore-tlog",
            "--type", "slsaprovenance1", str(artifact or s["model"])]


def signature_cmd(cosign: str, s: dict[str, Path], *, key: Path | None = None, artifact: Path | None = None,
                  jsonl: Path | None = None) -> list[str]:
    """The command docs/buildtype.md gives for the `.jsonl` envelope."""
    return [cosign, "verify-blob-attestation", "--key", str(key or s["pub"]), "--signature", str(jsonl or s["jsonl"]),
            "--type", "slsaprovenance1", "--insecure-ignore-tlog", str(artifact or s["model"])]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_cosign_verifies_the_bundle_and_the_predicate_type_is_slsa(cosign, signed):
    proc = run(bundle_cmd(cosign, signed))
    assert proc.returncode == 0, proc.stderr
    assert "Verified OK" in proc.stderr + proc.stdout
    # cosign ignores --type with --bundle: check the predicate type ourselves.
    envelope = json.loads(signed["bundle"].read_text())["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"


def test_cosign_verifies_the_jsonl_signature(cosign, signed):
    proc = run(signature_cmd(cosign, signed))
    assert proc.returncode == 0, proc.stderr


def test_cosign_rejects_another_artifact(cosign, signed):
    other = signed["dir"] / "other.pkl"
    other.write_bytes(b"other weights")
    assert run(bundle_cmd(cosign, signed, artifact=other)).returncode != 0
    assert run(signature_cmd(cosign, signed, artifact=other)).returncode != 0


def _edit_envelope(envelope: dict, *, payload: bool) -> dict:
    out = dict(envelope)
    if payload:
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["buildDefinition"]["internalParameters"]["hermetic"] = False
        out["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    else:
        sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
        sig[-1] ^= 0x01
        out["signatures"] = [{**envelope["signatures"][0], "sig": base64.b64encode(bytes(sig)).decode()}]
    return out


@pytest.mark.parametrize("what", ["payload", "signature"])
def test_cosign_rejects_a_tampered_payload_or_signature(cosign, signed, what):
    line = json.loads(signed["jsonl"].read_text().splitlines()[0])
    jsonl = signed["dir"] / "tampered.intoto.jsonl"
    jsonl.write_text(json.dumps(_edit_envelope(line, payload=what == "payload")) + "\n")
    assert run(signature_cmd(cosign, signed, jsonl=jsonl)).returncode != 0
    bundle = json.loads(signed["bundle"].read_text())
    bundle["dsseEnvelope"] = _edit_envelope(bundle["dsseEnvelope"], payload=what == "payload")
    path = signed["dir"] / "tampered.sigstore.json"
    path.write_text(json.dumps(bundle))
    assert run(bundle_cmd(cosign, signed, bundle=path)).returncode != 0


def test_cosign_rejects_another_key(cosign, signed):
    _, other = generate_keypair("ecdsa-p256", signed["dir"] / "other-keys")
    assert run(bundle_cmd(cosign, signed, key=other)).returncode != 0
    assert run(signature_cmd(cosign, signed, key=other)).returncode != 0
