"""Locked packages → verified wheels laid out as a venv for the base image's interpreter.

1. Inspect the base image's Python once (network off, cached by image ID): version, ABI, platform,
   libc, PEP 508 environment, where a venv's files go.
2. Compute its supported tags with the `packaging` library's logic and pick, for every locked
   package that applies (markers, uv's graph), the best-ranked wheel whose hash the lock names.
3. Fetch each wheel through runner.fetch (the shared cache: verified while streaming, retried).
4. Lay them out on the host with PyPA's `installer` into /opt/xrun/venv (a venv over the image's
   interpreter, system packages visible), which the build copies in as a layer. No pip, no network,
   and nothing touches the base's externally-managed (PEP 668) environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from packaging import tags as ptags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from runner.engine.client import ProbeFailed, cached_probe, run_offline
from runner.fetch.interface import FetchOptions
from runner.errors import FetchError, IntegrityError, ManifestError, XrunError
from runner.hashing import sha256_file
from runner.lockfiles import LockEntry, select_for_environment
from runner.lockfiles.interface import lock_error, verifiable
from runner.lockfiles import Lockfile
from runner.wire import fields_to_wire

if TYPE_CHECKING:
    from runner.build.layers import LayerWriter

VENV = "/opt/xrun/venv"
INDEX_TIMEOUT_S = 30
# A Python 3.6+ script: everything the host needs to choose wheels for this interpreter.
PROBE = r"""
import glob, json, os, platform, subprocess, sys, sysconfig
V = "/opt/xrun/venv"
names = sysconfig.get_scheme_names()
scheme = "venv" if "venv" in names else "posix_prefix"
paths = sysconfig.get_paths(scheme, vars={"base": V, "platbase": V, "installed_base": V, "installed_platbase": V})
libc = None
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION")
except (AttributeError, ValueError, OSError):
    pass
if not libc:
    for loader in glob.glob("/lib/ld-musl-*.so.1"):
        try:
            err = subprocess.run([loader], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).stderr.decode()
        except OSError:
            continue
        for line in err.splitlines():
            if line.startswith("Version "):
                libc = "musl " + line.split()[1]
iv = sys.implementation.version
impl_version = "%d.%d.%d" % tuple(iv[:3])
if iv.releaselevel != "final":
    impl_version += iv.releaselevel[0] + str(iv.serial)
env = {
    "implementation_name": sys.implementation.name, "implementation_version": impl_version,
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}
print(json.dumps({
    "executable": os.path.realpath(sys.executable), "version": list(sys.version_info[:3]),
    "implementation": sys.implementation.name, "soabi": sysconfig.get_config_var("SOABI"),
    "platform": sysconfig.get_platform(), "bits": 64 if sys.maxsize > 2 ** 32 else 32, "libc": libc,
    "gil_disabled": bool(sysconfig.get_config_var("Py_GIL_DISABLED")), "environment": env, "paths": paths,
}, sort_keys=True))
"""
INTERPRETERS = ("python3", "python")


@dataclass(frozen=True)
class PythonTarget:
    """The base image's interpreter, as inspected: what wheels fit it and where a venv's files go."""

    executable: str  # resolved path inside the image, e.g. /usr/bin/python3.11
    version: str  # "3.11.2"
    implementation: str  # "cpython"
    abi: str | None  # "cp311"
    platform: str  # sysconfig's, e.g. "linux-x86_64"
    libc: str | None  # "glibc 2.36" / "musl 1.2.4"
    tags: tuple[str, ...]  # supported wheel tags, best first
    environment: Mapping[str, str] = field(repr=False)  # PEP 508 marker environment
    paths: Mapping[str, str] = field(repr=False)  # the venv scheme (purelib, platlib, scripts, data, include)
    facts: Mapping[str, Any] = field(repr=False, compare=False)  # the raw probe output (kept in labels)

    @property
    def tags_summary(self) -> str:
        """'cp311-cp311-manylinux_2_36_x86_64 … py3-none-any (N tags)'."""
        if not self.tags:
            return "no tags"
        return f"{self.tags[0]} … {self.tags[-1]} ({len(self.tags)} tags)"

    def to_json(self) -> dict[str, Any]:
        """Plain data for `--json` and the attestation."""
        return {"executable": self.executable, "version": self.version, "implementation": self.implementation,
                "abi": self.abi, "platform": self.platform, "libc": self.libc, "tags": self.tags_summary}


@dataclass(frozen=True)
class ResolvedWheel:
    """The artifact chosen for one locked package, verified by sha256."""

    name: str
    version: str
    filename: str
    url: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        """Plain data (labels, attestation)."""
        return fields_to_wire(self)


@dataclass(frozen=True)
class Candidate:
    """One wheel a lock or an index offers for a locked package."""

    filename: str
    url: str
    hashes: Mapping[str, str]  # algo -> hex
    size: int | None = None  # the lock's size of the file, when it states one: the download stops there


# --- the interpreter -------------------------------------------------------------------------------


def inspect_python(client: Any, image_id: str, cache: Any) -> PythonTarget | None:
    """The image's Python (python3, else python), probed with the network off; None when it has none."""
    def probe() -> Any:
        for exe in INTERPRETERS:
            try:
                return json.loads(run_offline(client, image_id, [exe, "-I", "-c", PROBE]))
            except ProbeFailed as exc:
                if not exc.missing:
                    raise
        return None

    facts = cached_probe(cache, image_id, "python", probe)
    return target_from_facts(facts) if facts else None


