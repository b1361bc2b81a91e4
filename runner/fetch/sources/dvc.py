"""A DVC-tracked file or folder, read from DVC's own formats without running DVC.

The pin is the out's md5 in a `.dvc` file or a `dvc.lock` stage (in the manifest's folder, or in a
git repository at a revision). A folder's md5 ends in `.dir` and names the `.dir` object: the JSON
list of {md5, relpath} of its files. Objects live in the remote at `files/md5/<2 hex>/<30 hex>`
(DVC 3; DVC 2 remotes: `<2 hex>/<30 hex>`). A version-aware remote (`version_aware true`) keeps
files at their workspace path instead, and the .dvc out lists each file with its `version_id`.
Every file and the `.dir` object are verified by md5; the cache stores them by sha256 and the
attestation records the tree's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import yaml

from runner.errors import FetchError, IntegrityError, UsageError
from runner.fetch.cache import Cache, Blob
from runner.fetch.download import fetch_blob
from runner.fetch.sources.interface import ALIAS_KIND, DIR_ALIAS_KIND, DataSource, FileRequest, Resolved, SourceEnv
from runner.fetch.sources.listing import MAX_LISTING_BYTES, ListedFile, check_paths
from runner.manifest import DvcSpec

_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class DvcOut:
    """One out of a .dvc file or dvc.lock stage, as DVC wrote it."""

    md5: str  # 32 hex (without '.dir')
    is_dir: bool
    path: str  # the out's path relative to the repository root (posix)
    size: int | None
    nfiles: int | None
    legacy: bool  # written by DVC 2 (no `hash: md5`): remote layout <2>/<30>
    files: tuple[dict[str, Any], ...]  # version-aware remotes: per-file md5, relpath, version_id
    version_id: str | None  # version-aware remotes: a file out's version
    commit: str | None  # the git commit read from, when repo is given
    recorded_md5: bool = True  # False: a version-aware out without md5 (computed from its file list)


class DvcSource(DataSource):
    """`data[].dvc`."""

    kind = "dvc"

    def __init__(self, name: str, spec: DvcSpec, root: Path) -> None:
        self.name, self.spec, self.root = name, spec, root
        self._out: DvcOut | None = None

    @property
    def where(self) -> str:
        """The .dvc file or the dvc.lock entry, as the manifest names it."""
        return str(self.spec.file or self.spec.lock)

    @property
    def pin(self) -> str:
        """Where the md5 lives, and how DVC updates it (messages)."""
        return f"{self.where} (DVC writes it: `dvc add` or `dvc commit`, then `dvc push`)"

    def out(self) -> DvcOut:
        """The out the manifest names (read once per source)."""
        if self._out is None:
            self._out = self._read_out()
        return self._out

    def describe(self) -> dict[str, Any]:
        """Kind, where the pin is read, the remote and DVC's md5 pin."""
        out = self.out()
        return {"kind": self.kind, "uri": self.spec.remote, "remote": self.spec.remote, "file": self.spec.file, "lock": self.spec.lock,
                "repo": self.spec.repo, "rev": out.commit, "path": out.path,
                "md5": out.md5 + (".dir" if out.is_dir else ""), "size": out.size,
                "versionAware": bool(out.files or out.version_id),
                "nfiles": out.nfiles if out.nfiles is not None else (len(out.files) if out.files else None)}

    def known_result(self, cache: Cache) -> tuple[str, str] | None:
        """The tree (or blob) this md5 was stored as by an earlier fetch."""
        out = self.out()
        if out.is_dir:
            tree = cache.read_fingerprint("md5", out.md5, DIR_ALIAS_KIND)
            return ("tree", tree) if tree else None
        blob = cache.read_fingerprint("md5", out.md5, ALIAS_KIND)
        return ("blob", blob) if blob else None

    def resolve(self, env: SourceEnv) -> Resolved:
        """The file requests: from the verified .dir object, or the out's own file list (version-aware)."""
        out = self.out()
        remote = self.spec.remote.rstrip("/")
        shown = remote
        if not out.is_dir and out.files:
            raise UsageError(f"{self.name}: {self.where}: a file out with a file list; is this a DVC file?")
        if not out.is_dir:
            uri = _versioned(f"{remote}/{quote(out.path)}", out.version_id) if out.version_id else _object(remote, out.md5, out.legacy)
            return Resolved(uri=shown, single_file=True, alias=("md5", out.md5), pin=self.pin,
                            requests=(FileRequest(path="", uri=uri, digests={"md5": out.md5}, size=out.size),))
        if out.files:
            entries = [{"md5": str(f.get("md5", "")), "relpath": str(f.get("relpath", ""))} for f in out.files]
            if out.recorded_md5:
                _check_dir_md5(self.name, entries, out.md5, self.where)
            requests = tuple(FileRequest(path=str(f["relpath"]), digests={"md5": str(f["md5"]).lower()},
                                         uri=_versioned(f"{remote}/{quote(out.path)}/{quote(str(f['relpath']))}",
                                                        _version_of(f)),
                                         size=f.get("size") if isinstance(f.get("size"), int) else None)
                             for f in out.files)
        else:
            dir_uri = _object(remote, out.md5, out.legacy) + ".dir"
            # A .dir object is a listing read whole into memory: bounded like a directory's listing.
            blob = fetch_blob(env.cache, dir_uri, {"md5": out.md5}, name=f"{self.name} (.dir object)",
                              base_dir=env.root, options=replace(env.options, max_download=MAX_LISTING_BYTES),
                              fetchers=env.fetchers, reporter=env.reporter, cancel=env.cancel, kind="DVC .dir object",
                              pin=self.pin)
            entries = _read_dir_object(self.name, blob, dir_uri)
            requests = tuple(FileRequest(path=e["relpath"], uri=_object(remote, e["md5"], out.legacy),
                                         digests={"md5": e["md5"]}) for e in entries)
        check_paths([ListedFile(r.path, 0, "") for r in requests], f"{self.name}: {shown}")
        return Resolved(uri=shown, single_file=False, requests=requests, alias=("md5", out.md5), pin=self.pin)

    # --- reading DVC's files ----------------------------------------------------------------------

    def _read_out(self) -> DvcOut:
        file_part, _, entry = (self.spec.lock or "").partition("#")
        relative = self.spec.file or file_part
        if self.spec.repo:
            text, commit = _git_show(self.name, self.spec.repo, self.spec.rev, relative)
            location = PurePosixPath(relative)
        else:
            path = (self.root / relative)
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise UsageError(f"{self.name}: {path}: cannot read: {exc.strerror or exc}; fix dvc.file or "
                                 "dvc.lock") from None
            commit = None
            top = _repo_root(path.parent.resolve())
            location = PurePosixPath(path.resolve().relative_to(top).as_posix())
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{self.name}: {relative}: not valid YAML ({exc.__class__.__name__}); is it a DVC "
                             "file?") from None
        if self.spec.file:
            outs = doc.get("outs") if isinstance(doc, dict) else None
            if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
                raise UsageError(f"{self.name}: {relative}: expected one entry under outs (a file from `dvc add`)")
            raw = outs[0]
        else:
            stage, _, out_path = entry.partition("/")
            stages = doc.get("stages") if isinstance(doc, dict) else None
            outs = (stages or {}).get(stage, {}).get("outs") if isinstance(stages, dict) else None
            if not isinstance(outs, list):
                known = ", ".join(sorted(stages)) if isinstance(stages, dict) else "none"
                raise UsageError(f"{self.name}: {relative}: no stage {stage!r} with outs (stages: {known}); fix "
                                 "dvc.lock as PATH#STAGE/OUT")
            matches = [o for o in outs if isinstance(o, dict) and str(o.get("path", "")).rstrip("/") == out_path.rstrip("/")]
            if not matches:
                paths = ", ".join(str(o.get("path")) for o in outs if isinstance(o, dict))
                raise UsageError(f"{self.name}: {relative}: stage {stage!r} has no out {out_path!r} (outs: {paths})")
            raw = matches[0]
        return _parse_out(self.name, relative, raw, location, commit)


