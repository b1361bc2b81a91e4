"""The build stage against the real engine: offline builds, wheels from each lock format, the image cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from experiments import SIX_WHEEL, image_experiment, plan_for, requirements_lock
from runner.errors import IntegrityError, ManifestError
from runner.fetch import Cache
from runner.build.image import BuiltImage, build_image, image_tag

pytestmark = pytest.mark.docker

FIXTURES = Path(__file__).parent / "fixtures" / "lockfiles"
NOBODY = "65534:65534"
PROBE = ("import json, os, sys, six, numpy, sitecustomize; print(json.dumps({'six': six.__version__, "
         "'six_file': six.__file__, 'numpy': numpy.__version__, 'site': sitecustomize.__file__, "
         "'files': sorted(os.listdir('.')), 'exe': sys.executable}))")


def run_in(client, image_id: str, code: str) -> str:
    """Run python3 -c code as nobody, network off, read-only root: as the run stage will."""
    out = client.containers.run(image_id, ["python3", "-c", code], network_mode="none", user=NOBODY, read_only=True,
                                remove=True, working_dir="/workspace")
    return out.decode()


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch) -> Cache:
    root = tmp_path_factory.mktemp("xrun-cache")
    monkeypatch.setenv("XRUN_CACHE_DIR", str(root))
    return Cache(root)


def _tags(client, name: str) -> list[str]:
    return [t for img in client.images.list(name=f"xrun/{name}") for t in img.tags]


def test_requirements_lock_wheel_installed_offline_and_cached(tmp_path, base_image, docker_client, cache):
    plan = plan_for(image_experiment(tmp_path / "exp", {"base": base_image}, name="img-req",
                                     lock=requirements_lock()))
    built = build_image(plan, cache, docker_client, quiet=True)
    assert isinstance(built, BuiltImage) and not built.cached
    assert built.tag == f"xrun/img-req:{plan.build_digest[:12]}" == image_tag(plan)
    assert built.base_ref == base_image and built.base_repo_digest == base_image
    assert built.platform == "linux/amd64"
    assert built.python is not None and built.python.version.startswith("3.11.")
    assert built.python.tags[0].startswith("cp311-cp311-")
    assert [(w.name, w.version, w.filename, w.sha256) for w in built.wheels] == [
        ("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl", SIX_WHEEL)]
    assert built.wheels[0].url.startswith("https://files.pythonhosted.org/")

    report = json.loads(run_in(docker_client, built.id, PROBE))
    assert report["six"] == "1.16.0" and report["six_file"].startswith("/opt/xrun/venv/lib/python3.11/site-packages/")
    assert report["numpy"]  # Debian's python3-numpy stays visible through the venv
    assert report["site"] == "/opt/xrun/site/sitecustomize.py"
    assert report["files"] == ["experiment.yaml", "pkg", "train.py"] or report["files"] == ["pkg", "train.py"]
    assert report["exe"] == "/opt/xrun/venv/bin/python3"

    labels = docker_client.images.get(built.id).labels
    # Only content digests go into labels (so into the image ID): no URL, registry host or experiment name,
    # not the plan digest, not the host kernel.
    assert labels == {"org.xrun.version": "0.1.0", "org.xrun.base-image-id": built.base_image_id,
                      "org.xrun.code-digest": plan.code.digest,
                      "org.xrun.wheels": json.dumps([["six", "1.16.0", SIX_WHEEL]], separators=(",", ":"))}
    assert built.layers == tuple(docker_client.images.get(built.id).attrs["RootFS"]["Layers"])

    # The same plan again: no build at all, the same image, no new image in the engine.
    ours = {"reference": "xrun/img-req"}
    before = {img.id for img in docker_client.images.list(all=True, filters=ours)}
    start = time.perf_counter()
    again = build_image(plan_for(tmp_path / "exp" / "experiment.yaml"), cache, docker_client, quiet=True)
    elapsed = time.perf_counter() - start
    assert again.cached and again.id == built.id
    assert again.wheels == built.wheels and again.python == built.python
    assert {img.id for img in docker_client.images.list(all=True, filters=ours)} == before and built.id in before
    assert elapsed < 2.0, f"a cached build took {elapsed:.2f}s"


def test_code_tree_is_exactly_the_planned_files_readable_by_any_uid(tmp_path, base_image, docker_client, cache):
    code = {"train.py": "print('x')\n", "run.sh": "#!/bin/sh\necho hi\n", "deep/a/b.txt": "b\n",
            "ignored.pyc": "junk"}
    root = tmp_path / "exp"
    manifest = image_experiment(root, {"base": base_image}, name="img-code", code=code)
    (root / "run.sh").chmod(0o700)
    (root / "train.py").chmod(0o600)
    plan = plan_for(manifest)
    built = build_image(plan, cache, docker_client, quiet=True)
    listing = run_in(docker_client, built.id, (
        "import os, json; out = {}\n"
        "for d, _, fs in os.walk('/workspace'):\n"
        "    for f in fs:\n"
        "        p = os.path.join(d, f); st = os.stat(p); out[p] = [oct(st.st_mode & 0o777), st.st_uid, "
        "open(p).read()]\n"
        "print(json.dumps(out))"))
    files = json.loads(listing)
    assert sorted(files) == sorted(f"/workspace/{f.path}" for f in plan.code.files)
    assert "/workspace/ignored.pyc" not in files
    assert files["/workspace/run.sh"][:2] == ["0o755", 0] and files["/workspace/train.py"][:2] == ["0o644", 0]
    assert files["/workspace/deep/a/b.txt"][2] == "b\n"


def test_identical_inputs_give_bit_identical_layers(tmp_path, base_image, docker_client, cache):
    """Two builds from scratch (the first image and its build cache removed) give the same layer digests."""
    code = {"train.py": f"# {time.time_ns()}\n", "pkg/deep/util.py": "X = 1\n"}
    plan = plan_for(image_experiment(tmp_path / "exp", {"base": base_image}, name="img-layers", code=code,
                                     lock=requirements_lock()))
    layers = []
    for _ in range(2):
        built = build_image(plan, cache, docker_client, quiet=True)
        assert not built.cached
        layers.append(docker_client.images.get(built.id).attrs["RootFS"]["Layers"])
        docker_client.images.remove(built.id, force=True)  # its untagged parents (the build cache) go too
    assert layers[0] == layers[1] and len(layers[0]) == 4  # base, seed hook + venv, one per wheel (six), code


@pytest.mark.parametrize("fmt", ["pylock", "uv"])
def test_pylock_and_uv_lock_install_their_wheels(tmp_path, base_image, docker_client, cache, fmt):
    src = FIXTURES / ("pylock.toml" if fmt == "pylock" else "uv/uv.lock")
    lock = (src.name, src.read_text())
    plan = plan_for(image_experiment(tmp_path / "exp", {"base": base_image}, name=f"img-{fmt}", lock=lock))
    built = build_image(plan, cache, docker_client, quiet=True)
    # Markers evaluated for the image's Python 3.11 on Linux: no colorama (win32), no tomli (< 3.11).
    assert sorted(w.name for w in built.wheels) == ["attrs", "six"]
    out = run_in(docker_client, built.id, "import attrs, six; print(attrs.__version__, six.__version__)")
    assert out.split() == ["23.2.0", "1.16.0"]


def test_tampered_requirements_hash_is_exit_3_and_nothing_tagged(tmp_path, base_image, docker_client, cache):
    plan = plan_for(image_experiment(tmp_path / "exp", {"base": base_image}, name="img-tampered",
                                     lock=requirements_lock("0" * 64)))
    with pytest.raises(IntegrityError) as info:
        build_image(plan, cache, docker_client, quiet=True)
    assert info.value.exit_code == 3
    assert "requirements.txt:2" in info.value.message and "six" in info.value.message
    assert _tags(docker_client, "img-tampered") == []


def test_tampered_pylock_wheel_hash_is_exit_3_nothing_cached_nothing_tagged(tmp_path, base_image, docker_client,
                                                                            cache):
    text = (FIXTURES / "pylock.toml").read_text().replace(SIX_WHEEL, "f" * 64)
    plan = plan_for(image_experiment(tmp_path / "exp", {"base": base_image}, name="img-tampered2",
                                     lock=("pylock.toml", text)))
    with pytest.raises(IntegrityError) as info:
        build_image(plan, cache, docker_client, quiet=True)
    assert info.value.exit_code == 3 and "sha256 mismatch" in info.value.message
    assert cache.lookup("sha256", "f" * 64) is None
    assert _tags(docker_client, "img-tampered2") == []


def test_unpinned_lock_is_exit_2_naming_the_line(tmp_path, base_image):
    manifest = image_experiment(tmp_path / "exp", {"base": base_image}, name="img-unpinned",
                                lock=("requirements.txt", f"# x\nsix>=1.16 --hash=sha256:{SIX_WHEEL}\n"))
    with pytest.raises(ManifestError) as info:
        plan_for(manifest)
    assert info.value.exit_code == 2 and "requirements.txt:2" in info.value.message


def test_bootstrap_base_pinned_by_image_id_builds_with_debs_recorded(tmp_path, base_image_id, docker_client, cache):
    image = {"bootstrap": {"suite": "bookworm", "packages": ["python3", "python3-numpy"], "variant": "minbase",
                           "imageId": base_image_id}}
    plan = plan_for(image_experiment(tmp_path / "exp", image, name="img-boot", lock=requirements_lock()))
    built = build_image(plan, cache, docker_client, quiet=True)
    assert built.base_ref == built.base_image_id == base_image_id and built.base_repo_digest is None
    names = {d.name: d for d in built.debs}
    assert {"python3", "python3-numpy", "libc6"} <= set(names)
    assert names["python3"].purl.startswith("pkg:deb/debian/python3@3.11") and names["python3"].arch == "amd64"
    assert "%2B" in names["python3-numpy"].purl or "+" not in names["python3-numpy"].version
    assert run_in(docker_client, built.id, "import six; print(six.__version__)").strip() == "1.16.0"
    again = build_image(plan, cache, docker_client, quiet=True)
    assert again.cached and again.debs == built.debs


def test_changed_code_file_after_planning_is_refused(tmp_path, base_image, docker_client, cache):
    manifest = image_experiment(tmp_path / "exp", {"base": base_image}, name="img-race")
    plan = plan_for(manifest)
    (tmp_path / "exp" / "train.py").write_text("print('changed after planning')\n")
    with pytest.raises(IntegrityError) as info:
        build_image(plan, cache, docker_client, quiet=True)
    assert "changed since the plan" in info.value.message
    assert _tags(docker_client, "img-race") == []


@pytest.fixture(autouse=True, scope="module")
def _cleanup(docker_client):
    yield
    for img in docker_client.images.list(name="xrun/img-*"):
        for tag in img.tags:
            if tag.startswith("xrun/img-"):
                try:
                    docker_client.images.remove(tag, force=True)
                except Exception:  # noqa: BLE001
                    pass

