"""Load and validate an experiment manifest (YAML) into a typed Manifest."""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import yaml

from runner import __version__, hardware
from runner.errors import ManifestError
from runner.redact import credential_params
from runner.resources import resource_dir
from runner.rundir import write_atomic
from runner.userfiles import read_user_file
from runner.yamlfile import Problem, field_path, parse_yaml

if TYPE_CHECKING:  # jsonschema is loaded where a manifest is schema-checked: a remembered verdict skips it
    import jsonschema

DIGEST_ALGORITHMS = ("sha256", "sha512", "md5")


@dataclass(frozen=True)
class DirectorySpec:
    """`data[].directory`: a folder of files pinned by one tree digest (docs/data-sources.md)."""

    uri: str  # file:///DIR or a path, https://HOST/BASE/, s3://BUCKET/PREFIX/
    tree_digest: str | None  # sha256 hex of the canonical listing; only a local folder may omit it


@dataclass(frozen=True)
class DvcSpec:
    """`data[].dvc`: a DVC-tracked file or folder, read from a .dvc file or a dvc.lock out."""

    remote: str  # the DVC remote's URL (file, http(s), s3)
    file: str | None  # path of the .dvc file (relative to the manifest, or to repo's root)
    lock: str | None  # "PATH/dvc.lock#STAGE/OUT"
    repo: str | None = None  # a git URL holding the file; None: the manifest's folder
    rev: str | None = None


@dataclass(frozen=True)
class LfsSpec:
    """`data[].lfs`: a Git LFS object by oid + size + server URL, or by a pointer file in the code tree."""

    oid: str | None
    size: int | None
    url: str | None
    pointer: str | None  # relative to the manifest's folder


DataSourceSpec = DirectorySpec | DvcSpec | LfsSpec
SOURCE_KEYS = ("directory", "dvc", "lfs")


@dataclass(frozen=True)
class DataItem:
    """One `data` entry: where to fetch it, its expected digests, where the run sees it.

    `source` is set for a directory, DVC or LFS item; its `uri` is then a display URI and `digests`
    holds the pin known before fetching (the tree digest, the LFS oid), possibly none.
    """

    name: str
    uri: str
    digests: dict[str, str]  # algorithm -> lowercase hex; at least one for a uri item
    path: str  # relative to /data in the container
    unpack: bool = False
    source: DataSourceSpec | None = None


@dataclass(frozen=True)
class BootstrapSpec:
    """`image.bootstrap`: a base image built from pinned Debian packages with mmdebstrap."""

    suite: str
    packages: tuple[str, ...]
    variant: str = "minbase"
    architecture: str | None = None
    sources: str | None = None  # apt sources file (deb822 or one-line); default: the host's
    image_id: str | None = None  # expected image ID; a different result is exit 3


@dataclass(frozen=True)
class ImageSpec:
    """`image`: the base — a reference REPO@sha256:… as written, or a bootstrap spec — and an optional lockfile."""

    base: str | BootstrapSpec
    lockfile: Path | None  # absolute
    lockfile_format: str | None  # "requirements" | "pylock" | "uv"; None = by file name


@dataclass(frozen=True)
class CodeSpec:
    """`code`: the folder, where its file list comes from, what to leave out, what only looks secret."""

    path: Path  # absolute
    exclude: tuple[str, ...]
    source: str = "folder"  # `code.from`: "folder" | "git"
    not_secret: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    command: tuple[str, ...]
    env: dict[str, str]
    timeout_s: int | None
    workdir: str = "/workspace"


@dataclass(frozen=True)
class OutputSpec:
    path: str  # relative to /outputs
    metrics: bool = False
    tolerance: dict[str, float] = field(default_factory=dict)  # per metric key: {"rtol":…, "atol":…}


@dataclass(frozen=True)
class TrackingSpec:
    """`tracking.mlflow`: the MLflow experiment (and optionally the server) runs are logged to."""

    experiment: str
    uri: str | None = None


@dataclass(frozen=True)
class Seeds:
    global_seed: int
    apply: bool = True


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; `raw` is the parsed YAML exactly as the user wrote it."""

    file: Path  # absolute path of the manifest
    text: bytes  # the file's bytes, for the digest and the run directory copy
    sha256: str
    raw: dict[str, Any]
    name: str
    description: str | None
    image: ImageSpec
    code: CodeSpec
    data: tuple[DataItem, ...]
    seeds: Seeds
    hardware_class: str
    run: RunSpec
    outputs: tuple[OutputSpec, ...]
    mlflow: TrackingSpec | None = None  # not in the plan: tracking never changes a plan or build digest

    @property
    def root(self) -> Path:
        """The manifest's folder, against which relative paths resolve."""
        return self.file.parent


