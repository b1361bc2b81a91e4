"""The code tree: nothing private reaches the image (issue 20 §1).

xrun's own paths (cache, runs folder, the key it signs with, .git) never go in; private keys and
credentials are refused unless the manifest says they are no secret; `.xrunignore` and `code.from: git`
choose the files; `xrun plan` shows what goes in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments import write_experiment
from runner.cli import main
from runner.codetree import OwnPaths
from runner.errors import UsageError
from runner.manifest import load_manifest
from runner.plan import resolve_plan
from runner.secretscan import inspect

CODE = {"train.py": "print('hi')\n", "pkg/util.py": "X = 1\n"}


def experiment(root: Path, code_spec: dict | None = None, files: dict[str, str] | None = None, *,
               base: str = "127.0.0.1:5000/base@sha256:" + "0" * 64, command: list[str] | None = None,
               outputs: list[dict] | None = None) -> Path:
    """An experiment whose code folder is its own folder (the layout the issue reports)."""
    return write_experiment(root, base, files=files or CODE, command=command or ["python3", "train.py"],
                            outputs=outputs or [{"path": "out.txt"}], name="codetree",
                            extra={"code": {"path": ".", **(code_spec or {})}})


def paths(manifest: Path, own: OwnPaths | None = None) -> list[str]:
    return [f.path for f in resolve_plan(load_manifest(manifest), own or OwnPaths()).code.files]


@pytest.fixture(autouse=True)
def _no_default_key(monkeypatch, tmp_path):
    monkeypatch.delenv("XRUN_SIGNING_KEY", raising=False)
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "outside-cache"))


def test_keygen_key_and_env_token_are_refused_naming_the_file(tmp_path, capsys):
    manifest = experiment(tmp_path / "exp")
    assert main(["keygen", "--out", str(tmp_path / "exp" / "keys")]) == 0
    capsys.readouterr()
    assert main(["plan", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'exp' / 'keys' / 'xrun.key'}: a private key" in err and "code.notSecret" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    (tmp_path / "exp" / "keys" / "xrun.key").unlink()
    (tmp_path / "exp" / ".env").write_text("# local settings\nLOG_LEVEL=debug\nexport HF_TOKEN='hf_abc123'\n")
    assert main(["plan", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'exp' / '.env'}: a .env file assigning HF_TOKEN" in err


def test_encrypted_key_is_refused_too(tmp_path, capsys, monkeypatch):
    manifest = experiment(tmp_path / "exp")
    monkeypatch.setenv("XRUN_KEY_PASSWORD", "secret")
    assert main(["keygen", "--out", str(tmp_path / "exp" / "keys")]) == 0
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "exp" / "keys" / "xrun.key").read_bytes()
    with pytest.raises(UsageError, match="xrun.key: a private key"):
        paths(manifest)


@pytest.mark.parametrize(("name", "text", "found"), [
    ("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n-----END OPENSSH PRIVATE KEY-----\n", True),
    ("server.pem", "-----BEGIN CERTIFICATE-----\nMII...\n-----END CERTIFICATE-----\n"
                   "-----BEGIN RSA PRIVATE KEY-----\nMII...\n", True),
    ("secring.asc", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n", True),
    ("xrun.pub", "-----BEGIN PUBLIC KEY-----\nMCow...\n-----END PUBLIC KEY-----\n", False),
    ("credentials", "[default]\naws_access_key_id = AKIAEXAMPLE\n"
                    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY\n", True),
    ("settings.py", "import os\nclient = make(aws_secret_access_key=os.environ['S'])\n", False),
    (".env", "DB_PASSWORD=\nAPI_KEY=\n", False),  # empty values: a template
    (".env", "GITHUB_TOKEN=${CI_TOKEN}\n", False),  # names a secret, holds none
    (".env.local", "OPENAI_API_KEY=sk-123\n", True),
    ("prod.env", "DJANGO_SECRET_KEY=\"x y z\"\n", True),
    (".netrc", "machine example.org login me password hunter2\n", True),
    (".netrc", "machine example.org login me\n", False),
    (".pypirc", "[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmc\n", True),
    (".pypirc", "[distutils]\nindex-servers = pypi\n", False),
    ("train.py", "TOKEN = 'not an env file'\n", False),
])
def test_what_counts_as_a_secret(name, text, found):
    assert (inspect(name, text.encode()) is not None) == found


def test_a_key_at_the_head_of_a_big_file_is_found_and_only_heads_are_judged(tmp_path):
    """Files over hashing's pool size are read by the pool; their head is still checked."""
    manifest = experiment(tmp_path / "exp")
    with open(tmp_path / "exp" / "bundle.pem", "wb") as f:
        f.write(b"-----BEGIN EC PRIVATE KEY-----\n")
        f.truncate(5 << 20)
    with pytest.raises(UsageError, match="bundle.pem: a private key"):
        paths(manifest)
    (tmp_path / "exp" / "bundle.pem").unlink()
    with open(tmp_path / "exp" / "weights.bin", "wb") as f:  # a marker far past the head is not looked for
        f.seek(1 << 20)
        f.write(b"-----BEGIN PRIVATE KEY-----\n")
    assert "weights.bin" in paths(manifest)


