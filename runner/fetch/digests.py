"""Digest algorithms, their validation, and hashing every given digest in one pass."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# In the manifest's order of preference (digests.primary): the first present names the
# cache entry, so keep-sets built from manifests and the cache agree on the key.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128, "md5": 32}
_STRENGTH = ("sha256", "sha512", "md5")
_HEX = re.compile(r"^[0-9a-f]+$")


class DigestSpecError(ValueError):
    """A digest that is not `algo -> hex` of the right length (the caller names the item)."""


def normalize_digests(digests: dict[str, str]) -> dict[str, str]:
    """Lowercase hex per known algorithm; accepts 'algo:hex' values; raises DigestSpecError."""
    if not digests:
        raise DigestSpecError("no digest given; add sha256: <hex> (or sha512/md5)")
    out: dict[str, str] = {}
    for algo, value in digests.items():
        algo = algo.lower()
        if algo not in ALGORITHMS:
            raise DigestSpecError(f"unknown digest algorithm {algo!r}; use one of {', '.join(ALGORITHMS)}")
        hexdigest = str(value).strip().lower()
        if hexdigest.startswith(algo + ":"):
            hexdigest = hexdigest[len(algo) + 1:]
        if len(hexdigest) != ALGORITHMS[algo] or not _HEX.match(hexdigest):
            raise DigestSpecError(f"{algo} digest {value!r} is not {ALGORITHMS[algo]} hex digits")
        out[algo] = hexdigest
    return out


def primary(digests: dict[str, str]) -> tuple[str, str]:
    """The preferred (algorithm, hex) of normalised digests: sha256, else sha512, else md5; the cache key."""
    for algo in _STRENGTH:
        if algo in digests:
            return algo, digests[algo]
    raise DigestSpecError("no known digest algorithm given")


@dataclass(frozen=True)
class Mismatch:
    """The first digest that did not match."""

    algorithm: str
    expected: str
    actual: str


class MultiHasher:
    """Feeds each chunk to one hashlib object per expected digest, so bytes are read once."""

    def __init__(self, expected: dict[str, str]) -> None:
        self.expected = dict(expected)
        self._hashers = {algo: hashlib.new(algo) for algo in expected}
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        """Hash one chunk with every algorithm."""
        for h in self._hashers.values():
            h.update(chunk)
        self.size += len(chunk)

    def reset(self) -> None:
        """Forget everything hashed so far (a restart from byte 0)."""
        self._hashers = {algo: hashlib.new(algo) for algo in self.expected}
        self.size = 0

    def hexdigests(self) -> dict[str, str]:
        """The digests of the bytes so far."""
        return {algo: h.hexdigest() for algo, h in self._hashers.items()}

    def mismatch(self) -> Mismatch | None:
        """The first mismatching digest, preferred first; None when all match."""
        actual = self.hexdigests()
        for algo in sorted(self.expected, key=_STRENGTH.index):
            if actual[algo] != self.expected[algo]:
                return Mismatch(algo, self.expected[algo], actual[algo])
        return None
