"""Reproducible images: the same inputs give the same image ID whatever the machine, the user or the clock.

The golden test pins the exact ID of an image built from fixed bytes (a base made here, not from a
mirror, and a fixed code tree): any dependence on the host makes it fail. When xrun's version, its
sitecustomize or the layout of the image changes on purpose, update GOLDEN_ID in the same commit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from experiments import CODE, golden_base, image_experiment, plan_for, requirements_lock
from runner import __version__
from runner.build.image import ResolvedBase, ResolvedWheel, assemble_image, build_image, image_labels, \
    load_assembly
from runner.build.layers import image_exists
from runner.fetch import Cache
from servers import PATIENCE_S

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
# The image below, built from fixed bytes by xrun 0.1.0 (labels of content digests only, the base named by
# its image ID in the history). See the module docstring before changing it.
GOLDEN_ID = "sha256:a01e312555bc3ff0e5dfc2ae762603cef4b7680903c67c2f5925d387d3a36c1c"
GOLDEN_BASE_REF = "registry.invalid/xrun-golden@sha256:" + "0" * 64


def test_golden_image_id_from_fixed_inputs(tmp_path, docker_client):
    base_id = golden_base(docker_client, tmp_path)
    manifest = image_experiment(tmp_path / "exp", {"base": GOLDEN_BASE_REF}, name="golden", code=CODE)
    (tmp_path / "exp" / "run.sh").chmod(0o755)
    plan = plan_for(manifest)
    base = ResolvedBase(ref=GOLDEN_BASE_REF, image_id=base_id, repo_digest=GOLDEN_BASE_REF, platform="linux/amd64",
                        layers=tuple(docker_client.images.get(base_id).attrs["RootFS"]["Layers"]))
    work = tmp_path / "work"
    work.mkdir()
    assembly = assemble_image(plan.code, docker_client, base, None, [], work)
    assert __version__ == "0.1.0", "xrun's version is a build input: update GOLDEN_ID with it"
    assert assembly.image_id == GOLDEN_ID
    loaded = load_assembly(docker_client, assembly, work, "xrun/img-golden:test")
    try:
        image = docker_client.images.get(loaded)
        assert image.id == GOLDEN_ID
        assert image.attrs["Config"]["WorkingDir"] == "/workspace"
        assert image.attrs["Config"]["Env"] == ["PATH=/usr/bin:/bin", "PYTHONPATH=/opt/xrun/site"]
        assert image.attrs["Created"].startswith("2024-01-01T00:00:00")
        assert image.attrs["RootFS"]["Layers"][0] == base.layers[0] and len(image.attrs["RootFS"]["Layers"]) == 3
    finally:
        docker_client.images.remove("xrun/img-golden:test", force=True)


def test_image_id_is_the_same_from_another_registry_name_mirror_or_manifest_name(tmp_path, docker_client):
    """Same content, other locations: another registry host and repository for the same base, another
    experiment name, wheels from another mirror. The image ID (and so every label) must not change."""
    base_id = golden_base(docker_client, tmp_path)
    layers = tuple(docker_client.images.get(base_id).attrs["RootFS"]["Layers"])
    ids = []
    for name, ref in (("golden", GOLDEN_BASE_REF), ("renamed", "mirror.invalid:5000/team/base@sha256:" + "0" * 64)):
        manifest = image_experiment(tmp_path / name, {"base": ref}, name=name, code=CODE)
        (tmp_path / name / "run.sh").chmod(0o755)
        base = ResolvedBase(ref=ref, image_id=base_id, repo_digest=ref, platform="linux/amd64", layers=layers)
        work = tmp_path / f"work-{name}"
        work.mkdir()
        ids.append(assemble_image(plan_for(manifest).code, docker_client, base, None, [], work).image_id)
    assert ids[0] == ids[1] == GOLDEN_ID
    pypi = ResolvedWheel("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl",
                         "https://files.pythonhosted.org/packages/six-1.16.0-py2.py3-none-any.whl", "ab" * 32)
    mirror = ResolvedWheel("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl",
                           "https://mirror.example/simple/six/six-1.16.0-py2.py3-none-any.whl", "ab" * 32)
    assert image_labels("sha256:" + "1" * 64, base_id, [pypi]) == image_labels("sha256:" + "1" * 64, base_id, [mirror])
    assert not any("http" in v or "invalid" in v for v in image_labels("sha256:" + "1" * 64, base_id, [pypi]).values())


def _xrun_build(manifest: Path, env: dict[str, str], *, umask: int = 0o022, hostname: str | None = None) -> dict:
    """`xrun build --json` in a fresh process with this environment, umask and (as root) host name."""
    cmd = [sys.executable, "-m", "runner.cli", "build", str(manifest), "--json"]
    if hostname is not None and os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _make_tree(root: Path, files: dict[str, str], *, reverse: bool, mtime: float, owner: int | None) -> None:
    for rel in sorted(files, reverse=reverse):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(files[rel])
        os.utime(root / rel, (mtime, mtime))
        if owner is not None and os.geteuid() == 0:
            os.chown(root / rel, owner, owner)


def test_same_plan_same_image_id_across_environments(tmp_path, base_image, docker_client):
    """Two checkouts of one experiment, built by separate processes with an empty image cache in between,
    under another umask, TZ, locale, host name, cache folder, file order, mtimes and owners: one image ID."""
    code = {"train.py": "print('x')\n", "pkg/__init__.py": "", "pkg/deep/util.py": "X = 1\n", "data.txt": "d\n"}
    ids = []
    variants = [
        dict(reverse=False, mtime=time.time(), owner=None, umask=0o022, tz="UTC", lang="C.UTF-8", host=None),
        dict(reverse=True, mtime=315532800.0, owner=4321, umask=0o077, tz="Asia/Kathmandu", lang="de_DE.UTF-8",
             host="auditor-box"),
    ]
    for i, v in enumerate(variants):
        root = tmp_path / f"checkout{i}" / "exp"
        root.mkdir(parents=True)
        _make_tree(root, code, reverse=v["reverse"], mtime=v["mtime"], owner=v["owner"])
        manifest = image_experiment(root, {"base": base_image}, name="img-repro", code={},
                                    lock=requirements_lock())
        env = {**os.environ, "XRUN_CACHE_DIR": str(tmp_path / f"cache{i}"), "TZ": v["tz"], "LANG": v["lang"],
               "LC_ALL": v["lang"], "PYTHONPATH": str(REPO)}
        built = _xrun_build(manifest, env, umask=v["umask"], hostname=v["host"])
        assert built["cached"] is False
        ids.append(built["imageId"])
        docker_client.images.remove(built["imageId"], force=True)  # an empty image cache for the next build
        assert not image_exists(docker_client, built["imageId"])
    assert ids[0] == ids[1]


def test_two_builds_of_one_plan_give_one_image_id(tmp_path, base_image, docker_client):
    cache = Cache(tmp_path / "cache")
    plan = plan_for(image_experiment(tmp_path / "exp", {"base": base_image}, name="img-twice",
                                     lock=requirements_lock()))
    first = build_image(plan, cache, docker_client, quiet=True)
    docker_client.images.remove(first.id, force=True)
    second = build_image(plan, Cache(tmp_path / "cache2"), docker_client, quiet=True)
    assert not second.cached and second.id == first.id


def test_sigterm_during_the_build_leaves_no_image_and_no_temp_files(tmp_path, base_image, docker_client):
    """A build stopped by SIGTERM while it writes its layers: exit 130, no image, no xrun-build-* folder."""
    big = {f"blob{i}.bin": "x" * (4 << 20) for i in range(40)}  # slow enough to be caught mid-way
    root = tmp_path / "exp"
    manifest = image_experiment(root, {"base": base_image}, name="img-sigterm", code={"train.py": "1\n", **big})
    cache = tmp_path / "cache"
    env = {**os.environ, "XRUN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    before = {img.id for img in docker_client.images.list(all=True)}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "build", str(manifest)], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "assembling" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list((cache / "tmp").glob("xrun-build-*")) == []
    after = {img.id for img in docker_client.images.list(all=True)}
    assert after - before == set()
    assert [t for img in docker_client.images.list(name="xrun/img-sigterm") for t in img.tags] == []


def test_layers_hold_no_host_metadata(tmp_path, base_image, docker_client):
    """The code layer as loaded: root-owned, fixed mtime, 0644/0755 only, whatever the checkout had."""
    root = tmp_path / "exp"
    root.mkdir()
    _make_tree(root, {"a.py": "1\n", "b.sh": "#!/bin/sh\n"}, reverse=True, mtime=1.0e9, owner=1234)
    (root / "b.sh").chmod(0o700)
    plan = plan_for(image_experiment(root, {"base": base_image}, name="img-meta", code={}))
    work = tmp_path / "w"
    work.mkdir()
    base = ResolvedBase(ref=base_image, image_id=docker_client.images.get(base_image).id, repo_digest=base_image,
                        platform="linux/amd64",
                        layers=tuple(docker_client.images.get(base_image).attrs["RootFS"]["Layers"]))
    assembly = assemble_image(plan.code, docker_client, base, None, [], work)
    with tarfile.open(assembly.layers[1].path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"workspace", "workspace/a.py", "workspace/b.sh"} <= set(members)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime, m.devmajor, m.devminor, tuple(m.pax_headers))
            for m in members.values()} == {(0, 0, "", "", 1704067200, 0, 0, ())}
    assert members["workspace/b.sh"].mode == 0o755 and members["workspace/a.py"].mode == 0o644


@pytest.fixture(autouse=True, scope="module")
def _cleanup(docker_client):
    yield
    for img in docker_client.images.list(name="xrun/img-*"):
        for tag in img.tags:
            if tag.startswith(("xrun/img-repro", "xrun/img-twice", "xrun/img-sigterm", "xrun/img-meta")):
                try:
                    docker_client.images.remove(tag, force=True)
                except Exception:  # noqa: BLE001
                    pass