def test_not_secret_setting_allows_a_listed_path(tmp_path):
    manifest = experiment(tmp_path / "exp", {"notSecret": ["tests/fixtures/", ".env"]},
                                {**CODE, "tests/fixtures/example.key": "-----BEGIN PRIVATE KEY-----\nabc\n",
                                 ".env": "TOKEN=example\n"})
    assert paths(manifest) == [".env", "pkg/util.py", "tests/fixtures/example.key", "train.py"]
    (tmp_path / "exp" / "other.key").write_text("-----BEGIN EC PRIVATE KEY-----\n")
    with pytest.raises(UsageError, match="other.key"):
        paths(manifest)


def test_the_signing_key_inside_the_folder_is_left_out_silently(tmp_path, monkeypatch):
    manifest = experiment(tmp_path / "exp")
    assert main(["keygen", "--out", str(tmp_path / "exp" / "keys")]) == 0
    key = tmp_path / "exp" / "keys" / "xrun.key"
    tree = resolve_plan(load_manifest(manifest), OwnPaths(key=key)).code
    assert [f.path for f in tree.files] == ["keys/xrun.pub", "pkg/util.py", "train.py"]
    assert tree.left_out == ("the signing key (keys/xrun.key)",)
    # The same through XRUN_SIGNING_KEY, given relative to the working folder.
    monkeypatch.chdir(tmp_path / "exp")
    monkeypatch.setenv("XRUN_SIGNING_KEY", "keys/xrun.key")
    assert [f.path for f in resolve_plan(load_manifest(manifest)).code.files] == [f.path for f in tree.files]


def test_cache_and_runs_folder_inside_the_folder_are_left_out_and_the_digest_is_of_what_goes_in(tmp_path,
                                                                                                monkeypatch):
    manifest = experiment(tmp_path / "exp")
    before = resolve_plan(load_manifest(manifest), OwnPaths())
    cache = tmp_path / "exp" / "cache"
    (cache / "blobs" / "sha256" / "ab").mkdir(parents=True)
    (cache / "blobs" / "sha256" / "ab" / "abcd").write_bytes(b"wheel bytes")
    (tmp_path / "exp" / "my-runs" / "r1").mkdir(parents=True)
    (tmp_path / "exp" / "my-runs" / "r1" / "run.json").write_text("{}")
    (tmp_path / "exp" / ".xrun" / "runs").mkdir(parents=True)
    (tmp_path / "exp" / ".xrun" / "runs" / "x").write_text("{}")
    monkeypatch.setenv("XRUN_CACHE_DIR", str(cache))
    after = resolve_plan(load_manifest(manifest), OwnPaths(cache=cache, runs=tmp_path / "exp" / "my-runs"))
    assert [f.path for f in after.code.files] == ["pkg/util.py", "train.py"]
    assert after.code.digest == before.code.digest and after.build_digest == before.build_digest
    assert after.digest == before.digest  # the plan itself does not record where the cache is
    # As `xrun plan` plans it (no --runs-dir), XRUN_CACHE_DIR inside the folder (the 125 "code files").
    by_cli = resolve_plan(load_manifest(manifest))
    assert [f.path for f in by_cli.code.files] == ["my-runs/r1/run.json", "pkg/util.py", "train.py"]


def test_git_folder_is_never_put_back(tmp_path):
    manifest = experiment(tmp_path / "exp", {"exclude": ["!.git"]})
    (tmp_path / "exp" / ".git").mkdir()
    (tmp_path / "exp" / ".git" / "config").write_text("[core]\n")
    (tmp_path / "exp" / ".xrunignore").write_text("!.git/\n")
    assert paths(manifest) == [".xrunignore", "pkg/util.py", "train.py"]