# --- loading -------------------------------------------------------------------------------------




MAX_MANIFEST_BYTES = 4 * 2**20
SUPPORTED_SCHEMES = ("https", "http", "file", "s3")
RESERVED_ENV = ("XRUN_SEED", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")


__all__ = ["Manifest", "Problem", "field_path", "load_manifest", "parse_yaml", "validate_document"]


@functools.lru_cache(maxsize=4)
def load_schema(name: str = "experiment.schema.json") -> dict[str, Any]:
    """A JSON Schema shipped in schemas/."""
    return json.loads((resource_dir("schemas") / name).read_text(encoding="utf-8"))


def load_manifest(path: str | Path, *, verdicts: Path | None = None) -> Manifest:
    """Read, parse and validate a manifest; raise ManifestError listing every problem.

    `verdicts`: a folder (the cache's) remembering manifests that passed; the same bytes under the
    same schema, xrun and YAML parser skip the JSON Schema check (and loading jsonschema) next time.
    The rules a schema cannot express (files that must exist, …) are checked every time.
    """
    file = Path(path).expanduser().absolute()
    text = _read(file)
    shown = str(Path(path))
    raw, lines = parse_yaml(text, shown)
    verdict = SchemaVerdict.of(verdicts, text) if verdicts is not None else None
    known = verdict is not None and verdict.passed()  # read once: a warm run only reads the verdict file
    problems = validate_document(raw, lines, file.parent, schema_passed=known)
    if problems:
        raise ManifestError(
            f"{shown}: {len(problems)} problem{'s' if len(problems) > 1 else ''} found",
            lines=[p.render(shown) for p in problems],
        )
    if verdict is not None and not known:
        verdict.remember()
    return _to_manifest(file, text, raw)


@dataclass(frozen=True)
class SchemaVerdict:
    """The remembered fact "these manifest bytes pass this schema": a file named and filled with its key."""

    file: Path
    key: str

    @classmethod
    def of(cls, folder: Path, text: bytes) -> "SchemaVerdict":
        """The verdict slot of a manifest's bytes under the schema, xrun and PyYAML of this process."""
        schema = (resource_dir("schemas") / "experiment.schema.json").read_bytes()
        key = hashlib.sha256(b"\0".join((
            b"xrun-manifest-schema-verdict/v1", __version__.encode(), yaml.__version__.encode(),
            hashlib.sha256(schema).hexdigest().encode(), hashlib.sha256(text).hexdigest().encode(),
        ))).hexdigest()
        return cls(folder / key[:2] / key, key)

    def passed(self) -> bool:
        """True when this very check passed before (a file that is not exactly the key counts as never)."""
        try:
            return self.file.read_bytes() == self.key.encode()
        except OSError:
            return False

    def remember(self) -> None:
        """Record a pass, atomically; a cache that cannot be written only costs the check next time."""
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.file, self.key.encode())
        except OSError:
            pass


def _read(file: Path) -> bytes:
    return read_user_file(file, "file", max_bytes=MAX_MANIFEST_BYTES,
                          hint="; give the path of an experiment manifest (.yaml)")


# --- validation ------------------------------------------------------------------------------------


def validate_document(raw: Any, lines: dict[str, int], root: Path, *, schema_passed: bool = False) -> list[Problem]:
    """Every problem of a parsed manifest: the JSON Schema's (unless known to pass), then what a schema cannot check."""
    if not isinstance(raw, dict):
        return [Problem("", "the manifest must be a YAML mapping (apiVersion, kind, name, …); see `xrun schema`", 1)]
    semantic = _semantic_problems(raw, lines, root)
    # A rule of ours that names a field says more than the schema's generic complaint about it.
    explained = {p.path for p in semantic}
    schema = [] if schema_passed else schema_problems(raw, load_schema(), lines)
    problems = [p for p in schema if p.path not in explained] + semantic
    # One line per problem, in file order; the same complaint twice helps no one.
    unique = {(p.line or 0, p.path, p.message): p for p in problems}
    return [unique[k] for k in sorted(unique, key=lambda k: (k[0], k[1]))]


