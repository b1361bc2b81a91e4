"""The build stage's pure parts: tags, wheel choice, Dockerfile, deterministic context and archive, errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
from packaging.tags import sys_tags

from runner.build import bootstrap, layers
from runner.build.bootstrap import DebPackage, write_docker_archive
from runner.engine.client import docker_client
from runner.errors import EnvironmentProblem, ManifestError
from runner.build.image import _matching_repo_digest, image_environment
from runner.build.layers import LayerBuilder
from runner.lockfiles.interface import LockEntry
from runner.manifest import BootstrapSpec
from runner.plan import parse_image_ref
from runner.build.wheels import PROBE, Candidate, best_wheel, compute_tags, linux_platforms, target_from_facts


def host_facts() -> dict:
    return json.loads(subprocess.check_output([sys.executable, "-I", "-c", PROBE]))


def test_tags_from_the_probe_equal_packaging_sys_tags_on_this_host():
    """Fed this host's facts, the tags are exactly what packaging computes for the running interpreter."""
    mine, theirs = [str(t) for t in compute_tags(host_facts())], [str(t) for t in sys_tags()]
    assert set(mine) == set(theirs) and len(mine) == len(theirs)
    # packaging moved plain linux_ARCH tags to the front in recent releases; the rest keeps its order.
    assert [t for t in mine if "-linux_" not in t] == [t for t in theirs if "-linux_" not in t]