def test_xrunignore_folders_negation_and_anchors(tmp_path):
    files = {**CODE, "data/big.bin": "x", "data/keep.txt": "k", "logs/a.log": "l", "notes/a.log": "l",
             "notes/keep.log": "k", "build/out.o": "o", "src/build/x.py": "",
             "secret.key": "-----BEGIN PRIVATE KEY-----"}
    manifest = experiment(tmp_path / "exp", files=files)
    (tmp_path / "exp" / ".xrunignore").write_text(
        "# comments and blank lines are fine\n\n*.log\n!keep.log\n/build/\nlogs/\n*.bin\nsecret.key\n")
    assert paths(manifest) == [".xrunignore", "data/keep.txt", "notes/keep.log", "pkg/util.py", "src/build/x.py",
                               "train.py"]
    # A folder left out cannot have a file put back (git's rule): `data/` then `!data/keep.txt`.
    (tmp_path / "exp" / ".xrunignore").write_text("data/\n!data/keep.txt\n*.log\nbuild/\nsecret.key\n")
    assert paths(manifest) == [".xrunignore", "pkg/util.py", "train.py"]


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
                   check=True, capture_output=True)


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_code_from_git_takes_tracked_files_with_their_changes_and_records_dirty(tmp_path, capsys):
    manifest = experiment(tmp_path / "exp", {"from": "git"}, {**CODE, ".gitignore": "*.ckpt\n"})
    root = tmp_path / "exp"
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    clean = resolve_plan(load_manifest(manifest), OwnPaths())
    assert [f.path for f in clean.code.files] == [".gitignore", "pkg/util.py", "train.py"]  # not the manifest
    assert clean.code.git_dirty is False and clean.to_json()["code"]["from"] == "git"
    (root / "train.py").write_text("print('changed')\n")  # a modification goes in, as in the work tree
    (root / "scratch.py").write_text("untracked\n")  # untracked: not in
    (root / "model.ckpt").write_text("ignored\n")
    (root / "staged.py").write_text("staged\n")
    git(root, "add", "staged.py")  # staged: tracked
    (root / "pkg" / "util.py").unlink()  # deleted in the work tree: not in
    dirty = resolve_plan(load_manifest(manifest), OwnPaths())
    assert [f.path for f in dirty.code.files] == [".gitignore", "staged.py", "train.py"]
    assert dirty.code.git_dirty is True and dirty.code.git_commit == clean.code.git_commit
    assert dirty.code.files[-1].sha256 != clean.code.files[-1].sha256
    assert main(["plan", str(manifest), "--json"]) == 0
    code = json.loads(capsys.readouterr().out)["plan"]["code"]
    assert code["gitDirty"] is True and code["from"] == "git" and len(code["gitCommit"]) == 40
    # A tracked private key is refused all the same.
    (root / "deploy.key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    git(root, "add", "deploy.key")
    with pytest.raises(UsageError, match="deploy.key: a private key"):
        resolve_plan(load_manifest(manifest), OwnPaths())


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_code_from_git_outside_a_work_tree_is_exit_2(tmp_path, capsys):
    manifest = experiment(tmp_path / "exp", {"from": "git"})
    assert main(["plan", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "not in a git work tree" in err and str(tmp_path / "exp") in err and "Traceback" not in err


def test_a_folder_tree_is_planned_as_before(tmp_path):
    """No code.from: the plan's code object has the keys it always had (plan digests do not move)."""
    manifest = experiment(tmp_path / "exp")
    code = resolve_plan(load_manifest(manifest), OwnPaths()).to_json()["code"]
    assert set(code) == {"digest", "files", "path", "gitCommit", "gitDirty"}


LIST_WORKSPACE = ("import json, os; json.dump(sorted(os.path.relpath(os.path.join(d, f), '/workspace') "
                  "for d, _, fs in os.walk('/workspace') for f in fs), open('/outputs/listing.json', 'w'))")


@pytest.mark.docker
@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_real_run_image_holds_neither_key_nor_cache_nor_git(tmp_path, base_image, monkeypatch):
    from runner.pipeline import RunOptions, run_experiment

    root = tmp_path / "exp"
    manifest = experiment(root, base=base_image, command=["python3", "-c", LIST_WORKSPACE],
                          outputs=[{"path": "listing.json"}])
    assert main(["keygen", "--out", str(root / "keys")]) == 0
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    monkeypatch.setenv("XRUN_CACHE_DIR", str(root / "cache"))
    summary = run_experiment(manifest, RunOptions(runs_dir=root / "my-runs", key=root / "keys" / "xrun.key",
                                                  quiet=True))
    listing = json.loads((summary.run_dir / "outputs" / "listing.json").read_text())
    assert listing == ["keys/xrun.pub", "pkg/util.py", "train.py"]
    assert any((root / "cache").rglob("*")), "the cache was inside the folder during the run"
    assert summary.signed and summary.run_dir.parent == root / "my-runs"
    # Reproducing it: the key that signs the re-run is left out again, so the code tree matches the record;
    # a re-run with no signing key named finds a private key in the folder and refuses.
    from runner.reproduce import reproduce

    key, pub = root / "keys" / "xrun.key", root / "keys" / "xrun.pub"
    with pytest.raises(UsageError, match="xrun.key: a private key"):
        reproduce(summary.attestation, manifest=None, keys=[pub], rtol=None, atol=None,
                  options=RunOptions(runs_dir=root / "my-runs", quiet=True))
    report = reproduce(summary.attestation, manifest=None, keys=[pub], rtol=None, atol=None,
                       options=RunOptions(runs_dir=root / "my-runs", key=key, quiet=True))
    assert report.reproduced


def test_plan_shows_count_size_biggest_files_and_what_was_left_out(tmp_path, capsys, monkeypatch):
    files = {**CODE, **{f"weights/w{i}.bin": "x" * (100 * (i + 1)) for i in range(7)}}
    manifest = experiment(tmp_path / "exp", files=files)
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "exp" / "cache"))
    (tmp_path / "exp" / "cache" / "blobs").mkdir(parents=True)
    (tmp_path / "exp" / "cache" / "blobs" / "x").write_bytes(b"x" * 5000)
    assert main(["plan", str(manifest), "--json"]) == 0
    out = capsys.readouterr()
    tree = json.loads(out.out)["codeTree"]
    assert tree["files"] == 9 and tree["size"] == sum(len(t) for t in files.values())
    assert [b["path"] for b in tree["biggest"]] == [f"weights/w{i}.bin" for i in (6, 5, 4, 3, 2)]
    assert tree["biggest"][0] == {"path": "weights/w6.bin", "size": 700}
    assert tree["leftOut"] == ["the xrun cache (cache)"]
    assert out.err == ""  # small: no warning
    assert main(["plan", str(manifest)]) == 0
    text = capsys.readouterr().out
    assert "(9 files, 2.8 KiB, sha256:" in text and "biggest: weights/w6.bin 700 B, weights/w5.bin 600 B" in text
    assert "left out: the xrun cache (cache)" in text


def test_plan_warns_once_on_stderr_when_the_tree_is_over_100_mib(tmp_path, capsys):
    manifest = experiment(tmp_path / "exp")
    with open(tmp_path / "exp" / "model.ckpt", "wb") as f:
        f.truncate(101 << 20)  # sparse: no 100 MiB written on a shared machine
    assert main(["plan", str(manifest), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["codeTree"]["biggest"][0]["path"] == "model.ckpt"
    (line,) = out.err.strip().splitlines()
    assert line.startswith("xrun: warning: the code tree is 101.0 MiB") and "model.ckpt" in line
    assert "belongs in data:" in line


def test_bad_code_settings_are_one_line_each_with_the_fix(tmp_path, capsys):
    manifest = experiment(tmp_path / "exp", {"from": "svn", "notSecret": "a.key"})
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "code.from: \"svn\" is not allowed; use one of: folder, git" in err
    assert "code.notSecret: expected a list" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_code_from_git_judges_each_parent_folder_once(tmp_path):
    from runner.codetree import git_files

    root = tmp_path / "repo"
    (root / "a" / "b").mkdir(parents=True)
    for name in ("1.txt", "2.txt", "3.txt"):
        (root / "a" / "b" / name).write_text(name)
    git(root, "init", "-q")
    git(root, "add", "-A")
    asked: list[tuple[str, bool]] = []

    def left_out(rel: str, is_dir: bool) -> bool:
        asked.append((rel, is_dir))
        return False

    assert [rel for rel, _ in git_files(root, left_out)] == ["a/b/1.txt", "a/b/2.txt", "a/b/3.txt"]
    assert [q for q in asked if q[1]] == [("a", True), ("a/b", True)]
