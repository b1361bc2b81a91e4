"""`xrun build --oci-layout DIR --push REGISTRY/REPO`: the layout read back blob by blob, the push pulled back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import forget_names, push_image
from experiments import CODE, golden_base, image_experiment, plan_for
from runner.build.image import build_image
from runner.cli import main
from runner.fetch import Cache
from runner.provenance import dependencies

pytestmark = pytest.mark.docker


def _blob(layout: Path, digest: str) -> bytes:
    """A blob of the layout, checked against its name."""
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_oci_layout_reads_back_and_the_push_pulls_back_by_digest(tmp_path, registry, docker_client, monkeypatch,
                                                                 capsys):
    base_id = golden_base(docker_client, tmp_path)
    pinned = push_image(docker_client, registry, base_id, "xrun-test/golden-base")
    manifest = image_experiment(tmp_path / "exp", {"base": pinned}, name="img-publish", code=CODE)
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    layout, target = tmp_path / "oci", f"{registry.host}/xrun-test/publish"
    try:
        assert main(["build", str(manifest), "--oci-layout", str(layout), "--push", target, "--json"]) == 0
        built = json.loads(capsys.readouterr().out)

        # index → manifest → config → layers: every digest and size matches its blob.
        assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads((layout / "index.json").read_bytes())
        (descriptor,) = index["manifests"]
        assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        raw = _blob(layout, descriptor["digest"])
        assert len(raw) == descriptor["size"]
        oci = json.loads(raw)
        config = _blob(layout, oci["config"]["digest"])
        assert len(config) == oci["config"]["size"] and oci["config"]["digest"] == built["imageId"]
        for layer in oci["layers"]:
            assert len(_blob(layout, layer["digest"])) == layer["size"]
        # Uncompressed layers: the layer digests are the config's diff IDs, base layer first.
        assert [layer["digest"] for layer in oci["layers"]] == json.loads(config)["rootfs"]["diff_ids"]
        assert len(oci["layers"]) == 3 and built["layers"] == [layer["digest"] for layer in oci["layers"]]
        assert built["manifestDigest"] == built["ociManifestDigest"] == descriptor["digest"]
        assert built["repository"] == target

        # The pushed manifest, pulled by digest into an engine without the image, gives the same image ID.
        docker_client.images.remove(built["imageId"], force=True)
        for event in docker_client.api.pull(target, tag=built["manifestDigest"], stream=True, decode=True):
            assert "error" not in event, event
        assert docker_client.images.get(f"{target}@{built['manifestDigest']}").id == built["imageId"]

        # A later build (and so the run that uses it) reports the push: the build record keeps it.
        again = build_image(plan_for(manifest), Cache(tmp_path / "cache"), docker_client, quiet=True)
        assert again.cached and again.manifest_digest == built["manifestDigest"] and again.pushed_to == target
        deps = {d.name: d for d in dependencies(plan_for(manifest), [], again, None)}
        assert deps["image"].annotations["manifestDigest"] == built["manifestDigest"]
        assert deps["image"].annotations["repository"] == target
        assert deps["image"].annotations["layers"] == built["layers"]
    finally:
        for image in docker_client.images.list(name="xrun/img-publish"):
            docker_client.images.remove(image.id, force=True)
        forget_names(docker_client, registry)


def test_push_target_without_a_registry_host_is_exit_2_before_building(tmp_path, capsys, monkeypatch):
    manifest = image_experiment(tmp_path / "exp", {"base": "x.invalid/b@sha256:" + "0" * 64}, name="img-bad-push")
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    for bad in ("team/exp", "127.0.0.1:5000/exp:tag", "127.0.0.1:5000/exp@sha256:" + "0" * 64):
        assert main(["build", str(manifest), "--push", bad]) == 2  # the base is never looked up
        err = capsys.readouterr().err
        assert "REGISTRY/REPO" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "builds").exists()
