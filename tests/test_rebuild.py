"""`xrun rebuild` on the real engine: the recorded image rebuilt from its recorded inputs, compared by ID.

One recorded run (a pinned base from the local registry, a wheel from PyPI and a local wheel, a
code tree), pushed by digest before it ran, serves every test: same machine → 0; a fresh clone
(image removed, empty cache, code copied elsewhere) → 0; a tampered code file → 3 naming the file;
another wheel behind the lock → 3 naming the wheel; an unreachable base or wheel → 4.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from runner.attest import generate_keypair
from runner.attest.recorded import NOT_VERIFIED, RecordedRun, read_statement
from runner.build.bootstrap import DebPackage
from runner.build.rebuild import file_changes, package_changes
from runner.cli import main
from experiments import SIX_SDIST, SIX_WHEEL, write_experiment
from wheelmaker import make_wheel

pytestmark = pytest.mark.docker

TRAIN = "import json, localpkg, six\njson.dump({'v': localpkg.V, 'six': six.__version__}, open('/outputs/out.json', 'w'))\n"


def rebuild_experiment(root: Path, base: str) -> Path:
    """Code (train.py, pkg/), a lock with six from PyPI and a local wheel (both outside the code tree)."""
    _, local_hash = make_wheel(root / "wheels", "localpkg", "1.0", "V = 1\n")
    return write_experiment(root, {"base": base, "lockfile": "requirements.txt"}, name="img-rebuild",
                            files={"train.py": TRAIN, "pkg/util.py": "X = 1\n", "requirements.txt": _lock(local_hash)},
                            exclude=["requirements.txt", "wheels/"], command=["python3", "train.py"],
                            outputs=[{"path": "out.json"}])


def _lock(local_hash: str) -> str:
    return (f"six==1.16.0 --hash=sha256:{SIX_SDIST} --hash=sha256:{SIX_WHEEL}\n"
            f"./wheels/localpkg-1.0-py3-none-any.whl --hash=sha256:{local_hash}\n")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, base_image, registry, docker_client):
    """A signed run whose image was pushed by digest first: (attestation, pub, experiment folder, cache, env)."""
    root = tmp_path_factory.mktemp("rebuild")
    mp = pytest.MonkeyPatch()
    mp.setenv("XRUN_CACHE_DIR", str(root / "cache"))
    key, pub = generate_keypair("ecdsa-p256", root / "keys")
    manifest = rebuild_experiment(root / "exp", base_image)
    push = f"{registry.host}/xrun-test/rebuild"
    try:
        assert main(["build", str(manifest), "--push", push, "--quiet"]) == 0
        assert main(["run", str(manifest), "--key", str(key), "--runs-dir", str(root / "runs"), "--quiet"]) == 0
    finally:
        mp.undo()
    attestation = next((root / "runs").glob("*/provenance.intoto.jsonl"))
    yield attestation, pub, root / "exp", root, push
    for image in docker_client.images.list(name="xrun/img-rebuild"):
        docker_client.images.remove(image.id, force=True)


def _ensure_image(root: Path, manifest: Path, monkeypatch) -> None:
    """The recorded image back in the engine (a test before may have removed it): same inputs, same ID."""
    monkeypatch.setenv("XRUN_CACHE_DIR", str(root / "cache"))
    assert main(["build", str(manifest), "--quiet"]) == 0


def test_the_attestation_records_layers_and_the_pushed_digest(recorded, docker_client):
    attestation, _, _, _, push = recorded
    run = RecordedRun.from_statement(read_statement(attestation))
    assert run.image is not None and run.base is not None
    assert run.image.layers == tuple(docker_client.images.get(run.image.id).attrs["RootFS"]["Layers"])
    assert run.image.repository == push and run.image.manifest_digest.startswith("sha256:")
    assert {w.name for w in run.wheels} == {"six", "localpkg"}
    six = next(w for w in run.wheels if w.name == "six")
    assert six.sha256 == SIX_WHEEL and six.download_location.startswith("https://")
    assert next(w for w in run.wheels if w.name == "localpkg").download_location is None


def test_rebuild_on_the_same_machine_is_identical(recorded, capsys, monkeypatch):
    attestation, pub, exp, root, _ = recorded
    _ensure_image(root, exp / "experiment.yaml", monkeypatch)
    capsys.readouterr()
    assert main(["rebuild", str(attestation), "--key", str(pub), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is True and report["rebuiltImageId"] == report["recordedImageId"]
    assert report["wheels"] == 2


def test_tampered_code_file_is_exit_3_naming_the_file(recorded, tmp_path, capsys, monkeypatch):
    attestation, pub, exp, root, _ = recorded
    _ensure_image(root, exp / "experiment.yaml", monkeypatch)
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns(".xrun"))
    (copy / "pkg" / "util.py").write_text("X = 2\n")
    capsys.readouterr()
    assert main(["rebuild", str(attestation), "--key", str(pub), "--code", str(copy)]) == 3
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and f"code {copy}" in out
    assert "file /workspace/pkg/util.py: recorded 6 sha256:" in out and "train.py" not in out


def test_another_wheel_behind_the_lock_is_exit_3_naming_the_wheel(recorded, tmp_path, capsys):
    attestation, pub, exp, _, _ = recorded
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns(".xrun"))
    _, other = make_wheel(copy / "wheels", "localpkg", "1.0", "V = 2\n")  # same name, other bytes
    (copy / "requirements.txt").write_text(_lock(other))
    capsys.readouterr()
    code = main(["rebuild", str(attestation), "--key", str(pub), "--code", str(copy)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "wheel/localpkg (pkg:pypi/localpkg@1.0)" in err and "Traceback" not in err


def _unsigned_copy(attestation: Path, folder: Path, change) -> Path:
    """The statement changed by `change` in an unsigned envelope (read with --no-verify)."""
    statement = read_statement(attestation)
    change({d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]})
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "provenance.intoto.jsonl"
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    out.write_text(json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload,
                               "signatures": []}) + "\n")
    return out


def test_unreachable_base_is_exit_4(recorded, tmp_path, capsys):
    attestation, _, exp, _, _ = recorded
    digest = "sha256:" + "1" * 64

    def change(deps):
        deps["base-image"]["annotations"]["reference"] = f"127.0.0.1:9/xrun-nowhere@{digest}"
    copy = _unsigned_copy(attestation, tmp_path / "att", change)
    assert main(["rebuild", str(copy), "--code", str(exp), "--no-verify"]) == 4
    err = capsys.readouterr().err
    assert "127.0.0.1:9/xrun-nowhere" in err and "Traceback" not in err


def test_unreachable_wheel_is_exit_4(recorded, tmp_path, capsys, monkeypatch):
    attestation, _, exp, _, _ = recorded
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "empty-cache"))

    def change(deps):
        deps["wheel/six"]["downloadLocation"] = "http://127.0.0.1:9/six-1.16.0-py2.py3-none-any.whl"
    copy = _unsigned_copy(attestation, tmp_path / "att", change)
    assert main(["rebuild", str(copy), "--code", str(exp), "--quiet", "--no-verify"]) == 4
    err = capsys.readouterr().err
    assert "six-1.16.0-py2.py3-none-any.whl" in err and "Traceback" not in err


def test_no_verify_rebuilds_and_says_and_records_not_verified(recorded, tmp_path, capsys, monkeypatch):
    attestation, _, exp, root, _ = recorded
    _ensure_image(root, exp / "experiment.yaml", monkeypatch)
    copy = _unsigned_copy(attestation, tmp_path / "att", lambda deps: None)
    capsys.readouterr()
    assert main(["rebuild", str(copy), "--code", str(exp), "--no-verify", "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["identical"] is True and report["verified"] is False
    assert report["notes"] == [NOT_VERIFIED] and "attestation NOT verified" in out.err
    assert main(["rebuild", str(copy), "--code", str(exp), "--no-verify", "--quiet"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"  {NOT_VERIFIED}")


def test_an_attestation_that_does_not_verify_is_exit_3(recorded, tmp_path, capsys):
    attestation, _, exp, _, _ = recorded
    _, other_pub = generate_keypair("ecdsa-p256", tmp_path / "other")
    assert main(["rebuild", str(attestation), "--key", str(other_pub)]) == 3
    assert "does not verify" in capsys.readouterr().err


def test_fresh_clone_image_removed_empty_cache_code_elsewhere_is_identical(recorded, tmp_path, docker_client,
                                                                          capsys, monkeypatch):
    """The auditor's case: no image, no cache, the code in another folder (attestation copied alone)."""
    attestation, pub, exp, _, _ = recorded
    run = RecordedRun.from_statement(read_statement(attestation))
    docker_client.images.remove(run.image.id, force=True)
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "fresh-cache"))
    clone = tmp_path / "clone"
    shutil.copytree(exp, clone, ignore=shutil.ignore_patterns(".xrun"))
    alone = tmp_path / "audit" / "provenance.intoto.jsonl"
    alone.parent.mkdir()
    shutil.copyfile(attestation, alone)  # no run.json beside it: --code is required
    assert main(["rebuild", str(alone), "--key", str(pub), "--code", str(clone), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] and report["rebuiltImageId"] == run.image.id
    assert not docker_client.images.list(name="xrun/img-rebuild")  # a rebuild loads nothing


# --- unit tests of the naming ----------------------------------------------------------------------


def test_package_changes_are_named_one_by_one():
    recorded = ("pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64", "pkg:deb/debian/libc6@2.36-9?arch=amd64",
                "pkg:deb/debian/gone@1?arch=all")
    now = (DebPackage("python3", "3.11.2-1+b2", "amd64"), DebPackage("libc6", "2.36-9", "amd64"),
           DebPackage("new", "2", "all"))
    assert package_changes(recorded, now) == [
        "package gone:all: recorded 1, now not installed", "package new:all: not recorded, now 2",
        "package python3:amd64: recorded 3.11.2-1+b1, now 3.11.2-1+b2"]


def test_file_changes_list_path_size_and_sha256(tmp_path):
    from runner.build.layers import LayerBuilder, write_layer

    a, b = LayerBuilder(), LayerBuilder()
    a.add_bytes("w/x.py", b"1\n")
    a.add_bytes("w/same.py", b"s\n")
    b.add_bytes("w/x.py", b"22\n")
    b.add_bytes("w/same.py", b"s\n")
    b.add_bytes("w/new.py", b"n\n")
    changes = file_changes(write_layer(a, tmp_path / "a.tar").path, write_layer(b, tmp_path / "b.tar").path)
    assert [c.path for c in changes] == ["w/new.py", "w/x.py"]
    assert changes[0].recorded is None and changes[1].recorded.startswith("2 sha256:")
    assert changes[1].rebuilt.startswith("3 sha256:")