def _parse_out(name: str, where: str, raw: dict[str, Any], location: PurePosixPath, commit: str | None) -> DvcOut:
    md5 = str(raw.get("md5") or "").lower()
    files = tuple(f for f in raw.get("files") or () if isinstance(f, dict))
    recorded = bool(md5)
    if not md5 and files:
        # A version-aware out lists its files instead of naming a .dir object: the .dir md5 of that
        # list (DVC's own serialisation) identifies it the same way.
        md5 = hashlib.md5(_dir_json([{"md5": str(f.get("md5", "")).lower(), "relpath": str(f.get("relpath", ""))}
                                     for f in files])).hexdigest() + ".dir"
    is_dir = md5.endswith(".dir")
    md5 = md5.removesuffix(".dir")
    if not md5:
        raise UsageError(f"{name}: {where}: the out has no md5 (was it committed with `dvc commit`/`dvc add`?); "
                         "only md5-hashed outs are supported")
    if len(md5) != 32 or not set(md5) <= _HEX:
        # It becomes part of a remote path: anything but 32 hex digits (`../..`) must never get that far.
        shown = str(raw.get("md5"))[:80]
        raise UsageError(f"{name}: {where}: the out's md5 {shown!r} is not an md5 (32 hex digits, `.dir` for a "
                         "folder); the file was edited by hand or is corrupt: run `dvc add` again")
    out_path = PurePosixPath(os.path.normpath(str(location.parent / str(raw.get("path", ""))))).as_posix().lstrip("/")
    cloud = _version_of(raw)
    size, nfiles = raw.get("size"), raw.get("nfiles")
    return DvcOut(md5=md5, is_dir=is_dir, path=out_path, size=size if isinstance(size, int) else None,
                  nfiles=nfiles if isinstance(nfiles, int) else None, legacy=raw.get("hash") != "md5",
                  files=files, version_id=cloud, commit=commit, recorded_md5=recorded)


