"""Which files of the code folder go into the image, and the refusal of the private ones.

The candidates are the folder's files, or with `code.from: git` the files git tracks (as they are in
the work tree). Never in: `.git` and `.xrun` at any depth, the manifest itself, and xrun's own paths
when they sit inside the folder (its cache, the runs folder, the key this invocation signs with).
Then the user's rules (gitignore syntax, matched by pathspec): `__pycache__`/`*.pyc`, the manifest's
`code.exclude`, and `.xrunignore` at the folder's top. What is left is checked for private keys and
credentials (secretscan.py); one is refused unless `code.notSecret` names it. The tree's digest is
of what goes in, so where the cache or the key sits never changes the image ID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pathspec

from runner import secretscan
from runner.errors import EnvironmentProblem, UsageError
from runner.hashing import FileDigest, hash_files, ignore_rules, list_tree
from runner.manifest import CodeSpec
from runner.progress import human_bytes
from runner.wire import fields_to_wire

BIG_TREE = 100 << 20  # a code tree over this holds data, which belongs in `data:` (fetched, verified, mounted)
NEVER = frozenset({".git", ".xrun"})  # a user's rule cannot put these back
DEFAULT_IGNORE = ("__pycache__", "*.pyc")
IGNORE_FILE = ".xrunignore"


def signing_key_path(explicit: Path | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The key this invocation signs with: --key, else XRUN_SIGNING_KEY, else none (unsigned)."""
    if explicit is not None:
        return explicit
    value = environ.get("XRUN_SIGNING_KEY")
    return Path(value) if value else None


@dataclass(frozen=True)
class OwnPaths:
    """xrun's own paths of one invocation: never code, wherever they sit."""

    cache: Path | None = None
    runs: Path | None = None
    key: Path | None = None  # the private key this invocation signs with

    @classmethod
    def default(cls, manifest_root: Path, environ: Mapping[str, str] = os.environ) -> "OwnPaths":
        """What a command without --cache-dir/--runs-dir/--key uses: default cache and runs folder, XRUN_SIGNING_KEY."""
        from runner.fetch.cache import Cache
        from runner.rundir import default_runs_dir

        return cls(cache=Cache.default(environ).root, runs=default_runs_dir(manifest_root),
                   key=signing_key_path(None, environ))

    def named(self) -> list[tuple[str, Path]]:
        """(what, path) of each path that is set, for the messages that say what was left out."""
        pairs = (("the xrun cache", self.cache), ("the runs folder", self.runs), ("the signing key", self.key))
        return [(what, path) for what, path in pairs if path is not None]


@dataclass(frozen=True)
class CodeFiles:
    """The files that go in, hashed, and which of xrun's own paths were found inside the folder and left out."""

    files: list[FileDigest]  # sorted by path
    left_out: tuple[str, ...]  # e.g. "the signing key (keys/xrun.key)"
    git_commit: str | None
    git_dirty: bool | None


@dataclass(frozen=True)
class SizedFile:
    """A file of the tree by its size (the biggest files `xrun plan` shows)."""

    path: str
    size: int


@dataclass(frozen=True)
class CodeSummary:
    """What `xrun plan` shows of the code tree: count, total size, the biggest files, xrun's paths left out."""

    files: int
    size: int
    biggest: tuple[SizedFile, ...]
    left_out: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """camelCase, through wire.py."""
        return fields_to_wire(self)

    def warning(self) -> str | None:
        """One line when the tree is over BIG_TREE, naming its biggest files; else None."""
        if self.size <= BIG_TREE:
            return None
        top = ", ".join(f"{f.path} {human_bytes(f.size)}" for f in self.biggest[:3])
        return (f"the code tree is {human_bytes(self.size)} (over {human_bytes(BIG_TREE)}; biggest: {top}): data "
                "belongs in data: (pinned by digest, mounted read-only), not in the image; list it in .xrunignore")


def collect(spec: CodeSpec, own: OwnPaths, manifest_file: Path | None = None) -> CodeFiles:
    """The code files that go into the image, hashed; UsageError (exit 2) naming the first private file found."""
    root = spec.path.resolve()
    inside: dict[str, str] = {}
    for what, path in own.named():
        rel = _relative(path, root)
        if rel is not None and os.path.lexists(root / rel):
            inside[rel] = what
    if manifest_file is not None:
        rel = _relative(manifest_file, root)
        if rel is not None:  # recorded on its own; inside the image every seed change would rebuild
            inside.setdefault(rel, "the manifest")
    rules = ignore_rules(DEFAULT_IGNORE + spec.exclude + read_ignore_file(root))

    def left_out(rel: str, is_dir: bool) -> bool:
        return rel in inside or rel.rsplit("/", 1)[-1] in NEVER or rules(rel, is_dir)

    if spec.source == "git":
        files = git_files(root, left_out)
        commit, dirty = git_state(root, untracked=False)
    else:
        files = list_tree(root, left_out)
        commit, dirty = git_state(root, untracked=True)
    scanner = secretscan.Scanner(pathspec.GitIgnoreSpec.from_lines(list(spec.not_secret)).match_file)
    hashed = hash_files(files, on_head=scanner)
    refuse_secrets(root, scanner.found)
    return CodeFiles(hashed, tuple(f"{what} ({rel})" for rel, what in sorted(inside.items()) if what != "the manifest"),
                     commit, dirty)