def target_from_facts(facts: Mapping[str, Any]) -> PythonTarget:
    """Build the PythonTarget (tags included) from the probe's JSON."""
    major, minor, micro = (int(v) for v in facts["version"][:3])
    return PythonTarget(
        executable=facts["executable"], version=f"{major}.{minor}.{micro}", implementation=facts["implementation"],
        abi=_abi(facts), platform=facts["platform"], libc=facts.get("libc"),
        tags=tuple(str(t) for t in compute_tags(facts)), environment=dict(facts["environment"]),
        paths=dict(facts["paths"]), facts=dict(facts),
    )


def _abi(facts: Mapping[str, Any]) -> str | None:
    soabi = facts.get("soabi") or ""
    major, minor = facts["version"][:2]
    if facts["implementation"] == "cpython":
        # 'cpython-311-x86_64-linux-gnu' → cp311; 'cpython-313t-…' → cp313t (free-threaded)
        part = soabi.split("-")[1] if soabi.startswith("cpython-") else f"{major}{minor}"
        return f"cp{part}"
    if soabi:
        # 'pypy310-pp73-x86_64-linux-gnu' → pypy310_pp73 (packaging's generic rule)
        return "_".join(soabi.split("-")[:2]).replace(".", "_").replace("-", "_")
    return None


def linux_platforms(platform_name: str, bits: int, libc: str | None) -> list[str]:
    """Platform tags best first, as packaging computes them for a Linux interpreter with this libc."""
    linux = re.sub(r"[^a-z0-9]+", "_", platform_name.lower())
    if not linux.startswith("linux_"):
        return [linux]
    if bits == 32:
        linux = {"linux_x86_64": "linux_i686", "linux_aarch64": "linux_armv8l"}.get(linux, linux)
    arch = linux.split("_", 1)[1]
    archs = ["armv8l", "armv7l"] if arch == "armv8l" else [arch]
    # A plain linux_ARCH wheel was built for this very kind of machine: packaging ranks it first.
    out: list[str] = [f"linux_{a}" for a in archs]
    kind, _, version = (libc or "").partition(" ")
    if kind == "glibc" and re.match(r"^\d+\.\d+", version):
        g_major, g_minor = (int(x) for x in re.findall(r"\d+", version)[:2])
        oldest = (2, 4) if set(archs) & {"x86_64", "i686"} else (2, 16)
        legacy = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
        maxima = [(g_major, g_minor)] + [(m, 50) for m in range(g_major - 1, 1, -1)]
        for a in archs:
            for top_major, top_minor in maxima:
                floor = oldest[1] if top_major == oldest[0] else -1
                for m in range(top_minor, floor, -1):
                    out.append(f"manylinux_{top_major}_{m}_{a}")
                    if (top_major, m) in legacy:
                        out.append(f"{legacy[(top_major, m)]}_{a}")
    elif kind == "musl" and re.match(r"^\d+\.\d+", version):
        m_major, m_minor = (int(x) for x in re.findall(r"\d+", version)[:2])
        for a in archs:
            out += [f"musllinux_{m_major}_{m}_{a}" for m in range(m_minor, -1, -1)]
    return out