def _version_of(entry: dict[str, Any]) -> str | None:
    """A version-aware remote's version_id: on the entry itself or under cloud.<remote>."""
    if entry.get("version_id"):
        return str(entry["version_id"])
    cloud = entry.get("cloud")
    if isinstance(cloud, dict):
        for value in cloud.values():
            if isinstance(value, dict) and value.get("version_id"):
                return str(value["version_id"])
    return None


def _versioned(uri: str, version: str | None) -> str:
    if version is None:
        return uri
    if not uri.startswith("s3://"):
        raise UsageError(f"{uri}: a version_id is recorded, but only s3 remotes are version-aware; give the s3 remote")
    return f"{uri}?versionId={quote(version)}"


def _object(remote: str, md5: str, legacy: bool) -> str:
    return f"{remote}/{md5[:2]}/{md5[2:]}" if legacy else f"{remote}/files/md5/{md5[:2]}/{md5[2:]}"


def _dir_json(entries: list[dict[str, str]]) -> bytes:
    """DVC's serialisation of a .dir object (sorted by relpath; the bytes its md5 is taken of)."""
    ordered = sorted(({"md5": e["md5"], "relpath": e["relpath"]} for e in entries), key=lambda e: e["relpath"])
    return json.dumps(ordered, sort_keys=True).encode("utf-8")


def _check_dir_md5(name: str, entries: list[dict[str, str]], md5: str, where: str) -> None:
    """A version-aware out lists its files itself: they must make up the .dir md5 it records."""
    actual = hashlib.md5(_dir_json(entries)).hexdigest()
    if actual != md5:
        raise IntegrityError(f"{name}: {where}: the files listed in the out hash to {actual}.dir, not the recorded "
                             f"{md5}.dir; the .dvc file was edited by hand or is corrupt: run `dvc add` again")


def _read_dir_object(name: str, blob: Blob, uri: str) -> list[dict[str, str]]:
    try:
        doc = json.loads(blob.path.read_bytes())
        entries = [{"md5": str(e["md5"]).lower(), "relpath": str(e["relpath"])} for e in doc]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{name}: {uri}: not a DVC .dir object ({exc}); the remote is corrupt") from None
    except RecursionError:
        raise IntegrityError(f"{name}: {uri}: not a DVC .dir object (nested too deeply); the remote is corrupt") from None
    for e in entries:
        if len(e["md5"]) != 32 or not set(e["md5"]) <= _HEX:
            raise IntegrityError(f"{name}: {uri}: entry {e['relpath']!r} has a malformed md5")
    return entries


def _repo_root(folder: Path) -> Path:
    """The DVC repository's root (the folder holding .dvc/), else the folder itself."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return folder


def _git_show(name: str, repo: str, rev: str | None, path: str) -> tuple[bytes, str]:
    """A file's bytes at a revision of a git repository, and the commit it resolved to."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1"}
    with tempfile.TemporaryDirectory(prefix="xrun-dvc-git-") as tmp:
        def git(*args: str) -> bytes:
            done = subprocess.run(["git", *args], cwd=tmp, env=env, capture_output=True, timeout=600)
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace").strip().splitlines()
                raise FetchError(f"{name}: git {args[0]} {repo}: {detail[-1] if detail else 'failed'}; check dvc.repo "
                                 "and dvc.rev (and git credentials in the environment)")
            return done.stdout

        try:
            git("clone", "--quiet", "--no-checkout", "--", repo, "repo")
        except FileNotFoundError:
            raise FetchError(f"{name}: git is not installed; install git to read {path} from {repo}") from None
        commit = git("-C", "repo", "rev-parse", "--verify", "--end-of-options", f"{rev or 'HEAD'}^{{commit}}").decode().strip()
        return git("-C", "repo", "show", f"{commit}:{path}"), commit
