"""Recognise private keys and credentials among the files about to go into an image.

Cheap by design: only the first HEAD bytes of a file are looked at (private keys and credential files
are small, and their markers sit at the top), taken from the read that hashes the file, so the check
adds no I/O; a big binary's head is one extra short read.
Each rule names what it found, so the refusal can say it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD = 64 << 10

# Any PEM private key block: PKCS#8 (plain and ENCRYPTED), RSA/EC/DSA (traditional), OPENSSH, PGP.
_PEM = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_PUTTY = re.compile(rb"^PuTTY-User-Key-File-\d+:", re.MULTILINE)
# An ini/shell line assigning an AWS secret (credentials/config files, or one pasted into code).
_AWS = re.compile(rb"^\s*(?:export\s+)?aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{16,}",
                  re.MULTILINE | re.IGNORECASE)
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$")
_ENV_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|^KEY$")
_REFERENCE = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")  # TOKEN=${CI_TOKEN} names a secret, holds none
_NETRC_PASSWORD = re.compile(rb"(?:^|\s)password\s+\S", re.MULTILINE)
_PYPIRC_PASSWORD = re.compile(rb"^\s*password\s*[=:]\s*\S", re.MULTILINE)


@dataclass(frozen=True)
class Finding:
    """A file that holds a secret: its path in the tree and what it holds."""

    path: str
    what: str  # "a private key (PEM block)", "a .env file assigning HF_TOKEN", …

    @property
    def private_key(self) -> bool:
        """A key (which xrun may sign with), not a credential file."""
        return self.what.startswith("a private key")


def _is_env_file(name: str) -> bool:
    return name == ".env" or name.startswith(".env.") or name.endswith(".env")


def _env_secret(head: bytes) -> str | None:
    """The first `NAME=value` line whose name says secret and whose value is not empty."""
    for line in head.decode("utf-8", "replace").splitlines():
        match = _ENV_LINE.match(line)
        if not match:
            continue
        name, value = match[1], match[2].split(" #", 1)[0].strip().strip("\"'")
        if value and not _REFERENCE.match(value) and _ENV_NAME.search(name.upper()):
            return name
    return None


def inspect(name: str, head: bytes) -> str | None:
    """What secret a file holds, judged by its name and its first bytes; None when it looks harmless."""
    # A plain substring test first: a regex over every file's head is most of the check's cost.
    if b"PRIVATE KEY" in head and _PEM.search(head):
        return "a private key (PEM block)"
    if b"PuTTY-User-Key-File-" in head and _PUTTY.search(head) and b"Private-Lines:" in head:
        return "a private key (PuTTY)"
    if (b"aws_secret_access_key" in head or b"AWS_SECRET_ACCESS_KEY" in head) and _AWS.search(head):
        return "an AWS secret access key (aws_secret_access_key)"
    if _is_env_file(name):
        variable = _env_secret(head)
        if variable:
            return f"a .env file assigning {variable}"
    if name in (".netrc", "_netrc") and _NETRC_PASSWORD.search(head):
        return "a .netrc with a password"
    if name == ".pypirc" and _PYPIRC_PASSWORD.search(head):
        return "a .pypirc with a password"
    return None


@dataclass
class Scanner:
    """Collects findings from file heads (hashing.hash_files' on_head), skipping what `allowed` says is no secret."""

    allowed: Callable[[str], bool]
    found: list[Finding] = field(default_factory=list)

    def __call__(self, rel: str, first: bytes) -> None:
        """Judge one file by its relative path and its first bytes (only HEAD of them are looked at)."""
        if self.allowed(rel):
            return
        what = inspect(rel.rsplit("/", 1)[-1], first if len(first) <= HEAD else first[:HEAD])
        if what:
            self.found.append(Finding(rel, what))
