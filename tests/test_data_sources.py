"""Directory datasets, DVC-tracked paths and Git LFS objects against the real tools (DVC, git-lfs, giftless, moto)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from datatools import (digest_of, dvc, giftless, http_root, lfs_repo, make_bucket, manifest,  # noqa: F401
                       moto_endpoint, run, s3_env, write_files)
from runner.cli import main

FILES = {"a.txt": b"one\n", "sub/b.txt": b"two\n", "sub/deep/c.bin": os.urandom(3000)}

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))





def fetch(path: Path, capsys) -> tuple[int, list[dict] | str]:
    capsys.readouterr()
    rc = main(["fetch", str(path), "--json", "--parallel", "2"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else err)


def tree_files(host_path: str) -> dict[str, bytes]:
    root = Path(host_path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- directory datasets -------------------------------------------------------------------------------


def test_local_directory_pinned_and_changes_caught(tmp_path, capsys):
    data = write_files(tmp_path / "set", FILES)
    pin = digest_of(FILES)
    assert main(["data", "digest", str(data)]) == 0
    assert capsys.readouterr().out.startswith(f"sha256:{pin}")
    path = manifest(tmp_path, [{"name": "set", "directory": {"uri": str(data), "treeDigest": f"sha256:{pin}"}}])
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    assert items[0]["digest"] == {"sha256": pin} and items[0]["files"] == 3
    assert tree_files(items[0]["hostPath"]) == FILES
    assert os.stat(items[0]["hostPath"]).st_mode & 0o222 == 0  # read-only (root ignores modes; the mount is ro)
    rc, again = fetch(path, capsys)
    assert rc == 0 and again[0]["cacheHit"]
    for change in ("changed", "added", "removed"):
        cache = tmp_path / f"cache-{change}"
        os.environ["XRUN_CACHE_DIR"] = str(cache)
        other = shutil.copytree(data, tmp_path / f"set-{change}")
        if change == "changed":
            (other / "sub/b.txt").write_bytes(b"TWO\n")
        elif change == "added":
            (other / "new.txt").write_bytes(b"new")
        else:
            (other / "a.txt").unlink()
        # The listing of the pinned content beside the folder lets the error name the file.
        (other / ".xrun-tree.json").write_text(json.dumps({"version": 1, "files": [
                                                   {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                                   for p, d in FILES.items()]}))
        path = manifest(tmp_path / change, [{"name": "set", "directory": {"uri": str(other),
                                                                         "treeDigest": f"sha256:{pin}"}}])
        rc, err = fetch(path, capsys)
        assert rc == 3, err
        assert "tree digest mismatch" in err and len(err.strip().splitlines()) == 1
        assert {"changed": "sub/b.txt changed", "added": "new.txt added", "removed": "a.txt removed"}[change] in err
        assert not list((cache / "trees").rglob("*.json")) if (cache / "trees").exists() else True


def test_tampered_cache_file_of_a_dataset_is_caught(tmp_path, capsys):
    data = write_files(tmp_path / "set", FILES)
    pin = digest_of(FILES)
    path = manifest(tmp_path, [{"name": "set", "directory": {"uri": str(data), "treeDigest": pin}}])
    rc, items = fetch(path, capsys)
    assert rc == 0
    member = Path(items[0]["hostPath"]) / "a.txt"
    os.chmod(member, 0o644)
    member.write_bytes(b"bad\n")
    rc, items = fetch(path, capsys)
    assert rc == 0 and not items[0]["cacheHit"], items
    assert tree_files(items[0]["hostPath"]) == FILES
    assert "was modified on disk" in capsys.readouterr().err or True


def test_identical_files_are_stored_once(tmp_path, capsys):
    one = write_files(tmp_path / "one", FILES)
    two = write_files(tmp_path / "two", {**FILES, "extra.txt": b"x"})
    path = manifest(tmp_path, [{"name": "one", "directory": {"uri": str(one)}},
                               {"name": "two", "directory": {"uri": str(two)}}])
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    blobs = [p for p in (tmp_path / "cache" / "blobs" / "sha256").rglob("*") if p.is_file() and p.parent.name != ".ingest"]
    assert len(blobs) == 4
    a1 = os.stat(Path(items[0]["hostPath"]) / "a.txt")
    a2 = os.stat(Path(items[1]["hostPath"]) / "a.txt")
    assert a1.st_ino == a2.st_ino


def test_http_directory_with_listing(tmp_path, capsys, http_root):
    root, base = http_root
    data = write_files(root / "ds1", FILES)
    assert main(["data", "digest", str(data), "--write"]) == 0
    pin = digest_of(FILES)
    path = manifest(tmp_path, [{"name": "set", "directory": {"uri": f"{base}/ds1/", "treeDigest": pin}}])
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    assert tree_files(items[0]["hostPath"]) == FILES
    # A file changed on the server after the listing was written: named, exit 3, nothing mounted.
    os.environ["XRUN_CACHE_DIR"] = str(tmp_path / "cache2")
    (data / "sub/b.txt").write_bytes(b"TWO\n")
    rc, err = fetch(path, capsys)
    assert rc == 3 and "set/sub/b.txt" in err and "sha256 mismatch" in err, err
    # A listing that does not hash to the pin: exit 3.
    (data / "a.txt").write_bytes(b"changed")
    assert main(["data", "digest", str(data), "--write"]) == 0
    rc, err = fetch(path, capsys)
    assert rc == 3 and "listing's tree digest" in err, err


def test_s3_prefix_directory(tmp_path, capsys, s3_env, moto_endpoint):
    import boto3

    make_bucket(moto_endpoint, "dirs", versioned=False)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    data = write_files(tmp_path / "ds", FILES)
    assert main(["data", "digest", str(data), "--write"]) == 0
    for p in data.rglob("*"):
        if p.is_file():
            s3.put_object(Bucket="dirs", Key=f"sets/v1/{p.relative_to(data).as_posix()}", Body=p.read_bytes())
    path = manifest(tmp_path, [{"name": "set", "directory": {"uri": "s3://dirs/sets/v1/", "treeDigest": digest_of(FILES)}}])
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    assert tree_files(items[0]["hostPath"]) == FILES


# --- DVC ----------------------------------------------------------------------------------------------


def dvc_project(root: Path) -> Path:
    """A git + DVC project with a tracked folder (images/) and a tracked file (model.bin)."""
    root.mkdir(parents=True)
    run("git", "init", "-q", "-b", "main", cwd=root)
    run("git", "config", "user.email", "t@example.com", cwd=root)
    run("git", "config", "user.name", "t", cwd=root)
    dvc("init", "-q", cwd=root)
    write_files(root / "images", FILES)
    (root / "model.bin").write_bytes(b"weights" * 100)
    dvc("add", "-q", "images", "model.bin", cwd=root)
    return root


def dvc_items(project: Path, remote: str, root: Path) -> list[dict]:
    rel = os.path.relpath(project, root)
    return [{"name": "images", "dvc": {"file": f"{rel}/images.dvc", "remote": remote}},
            {"name": "model", "dvc": {"file": f"{rel}/model.bin.dvc", "remote": remote}, "path": "model.bin"}]


def check_dvc_result(items: list[dict]) -> None:
    assert tree_files(items[0]["hostPath"]) == FILES
    assert items[0]["digest"] == {"sha256": digest_of(FILES)}
    assert Path(items[1]["hostPath"]).read_bytes() == b"weights" * 100
    assert items[1]["digest"] == {"sha256": hashlib.sha256(b"weights" * 100).hexdigest()}


def test_dvc_local_remote_then_tampered_object(tmp_path, capsys):
    project = dvc_project(tmp_path / "proj")
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "store", str(remote), cwd=project)
    dvc("push", "-q", cwd=project)
    assert list(remote.glob("files/md5/*/*.dir"))  # DVC 3's layout, as DVC wrote it
    path = manifest(tmp_path, dvc_items(project, remote.as_uri(), tmp_path))
    capsys.readouterr()
    assert main(["plan", str(path)]) == 0
    plan = capsys.readouterr().out
    assert "dvc images from" in plan and "2 files" not in plan and "3 files" in plan
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    check_dvc_result(items)
    rc, again = fetch(path, capsys)
    assert rc == 0 and all(i["cacheHit"] for i in again)
    # A tampered object in the remote: exit 3 naming the file, nothing mounted.
    os.environ["XRUN_CACHE_DIR"] = str(tmp_path / "cache2")
    md5 = hashlib.md5(FILES["sub/b.txt"]).hexdigest()
    obj = remote / "files" / "md5" / md5[:2] / md5[2:]
    os.chmod(obj, 0o644)
    obj.write_bytes(b"TWO\n")
    rc, err = fetch(path, capsys)
    assert rc == 3 and "images/sub/b.txt" in err and "md5 mismatch" in err, err
    # The md5 lives in the .dvc file, not the manifest: the message says where, and how DVC updates it.
    assert ".dvc (DVC writes it: `dvc add` or `dvc commit`" in err and "in the manifest" not in err, err
    assert not (tmp_path / "cache2" / "trees").exists() or not list((tmp_path / "cache2" / "trees").rglob("*.json"))


def test_dvc_http_remote_and_dvc_lock_and_git_repo(tmp_path, capsys, http_root):
    served, base = http_root
    project = dvc_project(tmp_path / "proj")
    dvc("remote", "add", "-d", "store", str(served / "dvc-remote"), cwd=project)
    dvc("push", "-q", cwd=project)
    path = manifest(tmp_path, dvc_items(project, f"{base}/dvc-remote", tmp_path))
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    check_dvc_result(items)
    # dvc.lock out of a stage, and the same .dvc file read from a git repository at a commit.
    (project / "dvc.yaml").write_text("stages:\n  copy:\n    cmd: cp -r images prepared\n    deps: [images]\n"
                                      "    outs: [prepared]\n")
    dvc("repro", "-q", cwd=project)
    dvc("push", "-q", cwd=project)
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-qm", "data", cwd=project)
    commit = run("git", "rev-parse", "HEAD", cwd=project).strip()
    os.environ["XRUN_CACHE_DIR"] = str(tmp_path / "cache2")
    path = manifest(tmp_path, [
        {"name": "prepared", "dvc": {"lock": "proj/dvc.lock#copy/prepared", "remote": f"{base}/dvc-remote"}},
        {"name": "fromgit", "dvc": {"file": "images.dvc", "repo": project.as_uri(), "rev": commit,
                                    "remote": f"{base}/dvc-remote"}}])
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    assert tree_files(items[0]["hostPath"]) == FILES and tree_files(items[1]["hostPath"]) == FILES
    capsys.readouterr()
    assert main(["plan", str(path), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["plan"]["data"]
    assert planned[1]["source"]["rev"] == commit


def test_dvc_s3_plain_and_version_aware(tmp_path, capsys, s3_env, moto_endpoint):
    make_bucket(moto_endpoint, "dvc-plain", versioned=False)
    make_bucket(moto_endpoint, "dvc-versioned", versioned=True)
    plain = dvc_project(tmp_path / "plain")
    dvc("remote", "add", "-d", "s3r", "s3://dvc-plain/store", cwd=plain)
    dvc("remote", "modify", "s3r", "endpointurl", moto_endpoint, cwd=plain)
    dvc("push", "-q", cwd=plain, env=s3_env)
    path = manifest(tmp_path, dvc_items(plain, "s3://dvc-plain/store", tmp_path))
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    check_dvc_result(items)

    aware = dvc_project(tmp_path / "aware")
    dvc("remote", "add", "-d", "vs", "s3://dvc-versioned/store", cwd=aware)
    dvc("remote", "modify", "vs", "endpointurl", moto_endpoint, cwd=aware)
    dvc("remote", "modify", "vs", "version_aware", "true", cwd=aware)
    dvc("push", "-q", cwd=aware, env=s3_env)
    assert "version_id" in (aware / "images.dvc").read_text()
    # A newer version at the same key does not change what the pinned version_id fetches.
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").put_object(
        Bucket="dvc-versioned", Key="store/images/a.txt", Body=b"newer\n")
    os.environ["XRUN_CACHE_DIR"] = str(tmp_path / "cache2")
    path = manifest(tmp_path, dvc_items(aware, "s3://dvc-versioned/store", tmp_path))
    capsys.readouterr()
    assert main(["plan", str(path)]) == 0
    assert "version-aware" in capsys.readouterr().out
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    check_dvc_result(items)


# --- Git LFS ------------------------------------------------------------------------------------------


def test_lfs_by_oid_and_by_pointer_unknown_and_wrong_bytes(tmp_path, capsys, giftless):
    url, storage = giftless
    content = os.urandom(5000)
    oid = hashlib.sha256(content).hexdigest()
    repo = lfs_repo(tmp_path, url, content)
    pointer = run("git", "show", "HEAD:weights.bin", cwd=repo)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "weights.bin").write_text(pointer)
    shutil.copy(repo / ".lfsconfig", tmp_path / "code" / ".lfsconfig")
    path = manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": len(content), "url": url}},
                               {"name": "p", "lfs": {"pointer": "code/weights.bin"}}])
    rc, items = fetch(path, capsys)
    assert rc == 0, items
    assert Path(items[0]["hostPath"]).read_bytes() == content and items[1]["digest"] == {"sha256": oid}
    # A normal git-lfs checkout: the path holds the object itself; the pointer is read from git's index.
    assert (repo / "weights.bin").read_bytes() == content
    rc, items = fetch(manifest(repo, [{"name": "c", "lfs": {"pointer": "weights.bin"}}]), capsys)
    assert rc == 0, items
    assert items[0]["digest"] == {"sha256": oid}
    # An oid the server does not have: exit 4 naming it.
    missing = hashlib.sha256(b"nothing").hexdigest()
    path = manifest(tmp_path / "m2", [{"name": "gone", "lfs": {"oid": missing, "size": 7, "url": url}}])
    rc, err = fetch(path, capsys)
    assert rc == 4 and missing in err, err
    # Wrong bytes on the server: exit 3.
    os.environ["XRUN_CACHE_DIR"] = str(tmp_path / "cache2")
    stored = [p for p in storage.rglob("*") if p.is_file() and p.name == oid]
    assert stored, list(storage.rglob("*"))
    stored[0].write_bytes(os.urandom(5000))
    path = manifest(tmp_path / "m3", [{"name": "w", "lfs": {"oid": oid, "size": len(content), "url": url}}])
    rc, err = fetch(path, capsys)
    assert rc == 3 and "sha256 mismatch" in err, err
    assert "update the digest in the manifest (lfs.oid and lfs.size)" in err, err
    # By a pointer: the pointer file holds the pin.
    os.environ["XRUN_CACHE_DIR"] = str(tmp_path / "cache3")
    path = manifest(tmp_path / "m4", [{"name": "p", "lfs": {"pointer": "weights.bin", "url": url}}])
    (tmp_path / "m4" / "weights.bin").write_text(pointer)
    rc, err = fetch(path, capsys)
    assert rc == 3 and "the LFS pointer weights.bin" in err and "in the manifest" not in err, err


# --- the manifest -------------------------------------------------------------------------------------


@pytest.mark.parametrize("item, expected", [
    ({"name": "d", "directory": {"uri": "https://h/base/"}}, "data[0].directory.treeDigest: a remote directory must be pinned"),
    ({"name": "d", "directory": {"uri": "x", "treeDigest": "sha256:12"}}, "data[0].directory.treeDigest:"),
    ({"name": "d", "dvc": {"remote": "s3://b/p"}}, "data[0].dvc: give exactly one of dvc.file"),
    ({"name": "d", "dvc": {"file": "x.dvc", "remote": "s3://b/p", "rev": "v1"}}, "data[0].dvc.rev: rev needs repo"),
    ({"name": "d", "lfs": {"oid": "a" * 64}}, "data[0].lfs.size: missing lfs.size"),
    ({"name": "d", "uri": "x", "sha256": "a" * 64, "dvc": {"file": "x.dvc", "remote": "r"}}, "data[0].dvc: give only one of"),
    ({"name": "d", "directory": {"uri": "https://u:p@h/b/", "treeDigest": "a" * 64}}, "embeds credentials"),
    ({"name": "d"}, "data[0]: say where the data is"),
])
def test_validate_one_line_errors(tmp_path, capsys, item, expected):
    path = manifest(tmp_path, [item])
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err


# --- a real run, and reproduce's report -----------------------------------------------------------------


def test_container_trains_on_a_dvc_directory(tmp_path, capsys, base_image, docker_client):
    from runner.attest.recorded import RecordedRun
    from runner.pipeline import RunOptions, run_experiment
    from runner.attest.recorded import read_statement

    project = dvc_project(tmp_path / "proj")
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "store", str(remote), cwd=project)
    dvc("push", "-q", cwd=project)
    (project / "train.py").write_text(
        "import json, os, hashlib\n"
        "root = '/data/images'\n"
        "seen = {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), 'rb').read())"
        ".hexdigest() for d, _, fs in os.walk(root) for f in fs}\n"
        "json.dump(seen, open('/outputs/seen.json', 'w'), sort_keys=True)\n")
    doc = {"apiVersion": "xrun/v1", "kind": "Experiment", "name": "dvc-train", "image": {"base": base_image},
           "code": {"path": ".", "exclude": ["images", "model.bin", ".dvc", ".git"]},
           "data": [{"name": "images", "dvc": {"file": "images.dvc", "remote": remote.as_uri()}}],
           "seeds": {"global": 1}, "hardware": {"class": "cpu-1"},
           "run": {"command": ["python3", "train.py"], "timeout": "5m"}, "outputs": [{"path": "seen.json"}]}
    path = project / "experiment.yaml"
    path.write_text(json.dumps(doc))
    summary = run_experiment(path, RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    seen = json.loads((summary.run_dir / "outputs" / "seen.json").read_text())
    assert seen == {p: hashlib.sha256(d).hexdigest() for p, d in FILES.items()}
    recorded = RecordedRun.from_statement(read_statement(summary.attestation))
    dep = recorded.dependencies["data/images"]
    assert dep["digest"] == {"sha256": digest_of(FILES)}
    assert dep["annotations"]["source"]["md5"].endswith(".dir") and dep["annotations"]["files"] == 3
    assert recorded.listings["images"]["sub/b.txt"] == hashlib.sha256(FILES["sub/b.txt"]).hexdigest()


def test_reproduce_names_the_changed_file_inside_a_dataset():
    from runner.attest.recorded import RecordedRun
    from runner.reproduce import changed_inputs

    def recorded(files: dict[str, str], tree: str) -> RecordedRun:
        return RecordedRun(subjects={}, manifest={}, manifest_digest="m", hardware_class="cpu-1", hardware_mismatch=(),
                           metrics={}, gpus=(), engine=None,
                           dependencies={"data/images": {"name": "data/images", "digest": {"sha256": tree}}},
                           listings={"images": files})

    old = recorded({"a.txt": "1" * 64, "sub/b.txt": "2" * 64}, "a" * 64)
    new = recorded({"a.txt": "1" * 64, "sub/b.txt": "3" * 64, "c.txt": "4" * 64}, "b" * 64)
    names = [c.name for c in changed_inputs(old, new)]
    assert names == ["data/images/c.txt", "data/images/sub/b.txt"]


@pytest.mark.docker
def test_the_dvc_example_trains_as_its_readme_says(tmp_path: Path, base_image: str, monkeypatch: pytest.MonkeyPatch):
    """examples/dvc: make the data, `dvc add` + `dvc push` with real DVC, then xrun trains on it."""
    from runner.pipeline import RunOptions, run_experiment

    example = tmp_path / "dvc"
    shutil.copytree(REPO / "examples" / "dvc", example)
    store = tmp_path / "dvc-store"
    run("git", "init", "-q", cwd=example)
    dvc("init", "-q", cwd=example)
    run(sys.executable, "make_data.py", cwd=example)
    dvc("add", "-q", "images", cwd=example)
    dvc("remote", "add", "-d", "store", str(store), cwd=example)
    dvc("push", "-q", cwd=example)
    manifest = example / "experiment.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec["data"][0]["dvc"]["remote"] = store.as_uri()
    spec["image"] = {"base": base_image}  # the example's bootstrap base is the same packages; skip the minute
    manifest.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    summary = run_experiment(manifest, RunOptions(runs_dir=tmp_path / "runs", quiet=True))
    assert summary.metrics["metrics.json"] == {"files": 40, "classes": 2}
    assert set(json.loads((summary.run_dir / "outputs" / "model.json").read_text())) == {"cats", "dogs"}


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_lfs_pointer_reads_only_the_first_kib_of_a_large_object(tmp_path):
    import subprocess

    from runner.errors import UsageError
    from runner.fetch.sources.gitlfs import _indexed_blob, read_pointer

    big = tmp_path / "weights.bin"
    big.write_bytes(b"x" * (4 << 20))  # neither the work tree's file nor the indexed blob is a pointer
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "weights.bin"], check=True)
    assert _indexed_blob(big) == b"x" * 1024
    assert _indexed_blob(tmp_path / "untracked.bin") == b""
    with pytest.raises(UsageError, match="not a Git LFS pointer file"):
        read_pointer("w", big)