def compute_tags(facts: Mapping[str, Any]) -> list[ptags.Tag]:
    """The interpreter's supported tags, best first (packaging.tags, fed the image's facts, not the host's)."""
    major, minor = (int(v) for v in facts["version"][:2])
    platforms = linux_platforms(facts["platform"], int(facts.get("bits", 64)), facts.get("libc"))
    abi = _abi(facts)
    if facts["implementation"] == "cpython":
        interpreter = f"cp{major}{minor}"
        out = list(ptags.cpython_tags((major, minor), abis=[abi] if abi else None, platforms=platforms))
    else:
        short = ptags.INTERPRETER_SHORT_NAMES.get(facts["implementation"], facts["implementation"])
        interpreter = f"{short}{major}{minor}"
        out = list(ptags.generic_tags(interpreter, [abi] if abi else ["none"], platforms))
    out += list(ptags.compatible_tags((major, minor), interpreter, platforms))
    return out


# --- choosing artifacts ----------------------------------------------------------------------------


def applicable(lockfile: Lockfile, target: PythonTarget) -> list[LockEntry]:
    """The lock's entries that apply to this interpreter (markers, requires-python, uv's graph)."""
    return select_for_environment(lockfile, target.environment)


def best_wheel(entry: LockEntry, candidates: Sequence[Candidate], target: PythonTarget,
               shown: str) -> Candidate:
    """The candidate whose best tag ranks highest for the target; ManifestError when none fits."""
    rank = {tag: i for i, tag in enumerate(target.tags)}
    best: tuple[int, Candidate] | None = None
    for cand in candidates:
        try:
            _, version, _, wheel_tags = parse_wheel_filename(cand.filename)
        except InvalidWheelFilename:
            continue
        if version != Version(entry.version):
            continue
        score = min((rank[str(t)] for t in wheel_tags if str(t) in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, cand)
    if best is None:
        offered = ", ".join(sorted(c.filename for c in candidates)[:6]) or "none"
        raise lock_error(shown, entry.line, f"{entry.name} {entry.version}: no locked wheel fits the base image's "
                         f"Python {target.version} ({target.abi}, {target.libc or 'unknown libc'}, "
                         f"{target.platform}); offered: {offered}; lock a version with a matching wheel or "
                         "change the base image")
    return best[1]


def candidates_for(entry: LockEntry, session: Any, cache: Any, shown: str) -> list[Candidate]:
    """The wheels a lock entry may install: the lock's own artifacts, else the index's files whose hash it names."""
    if entry.artifacts:
        return [Candidate(str(a["filename"]), str(a["url"]), dict(a["hashes"]),
                          a["size"] if isinstance(a.get("size"), int) else None) for a in entry.artifacts]
    locked = {h.split(":", 1)[1] for h in entry.hashes if h.startswith("sha256:")}
    if not locked:
        raise lock_error(shown, entry.line, f"{entry.name}: only sha256 hashes can be matched against the index; "
                         "regenerate the lock with sha256 hashes")
    indexes = (entry.index or "https://pypi.org/simple").split()
    offered: list[str] = []
    for index in indexes:
        files = index_files(session, cache, index, entry.name, entry.version)
        for f in files:
            offered.append(f"{f['filename']} sha256:{f['sha256'][:12]}…")
        matched = [Candidate(f["filename"], f["url"], {"sha256": f["sha256"]}) for f in files if f["sha256"] in locked]
        if matched:
            return matched
    if not offered:
        raise FetchError(f"{shown}:{entry.line}: {entry.name} {entry.version} is not on {', '.join(indexes)}; "
                         "check the name and version, or the --index-url in the lock")
    raise IntegrityError(f"{shown}:{entry.line}: {entry.name} {entry.version}: none of the index's files has a "
                         f"locked hash (the index offers {', '.join(offered[:4])}{' …' if len(offered) > 4 else ''});"
                         " the lock or the index was tampered with: regenerate the lock only if you trust the index")


class _Links(HTMLParser):
    """Anchors of a PEP 503 HTML simple page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def index_files(session: Any, cache: Any, index: str, name: str, version: str) -> list[dict[str, str]]:
    """Wheel files of name==version on a simple index (PEP 691 JSON or PEP 503 HTML), with sha256; cached."""
    key = hashlib.sha256(json.dumps([index, name, version]).encode()).hexdigest()
    path = cache.root / "index" / key[:2] / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        pass
    files = _query_index(session, index, name, version)
    if files:
        # Only the wheels of one pinned version: they never change on a sane index, and a changed
        # file would fail its hash anyway. Kept so a rebuild needs no index.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps({"index": index, "name": name, "version": version, "files": files}))
        os.replace(tmp, path)
    return files


def _query_index(session: Any, index: str, name: str, version: str) -> list[dict[str, str]]:
    import requests

    page = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
    try:
        resp = session.get(page, timeout=INDEX_TIMEOUT_S, headers={
            "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"{page}: cannot reach the package index ({type(exc).__name__}); check the network, "
                         "or lock with pylock.toml/uv.lock, which carry the wheel URLs") from None
    if resp.status_code == 404:
        return []
    if resp.status_code != 200:
        raise FetchError(f"{page}: the package index answered HTTP {resp.status_code}; try again later")
    entries: list[tuple[str, str, str | None]] = []  # (filename, url, sha256)
    if "json" in resp.headers.get("Content-Type", ""):
        for f in resp.json().get("files", []):
            entries.append((f["filename"], urljoin(page, f["url"]), (f.get("hashes") or {}).get("sha256")))
    else:
        parser = _Links()
        parser.feed(resp.text)
        for href, text in parser.links:
            url = urljoin(page, href)
            frag = urlsplit(url).fragment
            sha = frag.split("=", 1)[1] if frag.startswith("sha256=") else None
            entries.append((text or urlsplit(url).path.rsplit("/", 1)[-1], url.split("#", 1)[0], sha))
    out = []
    for filename, url, sha in entries:
        if not filename.endswith(".whl") or not sha:
            continue
        try:
            _, wheel_version, _, _ = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        if wheel_version == Version(version):
            out.append({"filename": filename, "url": url.split("#", 1)[0], "sha256": sha.lower()})
    return out


def index_session() -> Any:
    """A requests Session that retries transient index faults with backoff."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=5, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.headers["User-Agent"] = "xrun (hermetic experiment runner)"
    return session


@dataclass(frozen=True)
class Chosen:
    """A locked entry with the wheel chosen for the target."""

    entry: LockEntry
    candidate: Candidate


def choose_wheels(lockfile: Lockfile, target: PythonTarget, cache: Any) -> list[Chosen]:
    """For each applicable entry, the wheel that fits the target best (index lookups in parallel)."""
    entries = applicable(lockfile, target)
    shown = str(lockfile.path)
    session = index_session()
    try:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="xrun-index") as pool:
            found = list(pool.map(lambda e: candidates_for(e, session, cache, shown), entries))
    finally:
        session.close()
    return [Chosen(e, best_wheel(e, cands, target, shown)) for e, cands in zip(entries, found, strict=True)]