def schema_problems(raw: Any, schema: dict[str, Any], lines: dict[str, int]) -> list[Problem]:
    """Translate JSON Schema errors into one-line problems with a field path, line and fix."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in validator.iter_errors(raw):
        problems.extend(_describe(error, lines))
    return problems


def _line_for(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = re.sub(r"(\[\d+\]|\.[^.\[]+|^[^.\[]+)$", "", path)
    return lines.get("")


def _describe(error: jsonschema.ValidationError, lines: dict[str, int]) -> list[Problem]:
    path = field_path(error.absolute_path)
    hint = error.schema.get("x-hint") if isinstance(error.schema, dict) else None
    fix = f"; {hint}" if hint else ""
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict) and isinstance(error.schema, dict):
        known = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        out = []
        for key in extra:
            child = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            suggestion = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            out.append(Problem(child, f"unknown key {key!r}; {suggestion}", _line_for(child, lines)))
        return out
    if kind == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        key = missing[0] if missing else error.message
        child = f"{path}.{key}" if path else key
        return [Problem(child, f"missing required key {key!r}{_required_hint(child)}", _line_for(path, lines))]
    if kind == "anyOf" and hint:
        return [Problem(path, f"{hint}", _line_for(path, lines))]
    if kind == "pattern":
        return [Problem(path, f"{_short(error.instance)} is not valid{fix}", _line_for(path, lines))]
    if kind == "type":
        quote = ""
        if error.validator_value == "string" and isinstance(error.instance, (int, float)) and "quote" not in fix:
            # YAML reads an all-digit value (a digest, a version) as a number: quoting keeps it text.
            quote = "; quote the value so YAML keeps it as text"
        return [Problem(path, f"expected {_types(error.validator_value)}, got {_type_name(error.instance)}"
                        f"{quote}{fix}", _line_for(path, lines))]
    if kind in ("enum", "const"):
        allowed = (error.validator_value if kind == "enum" and isinstance(error.validator_value, list)
                   else [error.validator_value])
        return [Problem(path, f"{_short(error.instance)} is not allowed; use one of: "
                        f"{', '.join(map(str, allowed))}", _line_for(path, lines))]
    if kind in ("minimum", "maximum"):
        bound = "≥" if kind == "minimum" else "≤"
        return [Problem(path, f"{_short(error.instance)} is out of range; it must be {bound} "
                        f"{error.validator_value}{fix}", _line_for(path, lines))]
    if kind in ("minItems", "minLength"):
        what = "an empty list" if kind == "minItems" else "an empty string"
        return [Problem(path, f"{what} is not allowed{fix or '; give a value'}", _line_for(path, lines))]
    if kind == "oneOf" and hint:
        return [Problem(path, f"{_short(error.instance)} is not valid; {hint}", _line_for(path, lines))]
    if kind == "propertyNames":
        return [Problem(path, f"{_short(error.instance)} is not a valid name{fix}", _line_for(path, lines))]
    return [Problem(path, f"{error.message}{fix}", _line_for(path, lines))]


def _required_hint(path: str) -> str:
    hints = {
        "apiVersion": "; add `apiVersion: xrun/v1`", "kind": "; add `kind: Experiment`",
        "seeds": "; add `seeds: {global: 42}`", "hardware": "; add `hardware: {class: cpu-2}` (see `xrun hardware`)",
        "run": "; add `run: {command: [python, train.py]}`", "outputs": "; add `outputs: [{path: model.pkl}]`",
        "image": "; add `image: {base: NAME@sha256:…}` or `image: {bootstrap: …}`",
    }
    return hints.get(path, "")


def _types(value: Any) -> str:
    names = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
             "array": "a list", "object": "a mapping"}
    values = value if isinstance(value, list) else [value]
    return " or ".join(names.get(v, str(v)) for v in values)


def _mapping(value: Any) -> dict[str, Any]:
    """value when it is a mapping, else an empty one (the schema reports the wrong type)."""
    return value if isinstance(value, dict) else {}


def _sequence(value: Any) -> list[Any]:
    """value when it is a list, else an empty one (the schema reports the wrong type)."""
    return value if isinstance(value, list) else []


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _semantic_problems(raw: dict[str, Any], lines: dict[str, int], root: Path) -> list[Problem]:
    """What a JSON Schema cannot say: files exist, uniqueness, escapes, catalog names, credentials."""
    problems: list[Problem] = []

    def add(path: str, message: str) -> None:
        problems.append(Problem(path, message, _line_for(path, lines)))

    image = _mapping(raw.get("image"))
    if isinstance(raw.get("image"), dict):
        _check_image(image, add)
    _check_relative_file(image.get("lockfile"), "image.lockfile", root, add, want_dir=False)
    bootstrap = _mapping(image.get("bootstrap"))
    _check_relative_file(bootstrap.get("sources"), "image.bootstrap.sources", root, add, want_dir=False)
    code = _mapping(raw.get("code"))
    _check_relative_file(code.get("path", "."), "code.path", root, add, want_dir=True)

    data = _sequence(raw.get("data"))
    names: dict[str, int] = {}
    mounts: dict[str, int] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if isinstance(name, str):
            if name in names:
                add(f"data[{i}].name", f"{name!r} is used by data[{names[name]}] too; give each item its own name")
            names.setdefault(name, i)
        if isinstance(item.get("uri"), str):
            _check_uri(item["uri"], f"data[{i}].uri", add)
        _check_source(item, i, root, add)
        mount = item.get("path", name)
        if isinstance(mount, str):
            where = f"data[{i}].path" if "path" in item else f"data[{i}].name"
            if _check_inside(mount, where, "/data", add):
                _check_overlap(mount, i, mounts, where, "data", add)
        if item.get("unpack") and isinstance(item.get("uri"), str) and not _archive_suffix(item["uri"]):
            add(f"data[{i}].unpack", "unpack works for .tar, .tar.gz, .tgz and .zip; the URI names none of those")

    outputs = _sequence(raw.get("outputs"))
    seen_outputs: dict[str, int] = {}
    for i, item in enumerate(outputs):
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            if _check_inside(item["path"], f"outputs[{i}].path", "/outputs", add):
                _check_overlap(item["path"], i, seen_outputs, f"outputs[{i}].path", "outputs", add)

    hw = _mapping(raw.get("hardware"))
    cls = hw.get("class")
    if isinstance(cls, str) and cls not in hardware.catalog():
        close = hardware.closest_class(cls)
        add("hardware.class", f"unknown hardware class {cls!r}; "
            + (f"did you mean {close!r}? " if close else "") + "`xrun hardware` lists the classes")

    run = _mapping(raw.get("run"))
    env = _mapping(run.get("env"))
    for key in env:
        if key in RESERVED_ENV or str(key).startswith("XRUN_"):
            add(f"run.env.{key}", f"{key} is set by xrun from seeds.global; remove it from run.env "
                "and set seeds.global (or seeds.apply: false) instead")
    if isinstance(run.get("command"), str):
        try:
            shlex.split(run["command"])
        except ValueError as exc:
            add("run.command", f"cannot split the command string: {exc}; write it as a list instead")
    return problems


def _check_source(item: dict[str, Any], i: int, root: Path, add: Any) -> None:
    """One of uri, directory, dvc, lfs per item, and what each of the three needs besides its schema."""
    given = [k for k in ("uri", *SOURCE_KEYS) if k in item]
    where = f"data[{i}]"
    if not given:
        add(where, "say where the data is: give uri (one file), directory, dvc or lfs")
        return
    if len(given) > 1:
        add(f"{where}.{given[1]}", f"give only one of uri, directory, dvc, lfs (this item has {', '.join(given)})")
        return
    kind = given[0]
    if kind == "uri":
        return
    for key in ("sha256", "sha512", "md5", "unpack"):
        if key in item:
            add(f"{where}.{key}", f"{key} belongs to a uri item; a {kind} item is pinned by "
                + {"directory": "directory.treeDigest", "dvc": "its .dvc file or dvc.lock (md5)",
                   "lfs": "lfs.oid"}[kind] + f": remove {key}")
    spec = item.get(kind)
    if not isinstance(spec, dict):
        return
    if kind == "directory" and isinstance(spec.get("uri"), str):
        _check_uri(spec["uri"], f"{where}.directory.uri", add)
        scheme = urlsplit(spec["uri"]).scheme.lower()
        if scheme in ("http", "https", "s3") and "treeDigest" not in spec:
            add(f"{where}.directory.treeDigest", "a remote directory must be pinned: add treeDigest: sha256:… "
                "(`xrun data digest DIR` prints it for the folder you uploaded)")
        if len(scheme) <= 1 or scheme == "file":
            path = Path(unquote(urlsplit(spec["uri"]).path) if scheme == "file" else spec["uri"]).expanduser()
            target = path if path.is_absolute() else root / path
            if not target.is_dir():
                add(f"{where}.directory.uri", f"{spec['uri']!r}: no such folder ({target}); fix the path")
    elif kind == "dvc":
        chosen = [k for k in ("file", "lock") if k in spec]
        if len(chosen) != 1:
            add(f"{where}.dvc", "give exactly one of dvc.file (a .dvc file) or dvc.lock (dvc.lock#STAGE/OUT)")
        if isinstance(spec.get("remote"), str):
            _check_uri(spec["remote"], f"{where}.dvc.remote", add)
        if "rev" in spec and "repo" not in spec:
            add(f"{where}.dvc.rev", "rev needs repo (the git URL it is a revision of); add dvc.repo or remove rev")
        if isinstance(spec.get("repo"), str):
            _check_uri(spec["repo"], f"{where}.dvc.repo", add)
        elif len(chosen) == 1 and isinstance(spec[chosen[0]], str):
            _check_relative_file(spec[chosen[0]].split("#", 1)[0], f"{where}.dvc.{chosen[0]}", root, add,
                                 want_dir=False)
    elif kind == "lfs":
        if "pointer" in spec:
            extra = [k for k in ("oid", "size") if k in spec]
            if extra:
                add(f"{where}.lfs.{extra[0]}", "give either lfs.pointer or lfs.oid + lfs.size, not both")
            _check_relative_file(spec.get("pointer"), f"{where}.lfs.pointer", root, add, want_dir=False)
        else:
            for key in ("oid", "size", "url"):
                if key not in spec:
                    add(f"{where}.lfs.{key}", f"missing lfs.{key}: an object without a pointer file needs oid, size "
                        "and url (or give lfs.pointer)")
        if isinstance(spec.get("url"), str):
            _check_uri(spec["url"], f"{where}.lfs.url", add)


def _check_image(image: dict[str, Any], add: Any) -> None:
    has_base, has_boot = "base" in image, "bootstrap" in image
    if has_base and has_boot:
        add("image", "give either image.base (a pinned image) or image.bootstrap (Debian packages), not both")
    elif not has_base and not has_boot:
        add("image", "give image.base as NAME@sha256:<digest>, or image.bootstrap with a suite and packages")
    base = image.get("base")
    if isinstance(base, str) and "@" not in base:
        add("image.base", f"{base!r} is a tag, not a digest: tags move, so it cannot be reproduced; pin it as "
            f"{base.split(':')[0] if ':' in base.rsplit('/', 1)[-1] else base}@sha256:<digest> (find the digest with "
            f"`docker buildx imagetools inspect {base}` or `docker inspect --format '{{{{json .RepoDigests}}}}' {base}`)")


def _check_relative_file(value: Any, path: str, root: Path, add: Any, *, want_dir: bool) -> None:
    if not isinstance(value, str) or not value:
        return
    if not _check_inside(value, path, "the manifest's folder", add):
        return
    target = root / value
    if want_dir and not target.is_dir():
        add(path, f"{value!r}: no such folder next to the manifest ({target}); fix the path")
    elif not want_dir and not target.is_file():
        add(path, f"{value!r}: no such file next to the manifest ({target}); fix the path or create the file")


def _check_inside(value: str, path: str, root_name: str, add: Any) -> bool:
    """A relative path that stays under its root: no absolute paths, no '..' components."""
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        add(path, f"{value!r} is absolute; give a path relative to {root_name}")
        return False
    if ".." in parts:
        add(path, f"{value!r} escapes {root_name} with '..'; give a path inside it")
        return False
    return True


def _check_overlap(value: str, index: int, seen: dict[str, int], path: str, section: str, add: Any) -> None:
    norm = "/".join(p for p in value.split("/") if p not in ("", "."))
    if not norm:
        add(path, f"{value!r} names the {section} root itself; give a file or folder under it")
        return
    for other, j in seen.items():
        if other == norm or other.startswith(norm + "/") or norm.startswith(other + "/"):
            add(path, f"{value!r} collides with {section}[{j}] ({other!r}); give each a path of its own")
            return
    seen[norm] = index


def _check_uri(uri: str, path: str, add: Any) -> None:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme and len(scheme) > 1 and scheme not in SUPPORTED_SCHEMES:
        add(path, f"{uri!r}: scheme {scheme!r} is not supported; use https, http, file or s3")
        return
    if parts.username or parts.password:
        add(path, "the URI embeds credentials (user:password@), which would be recorded in the attestation; "
            "remove them and use the environment (netrc, AWS_* variables) instead")
    leaked = credential_params(uri)
    if leaked:
        add(path, f"the URI carries credentials in its query ({', '.join(leaked)}), which would be recorded in the "
            "attestation; use an unsigned URI and credentials from the environment")
    if scheme in ("http", "https", "s3") and not parts.netloc:
        add(path, f"{uri!r} has no host (or bucket); write it as {scheme}://HOST/PATH")


def _archive_suffix(uri: str) -> str | None:
    name = urlsplit(uri).path.lower()
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            return suffix
    return None


# --- construction ----------------------------------------------------------------------------------


def parse_duration(value: str | int | None) -> int | None:
    """'90s' / '30m' / '2h' / 120 → seconds."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    number, unit = float(value[:-1]), value[-1]
    return max(1, int(round(number * {"s": 1, "m": 60, "h": 3600}[unit])))


