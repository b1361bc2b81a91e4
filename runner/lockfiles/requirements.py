"""pip requirements files with `--hash` on every requirement (pip-compile, `uv pip compile --generate-hashes`)."""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from runner.lockfiles.interface import LockEntry, LockfileFormat, check_marker, local_wheel, lock_error, normalize_hash

PYPI_SIMPLE = "https://pypi.org/simple"
VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
# Options that only change how pip searches or builds; with every artifact hash-locked they are moot.
_HARMLESS = {"--require-hashes", "--prefer-binary", "--only-binary", "--no-binary", "--pre", "--trusted-host",
             "--use-feature", "--no-deps", "--no-build-isolation", "--progress-bar"}
_COMMENT = re.compile(r"(^|\s+)#.*$")
_HASH_OPT = re.compile(r"(?:^|\s)--hash(?:=|\s+)(\S+)")


@dataclass(frozen=True)
class _Line:
    number: int  # where the logical line starts (continuations joined)
    text: str


def logical_lines(text: str) -> list[_Line]:
    """Join backslash continuations and drop comments, keeping each logical line's first line number."""
    out: list[_Line] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not buffer:
            start = number
        stripped = _COMMENT.sub("", raw)
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1])
            continue
        buffer.append(stripped)
        joined = " ".join(part.strip() for part in buffer).strip()
        buffer = []
        if joined:
            out.append(_Line(start, joined))
    if buffer:
        joined = " ".join(part.strip() for part in buffer).strip()
        if joined:
            out.append(_Line(start, joined))
    return out


class RequirementsFormat(LockfileFormat):
    """`name==version --hash=sha256:…` lines; the index comes from `--index-url` (default PyPI)."""

    name = "requirements"

    def matches(self, filename: str) -> bool:
        """Anything that is not a TOML lock: requirements.txt, requirements.lock, *.in-compiled…"""
        return not filename.endswith(".toml") and filename != "uv.lock"

    def parse(self, text: str, shown: str, base_dir: Path) -> list[LockEntry]:
        """Every requirement line, pinned and hashed; options lines set the index."""
        index = PYPI_SIMPLE
        extra: list[str] = []
        pending: list[tuple[_Line, str, list[str]]] = []
        for line in logical_lines(text):
            if line.text.startswith("-"):
                index, extra = _option(line, shown, index, extra)
                continue
            hashes = [_split_hash(h, shown, line.number) for h in _HASH_OPT.findall(line.text)]
            requirement = _HASH_OPT.sub(" ", line.text).strip()
            # Other per-requirement options (--config-settings…) only matter when building from source.
            requirement = re.sub(r"\s+--\S+(?:[=\s]\S+)?", "", requirement).strip()
            pending.append((line, requirement, hashes))
        indexes = tuple(dict.fromkeys([index, *extra]))
        return [_entry(line, req, hashes, shown, base_dir, indexes) for line, req, hashes in pending]


def _option(line: _Line, shown: str, index: str, extra: list[str]) -> tuple[str, list[str]]:
    try:
        parts = shlex.split(line.text)
    except ValueError as exc:
        raise lock_error(shown, line.number, f"cannot read the option line: {exc}") from None
    head, _, inline = parts[0].partition("=")
    value = inline or (parts[1] if len(parts) > 1 else "")
    if head in ("-i", "--index-url"):
        return value.rstrip("/"), extra
    if head == "--extra-index-url":
        return index, [*extra, value.rstrip("/")]
    if head in _HARMLESS:
        return index, extra
    if head in ("-e", "--editable"):
        raise lock_error(shown, line.number, "an editable requirement cannot be hash-locked; lock a built wheel "
                         "by URL with --hash, or put the project's code in code.path instead")
    if head in ("-r", "--requirement", "-c", "--constraint"):
        raise lock_error(shown, line.number, f"{head} (an included file) is not supported: the lock must be one "
                         "self-contained file; compile it into one with pip-compile or `uv pip compile`")
    if head in ("-f", "--find-links", "--no-index"):
        raise lock_error(shown, line.number, f"{head} is not supported; use --index-url, or direct URLs with "
                         "--hash for local wheels")
    raise lock_error(shown, line.number, f"unknown option {head!r} in a requirements lock; remove it")


def _split_hash(value: str, shown: str, number: int) -> str:
    algo, sep, hexdigest = value.partition(":")
    if not sep:
        raise lock_error(shown, number, f"--hash={value} is not ALGO:HEX; write --hash=sha256:<64 hex>")
    return normalize_hash(algo, hexdigest, shown, number)