# --- fetching --------------------------------------------------------------------------------------


def fetch_wheels(chosen: list[Chosen], cache: Any, *, base_dir: Path,
                 options: FetchOptions | None = None) -> list[tuple[ResolvedWheel, Path]]:
    """Fetch every chosen wheel through runner.fetch (shared cache, verified, retried), in order.

    A cached wheel is used only while its fingerprint holds (always re-hashed with options.verify).
    """
    from runner.fetch import fetch_blob
    from runner.fetch.progress import make_reporter

    if not chosen:
        return []
    options = options or FetchOptions()
    parallel = options.parallel
    cancel = threading.Event()

    def one(item: Chosen) -> tuple[ResolvedWheel, Path]:
        digests = verifiable(f"{a}:{h}" for a, h in item.candidate.hashes.items())
        if not digests:
            raise ManifestError(f"{item.entry.source}: {item.entry.name}: {item.candidate.filename} has no "
                                "sha256/sha512 hash xrun can verify; regenerate the lock with sha256")
        blob = fetch_blob(cache, item.candidate.url, digests, name=item.candidate.filename, base_dir=base_dir,
                          options=options, reporter=reporter, cancel=cancel, kind="wheel", size=item.candidate.size)
        sha256 = digests.get("sha256") or sha256_file(blob.path)
        wheel = ResolvedWheel(item.entry.name, item.entry.version, item.candidate.filename, item.candidate.url, sha256)
        return wheel, blob.path

    with make_reporter(options, batch=(f"{len(chosen)} wheels", len(chosen))) as reporter:
        pool = ThreadPoolExecutor(max_workers=min(parallel, len(chosen)), thread_name_prefix="xrun-wheel")
        futures: list[Future[tuple[ResolvedWheel, Path]]] = []
        try:
            futures = [pool.submit(one, c) for c in chosen]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                cancel.set()
        except BaseException:
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return _results(futures)