def _to_manifest(file: Path, text: bytes, raw: dict[str, Any]) -> Manifest:
    root = file.parent
    image = raw["image"]
    boot = image.get("bootstrap")
    bootstrap = None
    if boot:
        bootstrap = BootstrapSpec(
            suite=boot["suite"], packages=tuple(boot["packages"]), variant=boot.get("variant", "minbase"),
            architecture=boot.get("architecture"),
            sources=str(root / boot["sources"]) if boot.get("sources") else None,
            image_id=boot.get("imageId"),
        )
    code = raw.get("code") or {}
    command = raw["run"]["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    return Manifest(
        file=file, text=text, sha256=hashlib.sha256(text).hexdigest(), raw=raw,
        name=raw["name"], description=raw.get("description"),
        image=ImageSpec(
            base=bootstrap if bootstrap is not None else image["base"],
            lockfile=(root / image["lockfile"]) if image.get("lockfile") else None,
            lockfile_format=image.get("lockfileFormat"),
        ),
        code=CodeSpec(path=(root / code.get("path", ".")).resolve(), exclude=tuple(code.get("exclude", ())),
                      source=code.get("from", "folder"), not_secret=tuple(code.get("notSecret", ()))),
        data=tuple(_data_item(d) for d in raw.get("data") or ()),
        seeds=Seeds(global_seed=raw["seeds"]["global"], apply=raw["seeds"].get("apply", True)),
        hardware_class=raw["hardware"]["class"],
        run=RunSpec(command=tuple(command), env=dict(raw["run"].get("env") or {}),
                    timeout_s=parse_duration(raw["run"].get("timeout"))),
        outputs=tuple(OutputSpec(path=_norm(o["path"]), metrics=bool(o.get("metrics", False)),
                                 tolerance=dict(o.get("tolerance") or {}))
                      for o in raw["outputs"]),
        mlflow=_mlflow_spec(raw.get("tracking")),
    )


