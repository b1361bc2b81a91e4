"""Session fixtures shared by every integration test: the Docker engine, a local registry, the base image.

The base image is bootstrapped from Debian packages by runner.build.bootstrap (mmdebstrap with a fixed
SOURCE_DATE_EPOCH, wrapped as a `docker load` archive with a fixed config), so its image ID is the
same on every machine and run. The archive is cached per machine (XRUN_TEST_CACHE, default
~/.cache/xrun-test/): the first session takes about a minute, later ones seconds. It is loaded,
pushed to Debian's `docker-registry` on 127.0.0.1 (the engine trusts 127.0.0.0/8 over plain HTTP),
and handed to tests as a pinned `127.0.0.1:PORT/xrun-base@sha256:…` reference.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.manifest import BootstrapSpec
from servers import wait_until_serving

TEST_BASE = BootstrapSpec(suite="bookworm", packages=("python3", "python3-numpy"), variant="minbase")
BASE_REPO = "xrun-base"


@dataclass(frozen=True)
class Registry:
    """A running local registry."""

    host: str  # "127.0.0.1:PORT"
    root: Path  # its storage folder


def _test_cache() -> Path:
    return Path(os.environ.get("XRUN_TEST_CACHE") or Path.home() / ".cache" / "xrun-test")


@pytest.fixture(scope="session")
def docker_client():
    """The real engine; the whole session fails loudly (not skips) when `docker info` does not answer."""
    from runner.engine.client import docker_client as connect
    from runner.errors import EnvironmentProblem

    try:
        return connect()
    except EnvironmentProblem as exc:
        pytest.fail(f"the integration tests need a running Docker engine: {exc.message}", pytrace=False)


def _free_port(preferred: int = 5000) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """Debian's docker-registry serving 127.0.0.1:PORT from a temporary folder, stopped at the end."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail("docker-registry is not installed (apt-get install docker-registry); scripts/setup does it",
                    pytrace=False)
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n")
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    host = f"127.0.0.1:{port}"
    wait_until_serving(f"http://{host}/v2/", proc, root / "registry.log", name="docker-registry",
                       stop=proc.kill)
    try:
        yield Registry(host, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def base_archive() -> Path:
    """The bootstrapped test base as a `docker load` archive, built once per machine and spec."""
    import fcntl

    from runner.build.bootstrap import bootstrap_archive, spec_digest

    cache = _test_cache()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"base-{spec_digest(TEST_BASE)[:16]}.tar"
    # Parallel sessions on one machine bootstrap once: the others wait on the lock.
    with open(str(archive) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.exists():
            bootstrap_archive(TEST_BASE, archive, quiet=True)
    return archive


@pytest.fixture(scope="session")
def base_image_id(docker_client) -> str:
    """The test base loaded into the engine; its ID is fixed by its packages."""
    import docker.errors

    from runner.build.layers import load_archive, read_archive_id

    archive = base_archive()
    image_id = read_archive_id(archive)
    try:
        docker_client.images.get(image_id)
    except docker.errors.ImageNotFound:
        load_archive(docker_client, archive, image_id)
    # A stable local name keeps it loaded when a session's registry names are removed.
    docker_client.api.tag(image_id, "xrun-test/base", image_id.split(":", 1)[1][:12], force=True)
    return image_id


@pytest.fixture(scope="session")
def base_image(docker_client, registry, base_image_id) -> Iterator[str]:
    """A pinned `127.0.0.1:PORT/xrun-base@sha256:…` of the test base, pushed to the local registry."""
    pinned = push_image(docker_client, registry, base_image_id, BASE_REPO)
    yield pinned
    forget_names(docker_client, registry)


def forget_names(client, registry: Registry) -> None:
    """Remove this session's registry names (tags and repo digests) so sessions leave no trail in the engine."""
    import docker.errors

    prefix = registry.host + "/"
    for image in client.images.list(all=True):
        for ref in [*image.tags, *(image.attrs.get("RepoDigests") or [])]:
            if ref.startswith(prefix):
                try:
                    client.images.remove(ref, noprune=True)
                except docker.errors.APIError:
                    pass  # already gone with its last tag, or still used by a container


def push_image(client, registry: Registry, image_id: str, repo: str, tag: str = "test") -> str:
    """Tag image_id as registry/repo:tag, push it, and return registry/repo@<the pushed digest>."""
    name = f"{registry.host}/{repo}"
    client.api.tag(image_id, name, tag, force=True)
    digest = None
    for event in client.api.push(name, tag=tag, stream=True, decode=True):
        if "error" in event:
            pytest.fail(f"push of {name}:{tag} failed: {event['error']}", pytrace=False)
        aux = event.get("aux") or {}
        digest = aux.get("Digest") or digest
    if digest is None:
        pytest.fail(f"push of {name}:{tag} reported no digest", pytrace=False)
    pinned = f"{name}@{digest}"
    # The engine records the RepoDigest on push; resolve_base relies on finding the image by it.
    assert pinned in (client.images.get(image_id).attrs.get("RepoDigests") or []), pinned
    return pinned


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster (slurmctld + slurmd, munged when none runs), SLURM_CONF set; stopped by PID."""
    from slurmcluster import SlurmUnavailable, start_cluster, stop_cluster

    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.fail(f"the Slurm tests need slurm-wlm and munge (scripts/setup installs them): {exc}", pytrace=False)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` on 127.0.0.1 for the session (tests/mlflowserver.py)."""
    from mlflowserver import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()