def _results(futures: list[Future[tuple[ResolvedWheel, Path]]]) -> list[tuple[ResolvedWheel, Path]]:
    errors: list[BaseException] = [f.exception() for f in futures if not f.cancelled() and f.exception()]  # type: ignore[misc]
    if errors:
        # An integrity failure outranks the downloads cancelled because of it.
        errors.sort(key=lambda e: 0 if isinstance(e, IntegrityError) else 1 if isinstance(e, XrunError) else 2)
        raise errors[0]
    return [f.result() for f in futures]


# --- laying out the venv ---------------------------------------------------------------------------


def installed_size(wheels: Sequence[tuple[ResolvedWheel, Path]]) -> int:
    """Bytes the wheels take once installed (their members' sizes): the dependency layer's size, about."""
    import zipfile

    total = 0
    for _, path in wheels:
        with zipfile.ZipFile(path) as zf:
            total += sum(info.file_size for info in zf.infolist())
    return total


def write_venv_skeleton(target: PythonTarget, layer: LayerWriter) -> None:
    """/opt/xrun/venv itself: pyvenv.cfg and bin/python* over the image's interpreter (system packages visible)."""
    venv = VENV.lstrip("/")
    major_minor = ".".join(target.version.split(".")[:2])
    layer.add_dir(f"{venv}/bin")
    for link in ("python", "python3", f"python{major_minor}"):
        layer.add_symlink(f"{venv}/bin/{link}", target.executable)
    layer.add_bytes(f"{venv}/pyvenv.cfg", (
        f"home = {os.path.dirname(target.executable)}\ninclude-system-site-packages = true\n"
        f"version = {target.version}\nexecutable = {target.executable}\n"
        "command = xrun (installer layout, no pip)\n").encode())


def write_wheels(target: PythonTarget, wheels: Sequence[tuple[ResolvedWheel, Path]], layer: LayerWriter) -> None:
    """Install the wheels straight into the layer, under /opt/xrun/venv, in the order given.

    No folder on the host: each file goes from the wheel into the tar (hashed for RECORD and for the
    diff ID as it is written), each wheel's files in its own order."""
    from zipfile import ZipFile

    from installer import install

    major_minor = ".".join(target.version.split(".")[:2])
    for wheel, path in wheels:
        scheme = {
            "purelib": target.paths["purelib"], "platlib": target.paths["platlib"],
            "scripts": target.paths.get("scripts", f"{VENV}/bin"), "data": target.paths.get("data", VENV),
            "headers": f"{target.paths.get('include', VENV + '/include')}/site/python{major_minor}/{wheel.name}",
        }
        destination = _tar_destination(scheme, layer)
        try:
            with open(path, "rb") as f, ZipFile(f) as zf:
                # installer reads the name, version and tags from the file name; the cache names blobs by digest.
                zf.filename = wheel.filename
                source = _sized_wheel(zf)
                source.validate_record()
                install(source, destination, additional_metadata={"INSTALLER": b"xrun\n"})
        except FileExistsError as exc:
            raise ManifestError(f"{wheel.filename}: installs {exc.args[0] if exc.args else 'a file'} twice; "
                                "the wheel is malformed: do not use it") from None
        except Exception as exc:  # noqa: BLE001 - installer raises plain exceptions for bad wheels
            if isinstance(exc, XrunError):
                raise
            raise IntegrityError(f"{wheel.filename} (sha256 {wheel.sha256[:12]}…) is not a valid wheel: {exc}; "
                                 "its RECORD does not match its content: do not use it") from None