def _data_item(d: dict[str, Any]) -> DataItem:
    """One validated `data` entry as a DataItem (a source item gets a display URI and its known pin)."""
    path = _norm(d.get("path", d["name"]))
    if "uri" in d:
        return DataItem(name=d["name"], uri=d["uri"], digests={a: d[a].lower() for a in DIGEST_ALGORITHMS if a in d},
                        path=path, unpack=bool(d.get("unpack", False)))
    if "directory" in d:
        spec = d["directory"]
        tree = spec.get("treeDigest", "").lower().removeprefix("sha256:") or None
        return DataItem(name=d["name"], uri=spec["uri"], digests={"sha256": tree} if tree else {}, path=path,
                        source=DirectorySpec(uri=spec["uri"], tree_digest=tree))
    if "dvc" in d:
        spec = d["dvc"]
        where = spec.get("file") or spec.get("lock")
        shown = f"{spec['repo']}@{spec.get('rev', 'HEAD')}:{where}" if spec.get("repo") else where
        return DataItem(name=d["name"], uri=f"dvc:{shown}", digests={}, path=path,
                        source=DvcSpec(remote=spec["remote"], file=spec.get("file"), lock=spec.get("lock"),
                                       repo=spec.get("repo"), rev=spec.get("rev")))
    spec = d["lfs"]
    oid = spec.get("oid")
    return DataItem(name=d["name"], uri=f"lfs:{oid or spec.get('pointer')}", digests={"sha256": oid} if oid else {},
                    path=path, source=LfsSpec(oid=oid, size=spec.get("size"), url=spec.get("url"),
                                              pointer=spec.get("pointer")))


def _mlflow_spec(tracking: dict[str, Any] | None) -> TrackingSpec | None:
    block = (tracking or {}).get("mlflow")
    return TrackingSpec(experiment=block["experiment"], uri=block.get("uri")) if block else None


def _norm(path: str) -> str:
    return "/".join(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