def _relative(path: Path, root: Path) -> str | None:
    """path's posix path under root, or None when it is not inside (or is root itself)."""
    resolved = path.expanduser().resolve()
    if root not in resolved.parents:
        return None
    return resolved.relative_to(root).as_posix()


def read_ignore_file(root: Path) -> tuple[str, ...]:
    """The lines of `.xrunignore` at the code folder's top (none when there is no such file)."""
    path = root / IGNORE_FILE
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc}); fix or remove it") from None


def refuse_secrets(root: Path, found: list[secretscan.Finding]) -> None:
    """UsageError naming each file found to hold a private key or a credential (code.notSecret already applied)."""
    if not found:
        return
    first, *rest = found
    signing = ", name it as the signing key (--key, XRUN_SIGNING_KEY) to have it left out" if first.private_key else ""
    raise UsageError(f"{root / first.path}: {first.what} would be baked into the image; move it out of the code "
                     f"folder, list it in {root / IGNORE_FILE}{signing}, or, if it is no secret, list it in the "
                     "manifest's code.notSecret", lines=[f"{root / f.path}: {f.what}" for f in rest])


def git_files(root: Path, left_out: Callable[[str, bool], bool]) -> list[tuple[str, str]]:
    """The files git tracks under root (committed or staged), as they are in the work tree, rules applied."""
    out = _git(root, "ls-files", "-z", "--cached", "--recurse-submodules")
    found: list[tuple[str, str]] = []
    folders: dict[str, bool] = {}  # each parent folder judged once, not once per file under it

    def folder_left_out(prefix: str) -> bool:
        if prefix not in folders:
            folders[prefix] = left_out(prefix, True)
        return folders[prefix]

    for rel in sorted(set(filter(None, out.split("\0")))):
        parts = rel.split("/")
        if any(folder_left_out("/".join(parts[:i])) for i in range(1, len(parts))) or left_out(rel, False):
            continue
        path = root / rel
        if path.is_symlink() and root not in path.resolve().parents:
            raise UsageError(f"{path}: symlink points outside {root} (to {path.resolve()}); copy the file in or "
                             f"list it in {root / IGNORE_FILE}")
        if path.is_symlink() and path.is_dir():
            # A tracked link to a folder: its files, as a folder tree would hold them.
            found += [(f"{rel}/{sub}", full) for sub, full in list_tree(path, left_out_under(rel, left_out))]
        elif path.is_file():  # a tracked file deleted in the work tree is not there to go in
            found.append((rel, str(path)))
    found.sort()
    return found


def left_out_under(prefix: str, left_out: Callable[[str, bool], bool]) -> Callable[[str, bool], bool]:
    """The rules for a subtree walked on its own: its paths are judged as the code folder would name them."""
    return lambda rel, is_dir: left_out(f"{prefix}/{rel}", is_dir)


def git_state(folder: Path, *, untracked: bool = True) -> tuple[str | None, bool | None]:
    """(HEAD commit, dirty) when folder is inside a git work tree, else (None, None).

    Dirty counts untracked files only when they would go in (a folder tree, not `code.from: git`).
    """
    git = shutil.which("git")
    if not git:
        return None, None
    try:
        head = subprocess.run([git, "-C", str(folder), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, None
        status = subprocess.run([git, "-C", str(folder), "status", "--porcelain",
                                 f"--untracked-files={'normal' if untracked else 'no'}", "--", "."],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None


def repo_path(file: Path) -> str | None:
    """file's path relative to the top of its git work tree (posix), or None outside one."""
    git = shutil.which("git")
    if not git:
        return None
    try:
        top = subprocess.run([git, "-C", str(file.resolve().parent), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if top.returncode != 0 or not top.stdout.strip():
        return None
    try:
        return file.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    except ValueError:
        return None


def _git(root: Path, *args: str) -> str:
    """git's stdout in root; exit 2 when root is not in a work tree, exit 4 when git cannot run."""
    git = shutil.which("git")
    if not git:
        raise EnvironmentProblem(f"{root}: code.from is git but git is not installed; install git or remove code.from")
    try:
        proc = subprocess.run([git, "-C", str(root), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvironmentProblem(f"{root}: git {args[0]} failed ({exc}); check the git installation") from None
    if proc.returncode != 0:
        if "not a git repository" in proc.stderr:
            raise UsageError(f"{root}: code.from is git but the folder is not in a git work tree; run `git init` "
                             "and commit the code, or remove code.from to take the folder as it is")
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise EnvironmentProblem(f"{root}: git {args[0]} failed: {last}")
    return proc.stdout
