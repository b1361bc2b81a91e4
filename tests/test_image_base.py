"""The base image against the real engine: by digest, pulled from a real registry, bootstrapped reproducibly."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import docker.errors
import pytest

from conftest import TEST_BASE, base_archive, push_image
from runner.build.bootstrap import (bootstrap_archive, bootstrap_tag, deb_key, ensure_bootstrap_image, installed_debs,
                                    save_deb_digests)
from runner.build.layers import read_archive_id
from runner.errors import FetchError, IntegrityError, ManifestError
from runner.fetch import Cache
from runner.build.image import resolve_base
from runner.manifest import load_manifest
from runner.plan import resolve_plan

pytestmark = pytest.mark.docker


def plan_with(tmp_path: Path, image: dict):
    """A minimal experiment using `image`, resolved through the manifest loader and the planner."""
    (tmp_path / "train.py").write_text("print('hi')\n")
    manifest = {"apiVersion": "xrun/v1", "kind": "Experiment", "name": "base-test", "image": image,
                "seeds": {"global": 1}, "hardware": {"class": "cpu-1"},
                "run": {"command": ["python3", "train.py"]}, "outputs": [{"path": "out.txt"}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(manifest))
    return resolve_plan(load_manifest(path))


def test_docker_host_is_honoured(tmp_path, docker_client):
    """The engine reached through a socket path only DOCKER_HOST names (a link to the real one)."""
    from runner.engine.client import docker_client as connect

    real = Path("/var/run/docker.sock")
    if not real.exists():
        pytest.skip("the engine here is not on the default socket")
    (tmp_path / "elsewhere.sock").symlink_to(real)
    client = connect({"DOCKER_HOST": f"unix://{tmp_path}/elsewhere.sock"})
    assert client.version()["Version"] == docker_client.version()["Version"]


def test_numpy_imports_in_the_base_by_digest_with_the_network_off(base_image, docker_client):
    out = docker_client.containers.run(base_image, ["python3", "-c", "import numpy; print(numpy.__version__)"],
                                       network_mode="none", remove=True)
    assert out.decode().strip().startswith("1.")


def test_base_image_id_is_fixed_by_its_packages(base_image_id, docker_client):
    assert base_image_id == read_archive_id(base_archive())
    attrs = docker_client.images.get(base_image_id).attrs
    assert attrs["Created"].startswith("2024-01-01T00:00:00") and attrs["Architecture"] == "amd64"
    assert len(attrs["RootFS"]["Layers"]) == 1


def test_resolve_base_uses_the_local_image_by_repo_digest(tmp_path, base_image, base_image_id, docker_client):
    base = resolve_base(plan_with(tmp_path, {"base": base_image}), docker_client)
    assert (base.ref, base.image_id, base.repo_digest, base.platform) == (
        base_image, base_image_id, base_image, "linux/amd64")


def test_pull_by_digest_from_the_registry_after_rmi(tmp_path, registry, base_image_id, docker_client):
    pinned = push_image(docker_client, registry, base_image_id, "xrun-pulltest", tag="v1")
    # Forget every local name of it under that repository: only the registry has it now.
    docker_client.images.remove(f"{registry.host}/xrun-pulltest:v1")
    try:  # removing the only tag may already have dropped the digest reference (engine-dependent)
        docker_client.images.remove(pinned)
    except docker.errors.ImageNotFound:
        pass
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(pinned)
    base = resolve_base(plan_with(tmp_path, {"base": pinned}), docker_client, quiet=True)
    assert base.image_id == base_image_id and base.repo_digest == pinned
    assert pinned in docker_client.images.get(pinned).attrs["RepoDigests"]


def test_tag_with_digest_is_accepted_and_the_digest_wins(tmp_path, base_image, docker_client):
    name, digest = base_image.split("@")
    base = resolve_base(plan_with(tmp_path, {"base": f"{name}:no-such-tag@{digest}"}), docker_client)
    assert base.repo_digest == base_image


def test_a_bare_tag_is_refused_with_how_to_find_the_digest(tmp_path, base_image, docker_client):
    with pytest.raises(ManifestError) as info:
        plan_with(tmp_path, {"base": "python:3.12"})
    assert info.value.exit_code == 2
    text = " ".join([info.value.message, *info.value.lines])
    assert "docker buildx imagetools inspect python:3.12" in text and "RepoDigests" in text
    # A plan assembled by other means gets the same refusal from resolve_base, before any pull.
    plan = plan_with(tmp_path, {"base": base_image})
    unpinned = dataclasses.replace(plan, base=dataclasses.replace(plan.base, tag="3.12", digest=""))
    with pytest.raises(ManifestError) as info:
        resolve_base(unpinned, docker_client)
    assert "not pinned by digest" in info.value.message and "imagetools" in info.value.message


def test_a_digest_the_registry_does_not_have_is_exit_4(tmp_path, registry, docker_client):
    missing = f"{registry.host}/xrun-base@sha256:{'0' * 64}"
    with pytest.raises(FetchError) as info:
        resolve_base(plan_with(tmp_path, {"base": missing}), docker_client, quiet=True)
    assert info.value.exit_code == 4 and missing in info.value.message


def test_installed_debs_are_recorded_as_purls(base_image_id, docker_client, tmp_path):
    debs = installed_debs(docker_client, base_image_id, Cache(tmp_path / "cache"))
    by_name = {d.name: d for d in debs}
    assert {"python3", "python3-numpy", "dpkg", "libc6"} <= set(by_name)
    purl = by_name["python3"].purl
    assert purl.startswith("pkg:deb/debian/python3@3.11") and purl.endswith("?arch=amd64")
    # The second call is answered from the cache (no container): same answer.
    assert installed_debs(docker_client, base_image_id, Cache(tmp_path / "cache")) == debs
    # A cache that bootstrapped the image kept apt's .deb digests: each package carries its own.
    python3 = by_name["python3"]
    save_deb_digests(Cache(tmp_path / "cache"), base_image_id, {deb_key(python3.name, python3.version, python3.arch): "e" * 64})
    again = {d.name: d for d in installed_debs(docker_client, base_image_id, Cache(tmp_path / "cache"))}
    assert again["python3"].sha256 == "e" * 64 and again["dpkg"].sha256 is None
    assert again["python3"].to_json()["sha256"] == "e" * 64 and again["python3"].purl == purl


@pytest.mark.slow
def test_bootstrap_gives_the_same_image_id_twice_in_a_row(tmp_path, docker_client, base_image_id):
    """Two mmdebstraps from scratch: identical bytes, hence identical IDs; a wrong pin is exit 3, nothing loaded."""
    first = bootstrap_archive(TEST_BASE, tmp_path / "first.tar", quiet=True)
    # apt's SHA256 of every installed .deb was recorded while the chroot had its lists (the rootfs is unchanged).
    listed = installed_debs(docker_client, base_image_id, Cache(tmp_path / "probe"))
    if first.image_id == base_image_id:  # the mirror has not moved since the test base was made
        assert {deb_key(d.name, d.version, d.arch) for d in listed} <= set(first.deb_sha256)
    assert all(re.fullmatch("[0-9a-f]{64}", v) for v in first.deb_sha256.values()) and len(first.deb_sha256) > 50
    _check_against_host_apt(first.deb_sha256)
    wrong = "sha256:" + "0" * 64
    tag = bootstrap_tag(TEST_BASE)
    tagged_before = _tagged(docker_client, tag)
    with pytest.raises(IntegrityError) as info:
        ensure_bootstrap_image(dataclasses.replace(TEST_BASE, image_id=wrong), docker_client,
                               Cache(tmp_path / "cache"), quiet=True)
    assert info.value.exit_code == 3
    # The second run produced exactly the first run's image ID (the ID covers every byte of the layer).
    assert f"the packages gave image {first.image_id}, but the manifest pins imageId {wrong}" in info.value.message
    # Refused before `docker load`: the cache tag is as it was (other sessions share this engine, so
    # the engine's whole image list is not a stable witness).
    assert _tagged(docker_client, tag) == tagged_before


def _check_against_host_apt(digests: dict[str, str]) -> None:
    """apt-cache on the host (a tool we did not write) gives the same SHA256 for a package it knows."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return
    for key, sha in digests.items():
        name, version, arch = key.split(" ")
        if name != "python3":
            continue
        shown = subprocess.run([apt_cache, "show", f"{name}:{arch}={version}"], capture_output=True, text=True,
                               timeout=60).stdout
        host = re.findall(r"^SHA256: ([0-9a-f]{64})$", shown, re.MULTILINE)
        if host:  # the host's lists may not hold that version
            assert sha in host


def _tagged(client, tag: str) -> str | None:
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None
