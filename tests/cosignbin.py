"""cosign binaries from Debian's packages, for the interop tests: trixie ships 2.5, sid ships 3.x.

On Debian 12 hosts the .deb is fetched with `apt-get download` using a private sources list and
state folder (from the host's own mirror; the system's apt setup is never touched) and unpacked
with `dpkg-deb -x` into the test cache, once per machine and suite.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from pathlib import Path

import pytest

HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def _mirror() -> str:
    """The Debian mirror the machine itself uses (the same host), else deb.debian.org."""
    for path in HOST_SOURCES:
        try:
            text = path.read_text()
        except OSError:
            continue
        for url in re.findall(r"(https?://\S+)", text):
            if url.rstrip("/").endswith("/debian"):
                return url.rstrip("/")
    return DEFAULT_MIRROR


def _cache(suite: str) -> Path:
    root = Path(os.environ.get("XRUN_TEST_CACHE") or Path.home() / ".cache" / "xrun-test")
    return root / ("cosign" if suite == "trixie" else f"cosign-{suite}")


def cosign_from_debian(suite: str) -> str:
    """The path of cosign from this Debian suite's package, downloaded and unpacked once per machine."""
    root = _cache(suite)
    binary = root / "x" / "usr" / "bin" / "cosign"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            _download(root, suite)
    return str(binary)


def debian_version(binary: str) -> str:
    """The Debian package version the binary was unpacked from (Debian's builds print GitVersion devel)."""
    debs = sorted(Path(binary).parents[2].parent.glob("apt/cosign_*.deb"))
    return debs[0].name.split("_")[1] if debs else "unknown"


def _download(root: Path, suite: str) -> None:
    apt = root / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial", "etc"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "etc" / "sources.list").write_text(f"deb {_mirror()} {suite} main\n")
    (apt / "state" / "status").touch()
    options = [f"-oDir::Etc::SourceList={apt}/etc/sources.list", "-oDir::Etc::SourceParts=/dev/null",
               f"-oDir::State={apt}/state", f"-oDir::State::status={apt}/state/status", f"-oDir::Cache={apt}/cache",
               "-oAPT::Sandbox::User=root"]
    for argv in (["apt-get", *options, "update"], ["apt-get", *options, "download", "cosign"]):
        proc = subprocess.run(argv, cwd=apt, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(argv[:1] + argv[-1:])} ({suite}) failed: {proc.stderr.strip()[-500:]}",
                        pytrace=False)
    (deb,) = apt.glob("cosign_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "x")], check=True, timeout=120)