def _entry(line: _Line, text: str, hashes: list[str], shown: str, base_dir: Path,
           indexes: tuple[str, ...]) -> LockEntry:
    number = line.number
    if _looks_like_path(text):
        return _path_entry(text, hashes, shown, number, base_dir)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid syntax"
        raise lock_error(shown, number, f"cannot parse requirement {text!r}: {reason}; write NAME==VERSION "
                         "--hash=sha256:<hex>") from None
    name = canonicalize_name(req.name)
    marker = check_marker(str(req.marker) if req.marker else None, shown, number)
    if req.url and urlsplit(req.url).scheme.lower() == "file":
        # `name @ file:…` (pip freeze of a local install): a local wheel like a bare path.
        entry = _path_entry(unquote(urlsplit(req.url).path), hashes, shown, number, base_dir)
        if entry.name != name:
            raise lock_error(shown, number, f"the file's wheel is {entry.name}, not {name}; fix the requirement name")
        return dataclasses.replace(entry, marker=marker)
    if req.url:
        return _url_entry(req.url, name, marker, hashes, shown, number)
    pins = list(req.specifier)
    if len(pins) != 1 or pins[0].operator not in ("==", "===") or pins[0].version.endswith(".*"):
        raise lock_error(shown, number, f"{req.name!r} is not pinned to one version ({req.specifier or 'any'}); "
                         f"pin it as {req.name}==VERSION with --hash (pip-compile --generate-hashes does both)")
    if not hashes:
        raise lock_error(shown, number, f"{req.name}{req.specifier} has no --hash; every requirement needs one "
                         "(pip-compile --generate-hashes or `uv pip compile --generate-hashes`)")
    return LockEntry(name=name, version=pins[0].version, hashes=tuple(hashes), source=f"{shown}:{number}",
                     marker=marker, line=number, index=" ".join(indexes))


def _url_entry(url: str, name: str, marker: str | None, hashes: list[str], shown: str, number: int) -> LockEntry:
    if url.startswith(VCS_PREFIXES):
        raise lock_error(shown, number, f"{name}: a VCS requirement ({url.split('@')[0]}) cannot be verified by "
                         "hash; build a wheel from it and lock that wheel by URL with --hash")
    parts = urlsplit(url)
    fragment = dict(p.partition("=")[::2] for p in parts.fragment.split("&") if "=" in p)
    for algo in ("sha256", "sha384", "sha512"):
        if algo in fragment:
            hashes = [*hashes, normalize_hash(algo, fragment[algo], shown, number)]
    if not hashes:
        raise lock_error(shown, number, f"{name}: the URL requirement has no hash; add --hash=sha256:<hex> "
                         "(or #sha256=<hex> on the URL)")
    clean = parts._replace(fragment="").geturl()
    filename = clean.rstrip("/").rsplit("/", 1)[-1]
    version = _wheel_version(filename, name, shown, number)
    return LockEntry(name=name, version=version, hashes=tuple(dict.fromkeys(hashes)), source=f"{shown}:{number}",
                     url=clean, artifacts=({"url": clean, "filename": filename, "hashes": _as_map(hashes)},),
                     marker=marker, line=number)


def _path_entry(text: str, hashes: list[str], shown: str, number: int, base_dir: Path) -> LockEntry:
    path_text, _, marker_text = text.partition(";")
    path = Path(path_text.strip())
    filename = path.name
    if not hashes:
        raise lock_error(shown, number, f"{path_text.strip()}: a local wheel needs --hash=sha256:<hex>")
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        raise lock_error(shown, number, f"{path_text.strip()}: only wheels (.whl) can be installed; build a "
                         "wheel and lock it with --hash") from None
    location = local_wheel(path_text.strip(), base_dir, shown, number)
    marker = check_marker(marker_text.strip() or None, shown, number)
    return LockEntry(name=str(name), version=str(version), hashes=tuple(hashes), source=f"{shown}:{number}",
                     url=location, artifacts=({"url": location, "filename": filename, "hashes": _as_map(hashes)},),
                     marker=marker, line=number)


def _wheel_version(filename: str, name: str, shown: str, number: int) -> str:
    try:
        wheel_name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        raise lock_error(shown, number, f"{name}: the URL does not name a wheel ({filename}); xrun installs "
                         "wheels only, with the network off: lock a .whl URL") from None
    if wheel_name != name:
        raise lock_error(shown, number, f"the URL's wheel is {wheel_name}, not {name}; fix the requirement name")
    return str(version)


def _looks_like_path(text: str) -> bool:
    head = text.split(";", 1)[0].strip()
    return head.startswith((".", "/")) or (head.endswith(".whl") and "://" not in head and "@" not in head)


def _as_map(hashes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in hashes:
        algo, _, hexdigest = value.partition(":")
        out.setdefault(algo, hexdigest)
    return out