def test_platform_tags_for_glibc_and_musl():
    glibc = linux_platforms("linux-x86_64", 64, "glibc 2.17")
    assert glibc[0] == "linux_x86_64" and glibc[1:3] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert glibc[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_18_x86_64" not in glibc
    musl = linux_platforms("linux-aarch64", 64, "musl 1.2.4")
    assert musl == ["linux_aarch64"] + [f"musllinux_1_{m}_aarch64" for m in (2, 1, 0)]
    assert linux_platforms("linux-x86_64", 32, "glibc 2.36")[0] == "linux_i686"


def _target(version=(3, 11, 2), libc="glibc 2.36"):
    facts = {**host_facts(), "version": list(version), "libc": libc, "implementation": "cpython",
             "soabi": f"cpython-{version[0]}{version[1]}-x86_64-linux-gnu", "platform": "linux-x86_64", "bits": 64}
    return target_from_facts(facts)


def test_best_wheel_prefers_the_most_specific_compatible_tag():
    entry = LockEntry(name="numpy", version="1.26.4", hashes=(), source="lock:3", line=3)
    cands = [Candidate(f"numpy-1.26.4-{tag}.whl", f"https://x/{tag}", {"sha256": "0" * 64}) for tag in (
        "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64", "cp311-cp311-musllinux_1_1_x86_64",
        "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", "cp311-cp311-manylinux_2_5_x86_64",
        "cp311-cp311-win_amd64")] + [Candidate("numpy-1.26.4-py3-none-any.whl", "https://x/any", {})]
    chosen = best_wheel(entry, cands, _target(), "lock")
    assert chosen.filename == "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    # An old glibc cannot take the 2_17 wheel: the 2_5 one, then the pure one.
    assert "manylinux_2_5" in best_wheel(entry, cands, _target(libc="glibc 2.12"), "lock").filename


def test_no_fitting_wheel_is_exit_2_naming_the_lock_line():
    entry = LockEntry(name="numpy", version="1.26.4", hashes=(), source="req.txt:7", line=7)
    cands = [Candidate("numpy-1.26.4-cp312-cp312-win_amd64.whl", "https://x/w", {})]
    with pytest.raises(ManifestError) as info:
        best_wheel(entry, cands, _target(), "req.txt")
    assert info.value.message.startswith("req.txt:7: numpy 1.26.4: no locked wheel fits")
    assert "cp311" in info.value.message


def test_environment_puts_the_venv_first_and_keeps_the_base_order():
    base = ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "PYTHONPATH=/srv/lib"]
    assert image_environment(base, with_venv=True) == [
        "PATH=/opt/xrun/venv/bin:/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "PYTHONPATH=/opt/xrun/site:/srv/lib"]
    assert image_environment(["PATH=/bin"], with_venv=False) == ["PATH=/bin", "PYTHONPATH=/opt/xrun/site"]


def test_context_is_deterministic_sorted_and_owned_by_root(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.sh").write_text("#!/bin/sh\n")
    (tmp_path / "a" / "x.sh").chmod(0o700)

    def build() -> bytes:
        ctx = LayerBuilder()
        ctx.add_bytes("etc/motd", b"hi\n")
        ctx.add_file("workspace/b.txt", tmp_path / "b.txt", 0o644, hashlib.sha256(b"b").hexdigest())
        ctx.add_tree("xrun/venv", tmp_path / "a")
        buf = io.BytesIO()
        ctx.write(buf)
        return buf.getvalue()

    first = build()
    (tmp_path / "b.txt").touch()  # a new mtime must not matter
    assert build() == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["etc", "etc/motd", "workspace", "workspace/b.txt", "xrun", "xrun/venv",
                                         "xrun/venv/x.sh"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", bootstrap.SOURCE_DATE_EPOCH)}
    modes = {m.name: m.mode for m in members}
    assert modes["xrun/venv/x.sh"] == 0o755 and modes["workspace/b.txt"] == 0o644 and modes["workspace"] == 0o755


def test_docker_archive_is_bit_identical_and_its_id_is_the_config_digest(tmp_path):
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("./etc/os-release")
        data = b"ID=debian\n"
        info.size, info.mtime = len(data), bootstrap.SOURCE_DATE_EPOCH
        tar.addfile(info, io.BytesIO(data))
    a = write_docker_archive(rootfs, tmp_path / "a.tar", "amd64")
    b = write_docker_archive(rootfs, tmp_path / "b.tar", "amd64")
    assert a.path.read_bytes() == b.path.read_bytes() and a.image_id == b.image_id
    with tarfile.open(a.path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        config_bytes = tar.extractfile(manifest[0]["Config"]).read()
        layer = tar.extractfile(manifest[0]["Layers"][0]).read()
    assert a.image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest() == layers.read_archive_id(a.path)
    config = json.loads(config_bytes)
    assert config["created"] == "2024-01-01T00:00:00Z" and config["architecture"] == "amd64"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()] == [a.diff_id]
    assert layer == rootfs.read_bytes()


def test_mmdebstrap_recipe_is_reproducible_and_host_independent(tmp_path):
    spec = BootstrapSpec(suite="bookworm", packages=("python3=3.11.2-1+b1",), sources=str(tmp_path / "s.sources"))
    (tmp_path / "s.sources").write_text("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
                                        "Components: main\n")
    cmd = bootstrap.mmdebstrap_command(spec, tmp_path / "out.tar")
    assert cmd[:2] == ["mmdebstrap", "--variant=minbase"] and "--skip=output/dev" in cmd
    assert any("etc/hostname" in c and "etc/resolv.conf" in c for c in cmd)
    assert cmd[-3:] == ["bookworm", str(tmp_path / "out.tar"), str(tmp_path / "s.sources")]
    assert "--include=python3=3.11.2-1+b1" in cmd
    digest = bootstrap.spec_digest(spec)
    (tmp_path / "s.sources").write_text("Types: deb\nURIs: http://other.mirror/debian\nSuites: bookworm\n")
    assert bootstrap.spec_digest(spec) != digest  # other sources, other packages possibly: another cache key


def test_mmdebstrap_records_apt_index_of_the_installed_debs(tmp_path):
    spec = BootstrapSpec(suite="bookworm", packages=("python3",))
    cmd = bootstrap.mmdebstrap_command(spec, tmp_path / "out.tar", tmp_path / "apt index.txt")
    (hook,) = [c for c in cmd if "apt-cache show" in c]
    assert hook.startswith("--customize-hook=chroot ") and hook.endswith("> '" + str(tmp_path / "apt index.txt") + "'")
    assert not any("apt-cache" in c for c in bootstrap.mmdebstrap_command(spec, tmp_path / "out.tar"))


def test_apt_index_records_give_each_deb_its_sha256():
    text = ("Package: adduser\nVersion: 3.134\nArchitecture: all\nFilename: pool/main/a/adduser/adduser_3.134_all.deb\n"
            "SHA256: " + "c" * 64 + "\nDescription: add users\n and groups\n\n"
            "Package: apt\nVersion: 2.6.2\nArchitecture: amd64\nStatus: install ok installed\n\n"
            "Package: libc6\nVersion: 2.36-9+deb12u14\nArchitecture: amd64\nSHA256: " + "d" * 64 + "\n")
    assert bootstrap.parse_apt_index(text) == {bootstrap.deb_key("adduser", "3.134", "all"): "c" * 64,
                                               bootstrap.deb_key("libc6", "2.36-9+deb12u14", "amd64"): "d" * 64}


def test_bootstrap_needs_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(EnvironmentProblem) as info:
        bootstrap.check_host()
    assert info.value.exit_code == 4 and "Linux" in info.value.message and "image.base" in info.value.message


def test_a_hung_mmdebstrap_is_stopped_with_its_children_and_is_exit_4(tmp_path, monkeypatch):
    # A stand-in that logs a line, starts a child and then hangs, as on a mirror that stopped answering.
    fake = tmp_path / "bin" / "mmdebstrap"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho 'I: downloading' >&2\nsleep 600 &\necho $! > {tmp_path / 'child'}\n"
                    "sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    spec = BootstrapSpec(suite="bookworm", packages=())
    with pytest.raises(EnvironmentProblem) as info:
        bootstrap.run_mmdebstrap(spec, tmp_path / "rootfs.tar", quiet=True, timeout_s=2)
    assert info.value.exit_code == 4
    assert "did not finish within 2 s bootstrapping bookworm" in info.value.message
    assert info.value.lines == ["I: downloading"]
    child = int((tmp_path / "child").read_text())
    for _ in range(300):  # reaped by init soon after the group was killed
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_deb_purl_and_dpkg_parsing():
    out = "ii \tpython3\t3.11.2-1+b1\tamd64\nrc \told\t1.0\tamd64\nii \tpython3-numpy\t1:1.24.2-1+deb12u1\tamd64\n"
    debs = list(bootstrap._parse_dpkg(out))
    assert [d.name for d in debs] == ["python3", "python3-numpy"]
    assert debs[0].purl == "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64"
    assert debs[1].purl == "pkg:deb/debian/python3-numpy@1:1.24.2-1%2Bdeb12u1?arch=amd64"
    assert DebPackage("tzdata", "2024a-0+deb12u1", "all").purl.endswith("?arch=all")


def test_repo_digest_matching_normalises_docker_hub_names():
    digest = "sha256:" + "e" * 64
    assert _matching_repo_digest([f"python@{digest}"], parse_image_ref(f"docker.io/library/python@{digest}"))
    assert _matching_repo_digest([f"python@{digest}"], parse_image_ref(f"python:3.12@{digest}"))
    assert not _matching_repo_digest([f"python@{digest}"], parse_image_ref(f"other/python@{digest}"))
    assert not _matching_repo_digest([f"python@sha256:{'f' * 64}"], parse_image_ref(f"python@{digest}"))


def test_no_engine_is_exit_4_with_how_to_start_one(tmp_path):
    with pytest.raises(EnvironmentProblem) as info:
        docker_client({"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}, timeout=5)
    message = info.value.message
    assert info.value.exit_code == 4 and "\n" not in message
    assert str(tmp_path) in message and "systemctl start docker" in message and "DOCKER_HOST" in message


def test_bare_tag_is_refused_before_any_engine_call():
    with pytest.raises(ManifestError):
        parse_image_ref("python:3.12")

