"""The plan: pinned, side-effect free, with a stable canonical digest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.manifest import load_manifest
from runner.plan import PlanRecord, canonical_json, parse_image_ref, resolve_plan

HERE = Path(__file__).parent / "manifests"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    shutil.copy(HERE / "valid.yaml", tmp_path / "experiment.yaml")
    shutil.copytree(HERE / "code", tmp_path / "code")
    return tmp_path / "experiment.yaml"


def test_plan_digest_is_stable_and_ignores_mtimes(experiment: Path):
    first = resolve_plan(load_manifest(experiment))
    os.utime(experiment.parent / "code" / "train.py", (1, 1))
    second = resolve_plan(load_manifest(experiment))
    assert first.digest == second.digest
    assert first.code.digest == second.code.digest


def test_code_change_changes_code_and_build_digest(experiment: Path):
    first = resolve_plan(load_manifest(experiment))
    (experiment.parent / "code" / "train.py").write_text("print('changed')\n")
    second = resolve_plan(load_manifest(experiment))
    assert first.code.digest != second.code.digest
    assert first.build_digest != second.build_digest


def test_data_change_keeps_build_digest(experiment: Path):
    first = resolve_plan(load_manifest(experiment))
    experiment.write_text(experiment.read_text().replace("1f" * 32, "2e" * 32))
    second = resolve_plan(load_manifest(experiment))
    assert first.digest != second.digest
    assert first.build_digest == second.build_digest


def test_excludes_apply(experiment: Path):
    code = experiment.parent / "code"
    (code / "data").mkdir()
    (code / "data" / "big.bin").write_bytes(b"x")
    (code / "cache.pyc").write_bytes(b"x")
    text = experiment.read_text().replace("  path: code\n", "  path: code\n  exclude: ['data/']\n")
    experiment.write_text(text)
    plan = resolve_plan(load_manifest(experiment))
    assert [f.path for f in plan.code.files] == ["train.py"]


def test_git_commit_and_dirty_flag(experiment: Path):
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    root = experiment.parent
    git = ["git", "-C", str(root), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    plan = resolve_plan(load_manifest(experiment))
    assert plan.code.git_commit and len(plan.code.git_commit) == 40
    assert plan.code.git_dirty is False
    (root / "code" / "train.py").write_text("print(2)\n")
    assert resolve_plan(load_manifest(experiment)).code.git_dirty is True


def test_plan_json_has_everything_pinned(experiment: Path):
    plan = resolve_plan(load_manifest(experiment))
    data = plan.to_json()
    assert data["image"]["base"]["digest"] == "sha256:" + "0" * 64
    assert data["image"]["base"]["registry"] == "127.0.0.1:5000"
    assert data["data"][0]["containerPath"] == "/data/iris.csv"
    assert data["run"]["env"]["XRUN_SEED"] == "42" and data["run"]["env"]["PYTHONHASHSEED"] == "42"
    assert data["hardware"]["cpus"] == 1
    assert str(experiment.parent) not in json.dumps(data), "absolute paths would make the digest machine-specific"
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_image_reference_parsing():
    d = "sha256:" + "a" * 64
    assert parse_image_ref(f"localhost:5000/x/y@{d}").registry == "localhost:5000"
    assert parse_image_ref(f"python:3.12@{d}").registry == ""
    assert parse_image_ref(f"python:3.12@{d}").repository == "python"


def test_cli_plan_json(experiment: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "plan", "--json", str(experiment)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert len(body["digest"]) == 64 and body["plan"]["name"] == "corpus-valid"


def test_plan_json_reads_back_through_the_one_typed_reader(experiment: Path, tmp_path: Path):
    plan = resolve_plan(load_manifest(experiment))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_json()))
    record = PlanRecord.load(path)
    assert record is not None and record.raw == plan.to_json()
    assert (record.name, record.seed, record.git_commit) == (plan.manifest.name, plan.seed, plan.code.git_commit)
    assert record.outputs == plan.outputs
    assert record.data_digests == {d.item.name: "sha256:" + d.item.digests["sha256"] for d in plan.data}
    assert PlanRecord.load(tmp_path / "missing.json") is None


def test_a_plan_json_of_an_older_xrun_reads_its_old_spellings():
    old = {"seed": 7, "code": {"git_commit": "abc"}, "data": [{"name": "d", "digests": {"md5": "00"}}]}
    record = PlanRecord.from_json(old)
    assert (record.seed, record.git_commit, record.data_digests) == (7, "abc", {"d": "md5:00"})
