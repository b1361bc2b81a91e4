"""Keys: keygen files and modes, encryption, clear errors, and the OpenSSH-style keyid."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from runner.attest import generate_keypair, load_signer, load_verifier
from runner.attest.keys import KEY_KINDS, keyid
from runner.attest.password import key_password
from runner.errors import EXIT_USAGE, UsageError

KEYID = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")  # 32 bytes → 43 unpadded base64 characters


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_keygen_writes_a_0600_pkcs8_key_and_a_spki_public_key(tmp_path: Path, kind: str) -> None:
    key_path, pub_path = generate_keypair(kind, tmp_path / "keys")
    assert (key_path.name, pub_path.name) == ("xrun.key", "xrun.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    signer, verifier = load_signer(key_path), load_verifier(pub_path)
    assert signer.kind == verifier.kind == kind
    assert signer.keyid == verifier.keyid and KEYID.match(signer.keyid)
    assert verifier.verify(signer.sign(b"data"), b"data")
    assert not verifier.verify(signer.sign(b"data"), b"other")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["xrun.key", "xrun.pub"]  # no temp files left


def test_keygen_mode_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        key_path, _ = generate_keypair("ed25519", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_encrypted_key_needs_its_password(tmp_path: Path, kind: str) -> None:
    key_path, _ = generate_keypair(kind, tmp_path, password=b"correct horse")
    assert key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert load_signer(key_path, b"correct horse").kind == kind
    with pytest.raises(UsageError, match="wrong password") as wrong:
        load_signer(key_path, b"battery staple")
    assert wrong.value.exit_code == EXIT_USAGE and "\n" not in wrong.value.message
    with pytest.raises(UsageError, match="XRUN_KEY_PASSWORD"):
        load_signer(key_path, None)


def test_password_for_an_unencrypted_key_is_an_error(tmp_path: Path) -> None:
    key_path, _ = generate_keypair("ecdsa-p256", tmp_path)
    with pytest.raises(UsageError, match="not encrypted"):
        load_signer(key_path, b"secret")


def test_empty_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="empty"):
        generate_keypair("ed25519", tmp_path, password=b"")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("existing", ["xrun.key", "xrun.pub"])
def test_keygen_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        generate_keypair("ecdsa-p256", tmp_path)
    assert (tmp_path / existing).read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_keygen_rejects_unknown_kind_and_a_file_as_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown key type 'rsa'"):
        generate_keypair("rsa", tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        generate_keypair("ed25519", tmp_path / "file")


def test_keygen_into_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UsageError, match="cannot write the key pair"):
        generate_keypair("ed25519", locked)


@pytest.mark.parametrize("content, message", [
    (b"hello", "not a PEM private key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a readable PEM private key"),
])
def test_load_signer_of_a_non_key_is_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as exc:
        load_signer(path)
    assert "\n" not in exc.value.message and exc.value.exit_code == EXIT_USAGE


def test_load_signer_of_a_public_key_says_so(tmp_path: Path) -> None:
    _, pub_path = generate_keypair("ed25519", tmp_path)
    with pytest.raises(UsageError, match="that is a public key"):
        load_signer(pub_path)


def test_load_verifier_refuses_a_private_key(tmp_path: Path) -> None:
    key_path, _ = generate_keypair("ed25519", tmp_path)
    with pytest.raises(UsageError, match="is a private key"):
        load_verifier(key_path)


@pytest.mark.parametrize("loader", [load_signer, load_verifier])
def test_missing_and_directory_key_paths(tmp_path: Path, loader) -> None:
    with pytest.raises(UsageError, match="no such key file"):
        loader(tmp_path / "nope.pem")
    with pytest.raises(UsageError, match="directory"):
        loader(tmp_path)


@pytest.mark.parametrize("make", [lambda: rsa.generate_private_key(65537, 2048),
                                  lambda: ec.generate_private_key(ec.SECP384R1())], ids=["rsa", "p384"])
def test_unsupported_key_types_are_refused(tmp_path: Path, make) -> None:
    key = make()
    priv = tmp_path / "k.pem"
    pub = tmp_path / "k.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(UsageError, match="unsupported key type"):
        load_signer(priv)
    with pytest.raises(UsageError, match="unsupported key type"):
        load_verifier(pub)


def test_traditional_openssl_ec_key_loads(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "cosign-style.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    assert load_signer(path).kind == "ecdsa-p256"


def test_signer_repr_leaks_no_key_material(tmp_path: Path) -> None:
    key_path, _ = generate_keypair("ecdsa-p256", tmp_path)
    signer = load_signer(key_path)
    assert "PRIVATE" not in repr(signer) and "private_key" not in repr(signer)


def test_ecdsa_signatures_are_der(tmp_path: Path) -> None:
    key_path, _ = generate_keypair("ecdsa-p256", tmp_path)
    signature = load_signer(key_path).sign(b"x")
    assert signature[0] == 0x30 and len(signature) in range(8, 73)  # ASN.1 SEQUENCE, not 64-byte r||s


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
@pytest.mark.parametrize("kind", KEY_KINDS)
def test_keyid_equals_the_openssh_fingerprint(tmp_path: Path, kind: str) -> None:
    _, pub_path = generate_keypair(kind, tmp_path)
    if kind == "ecdsa-p256":  # ssh-keygen converts the PEM itself: fully independent of our code
        openssh = subprocess.run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", str(pub_path)],
                                 check=True, capture_output=True, text=True).stdout
    else:  # ssh-keygen cannot import Ed25519 PEM; it still hashes and prints the fingerprint itself
        openssh = serialization.load_pem_public_key(pub_path.read_bytes()).public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "key.ssh").write_text(openssh)
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "key.ssh")],
                            check=True, capture_output=True, text=True).stdout
    assert listed.split()[1] == load_verifier(pub_path).keyid


def test_keyid_of_a_known_ed25519_key() -> None:
    # RFC 8032 TEST 1 public key; fingerprint computed independently from its SSH blob.
    import base64
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ed25519
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    blob = (len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + len(raw).to_bytes(4, "big") + raw)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert keyid(ed25519.Ed25519PublicKey.from_public_bytes(raw)) == expected


def test_key_password_from_the_environment() -> None:
    assert key_password({}) is None
    assert key_password({"XRUN_KEY_PASSWORD": ""}) is None
    assert key_password({"XRUN_KEY_PASSWORD": "pässword"}) == "pässword".encode()
