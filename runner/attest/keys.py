"""Signing keys: generate, load, and name them (keyid) the way cosign and go-securesystemslib do."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from runner.attest.files import create_exclusive
from runner.attest.password import PASSWORD_ENV
from runner.errors import UsageError
from runner.userfiles import read_user_file

KeyKind = Literal["ecdsa-p256", "ed25519"]
KEY_KINDS: tuple[str, ...] = ("ecdsa-p256", "ed25519")
KEY_FILE = "xrun.key"
PUB_FILE = "xrun.pub"
# PEM files are small; refusing big ones keeps a mistaken `--key model.bin` from being read whole.
MAX_KEY_FILE = 64 * 1024

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def keyid(public_key: PublicKey) -> str:
    """`SHA256:<unpadded base64 of sha256(SSH public key blob)>`, as `ssh-keygen -l` prints it."""
    blob = ssh_public_blob(public_key)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def ssh_public_blob(public_key: PublicKey) -> bytes:
    """The SSH wire-format public key blob (RFC 4253 / RFC 5656 / RFC 8709)."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split(b" ")[1])


def key_kind(key: PublicKey | PrivateKey) -> KeyKind:
    """ecdsa-p256 or ed25519; anything else is not a key xrun signs or verifies with."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise ValueError(describe_unsupported(key))


def describe_unsupported(key: object) -> str:
    """Why a key is refused, in words."""
    curve = getattr(key, "curve", None)
    what = f"ECDSA {curve.name}" if curve is not None else type(key).__name__.lstrip("_")
    return f"unsupported key type {what}; xrun uses ECDSA P-256 or Ed25519 keys (`xrun keygen`)"


@dataclass(frozen=True)
class Verifier:
    """A trusted public key: checks DSSE signatures (ECDSA P-256/SHA-256 DER, or Ed25519)."""

    kind: KeyKind
    keyid: str
    public_key: PublicKey
    source: str  # where it came from, for messages

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is this key's signature over `data`."""
        try:
            if isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, data)
            else:
                # DER only: OpenSSL rejects raw r||s and non-canonical encodings here.
                self.public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A private signing key; signatures are DER ECDSA-SHA256 or Ed25519 over the given bytes."""

    kind: KeyKind
    keyid: str
    private_key: PrivateKey
    source: str

    def sign(self, data: bytes) -> bytes:
        """Sign `data` (the DSSE PAE)."""
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verifier(self) -> Verifier:
        """The matching public key."""
        return Verifier(self.kind, self.keyid, self.private_key.public_key(), self.source)

    def __repr__(self) -> str:  # never print key material
        return f"Signer(kind={self.kind!r}, keyid={self.keyid!r}, source={self.source!r})"


def new_private_key(kind: str) -> PrivateKey:
    """A fresh private key of the given kind."""
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise UsageError(f"unknown key type {kind!r}; use one of: {', '.join(KEY_KINDS)}")


def private_pem(key: PrivateKey, password: bytes | None) -> bytes:
    """PKCS#8 PEM, encrypted (PBES2/AES-256) when a password is given."""
    if password is not None and not password:
        raise UsageError(f"the key password is empty; set {PASSWORD_ENV} to a passphrase or unset it")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def generate_keypair(kind: str, out_dir: Path, password: bytes | None = None) -> tuple[Path, Path]:
    """Write `xrun.key` (0600, PKCS#8 PEM) and `xrun.pub` (SPKI PEM) in out_dir; never overwrite."""
    out_dir = Path(out_dir)
    key_path, pub_path = out_dir / KEY_FILE, out_dir / PUB_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: not a directory")
    existing = [str(p) for p in (key_path, pub_path) if os.path.lexists(p)]
    if existing:
        raise UsageError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                         "refusing to overwrite a key: move it away or choose another --out")
    key = new_private_key(kind)
    key_pem = private_pem(key, password)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _create_pair(key_path, key_pem, pub_path, pub_pem)
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot write the key pair ({exc.strerror or exc})") from None
    return key_path, pub_path


def _create_pair(key_path: Path, key_pem: bytes, pub_path: Path, pub_pem: bytes) -> None:
    """Both files or neither: a key without its .pub (or the reverse) is half a key pair."""
    try:
        create_exclusive(key_path, key_pem, 0o600)
    except FileExistsError:
        raise UsageError(f"{key_path} already exists; refusing to overwrite a key") from None
    try:
        create_exclusive(pub_path, pub_pem, 0o644)
    except BaseException as exc:
        key_path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise UsageError(f"{pub_path} already exists; refusing to overwrite a key") from None
        raise


def _read_key_file(path: Path) -> bytes:
    """The bytes of a key file, or a one-line UsageError."""
    return read_user_file(path, "key file", max_bytes=MAX_KEY_FILE)


def load_signer(path: Path | str, password: bytes | None = None) -> Signer:
    """Load a PEM private key (PKCS#8 or traditional); wrong password or not a key → UsageError."""
    path = Path(path)
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" not in data:
        hint = " (that is a public key; sign with the private xrun.key)" if b"PUBLIC KEY-----" in data else ""
        raise UsageError(f"{path}: not a PEM private key{hint}")
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError:
        if password:
            raise UsageError(f"{path}: the key is not encrypted but a password was given; "
                             f"unset {PASSWORD_ENV}") from None
        raise UsageError(f"{path}: the key is encrypted; set {PASSWORD_ENV} to its passphrase") from None
    except ValueError as exc:
        if b"ENCRYPTED" in data and password:
            raise UsageError(f"{path}: wrong password for the encrypted key ({PASSWORD_ENV})") from None
        raise UsageError(f"{path}: not a readable PEM private key ({_first_line(exc)})") from None
    except UnsupportedAlgorithm as exc:
        raise UsageError(f"{path}: unsupported key ({_first_line(exc)})") from None
    try:
        kind = key_kind(key)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return Signer(kind, keyid(key.public_key()), key, str(path))  # type: ignore[arg-type]


def is_public_key_file(path: Path | str) -> bool:
    """Whether the file holds a PEM public key (not a private one); unreadable → UsageError."""
    data = _read_key_file(Path(path))
    return b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data


def load_verifier(path: Path | str) -> Verifier:
    """Load a PEM public key (SubjectPublicKeyInfo); anything else → UsageError."""
    path = Path(path)
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" in data:
        raise UsageError(f"{path}: is a private key; verify with the public key (xrun.pub) and keep this one secret")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{path}: not a PEM public key ({_first_line(exc)})") from None
    try:
        kind = key_kind(key)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return Verifier(kind, keyid(key), key, str(path))  # type: ignore[arg-type]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