def installed_paths(path: Path) -> set[str]:
    """Where a wheel's files land, as 'lib:…', 'bin:…', 'data:…' (enough to find two wheels that overlap)."""
    import configparser
    from zipfile import ZipFile

    out: set[str] = set()
    with ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith("/"):
                continue
            head, _, rest = name.partition("/")
            if head.endswith(".data") and "/" in rest:
                kind, _, inner = rest.partition("/")
                if kind != "headers":  # headers go under a folder named after the package: no overlap
                    out.add({"purelib": "lib", "platlib": "lib", "scripts": "bin"}.get(kind, kind) + ":" + inner)
            elif not head.endswith(".dist-info"):
                out.add("lib:" + name)
            elif name.endswith("/entry_points.txt"):
                parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
                parser.read_string(zf.read(name).decode("utf-8", "replace"))
                for section in ("console_scripts", "gui_scripts"):
                    out.update(f"bin:{script}" for script in (parser[section] if parser.has_section(section) else ()))
            else:
                out.add("lib:" + name)
    return out


def check_overlaps(wheels: Sequence[tuple[ResolvedWheel, Path]]) -> None:
    """ManifestError when two locked wheels install the same file (each wheel is its own layer: the later
    one would silently win)."""
    seen: dict[str, str] = {}
    for wheel, path in wheels:
        for item in sorted(installed_paths(path)):
            if item in seen and seen[item] != wheel.filename:
                raise ManifestError(f"{wheel.filename}: installs {item.split(':', 1)[1]} that {seen[item]} also "
                                    "installs; two packages of the lock overlap: fix the lock")
            seen[item] = wheel.filename


class _Sized:
    """A wheel member's stream that knows its size (a tar header needs it before the content)."""

    def __init__(self, stream: Any, size: int) -> None:
        self._stream, self.size = stream, size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __enter__(self) -> "_Sized":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def _sized_wheel(zf: Any) -> Any:
    """installer's WheelFile whose streams carry their member's size."""
    from installer.sources import WheelFile

    class SizedWheel(WheelFile):
        def get_contents(self) -> Any:
            members = [i for i in zf.infolist() if i.filename[-1:] != "/"]
            for (record, stream, executable), info in zip(super().get_contents(), members, strict=True):
                yield record, _Sized(stream, info.file_size), executable

    return SizedWheel(zf)


def _tar_destination(scheme: dict[str, str], layer: LayerWriter) -> Any:
    """installer's destination, writing into the layer instead of onto the host's disk."""
    import io
    import posixpath

    from installer.destinations import SchemeDictionaryDestination
    from installer.records import Hash, RecordEntry
    from installer.scripts import Script

    class TarDestination(SchemeDictionaryDestination):
        def _name(self, scheme_name: str, path: str) -> str:
            root = posixpath.normpath(self.scheme_dict[scheme_name])
            full = posixpath.normpath(posixpath.join(root, path))
            if not full.startswith(root.rstrip("/") + "/"):
                raise ValueError(f"Attempting to write {path} outside of the target directory")
            return full.lstrip("/")

        def write_to_fs(self, scheme: Any, path: str, stream: Any, is_executable: bool) -> Any:
            if isinstance(stream, io.BytesIO):
                size = len(stream.getbuffer()) - stream.tell()
            else:
                size = stream.size
            digest, written = layer.add_stream(self._name(scheme, path), stream, size,
                                               0o755 if is_executable else 0o644)
            # RECORD's form (PEP 376/627): urlsafe base64 without padding, as installer writes it.
            value = base64.urlsafe_b64encode(bytes.fromhex(digest)).decode("ascii").rstrip("=")
            return RecordEntry(path, Hash("sha256", value), written)

        def write_script(self, name: str, module: str, attr: str, section: Any) -> Any:
            script_name, data = Script(name, module, attr, section).generate(self.interpreter, self.script_kind)
            with io.BytesIO(data) as stream:
                return self.write_to_fs("scripts", script_name, stream, is_executable=True)

    return TarDestination(scheme, interpreter=f"{VENV}/bin/python", script_kind="posix")
