"""Real data tools for the data-source tests: DVC and giftless from cached venvs, git-lfs, servers on 127.0.0.1.

The venvs are made once per machine by scripts/setup-data-tools (called here too, so a bare
`pytest` works); a missing tool fails the test, it never skips.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.fetch.sources.listing import ListedFile, tree_digest
from servers import PATIENCE_S

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("XRUN_TEST_CACHE") or Path.home() / ".cache" / "xrun-test")


@functools.lru_cache(maxsize=None)
def tool(venv: str, exe: str) -> Path:
    """The path of a tool in a cached venv, installing the venvs when missing."""
    path = TOOLS / venv / "bin" / exe
    if not path.exists():
        done = subprocess.run([str(REPO / "scripts" / "setup-data-tools")], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"scripts/setup-data-tools failed: {done.stderr[-2000:]}")
    if not path.exists():
        pytest.fail(f"{path} is missing after scripts/setup-data-tools")
    return path


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; fail the test with its output when it fails."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")
    return done.stdout


def dvc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the real DVC."""
    return run(tool("venv-dvc", "dvc"), *args, cwd=cwd, env={"DVC_NO_ANALYTICS": "1", **(env or {})})


def git_lfs_available() -> None:
    """Fail when Debian's git-lfs is not installed (scripts/setup installs it)."""
    if shutil.which("git-lfs") is None:
        pytest.fail("git-lfs is not installed; run scripts/setup (apt-get install git-lfs)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    root = tmp_path_factory.mktemp("http-root")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a test dependency)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """AWS_* for moto, in this process and for DVC."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-creds"),
           "AWS_ENDPOINT_URL_S3": moto_endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def make_bucket(endpoint: str, name: str, versioned: bool) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


@pytest.fixture(scope="session")
def giftless(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A giftless Git LFS server on 127.0.0.1 with local storage: (LFS URL of repo test/data, storage folder)."""
    gunicorn = tool("venv-giftless", "gunicorn")
    root = tmp_path_factory.mktemp("giftless")
    storage = root / "storage"
    storage.mkdir()
    config = root / "giftless.yaml"
    config.write_text(json.dumps({
        "AUTH_PROVIDERS": ["giftless.auth.allow_anon:read_write"],
        "TRANSFER_ADAPTERS": {"basic": {"factory": "giftless.transfer.basic_streaming:factory",
                                        "options": {"storage_class": "giftless.storage.local_storage:LocalStorage",
                                                    "storage_options": {"path": str(storage)}}}},
    }))
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([str(gunicorn), "-b", f"127.0.0.1:{port}", "-w", "1", "giftless.wsgi_entrypoint:app"],
                            cwd=root, env={**os.environ, "GIFTLESS_CONFIG_FILE": str(config)}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"giftless did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/test/data", storage
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def lfs_repo(tmp_path: Path, url: str, content: bytes) -> Path:
    """A git repository with weights.bin in Git LFS, pushed (objects to the LFS server at `url`)."""
    git_lfs_available()
    bare = tmp_path / "remote.git"
    run("git", "init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    repo = tmp_path / "work"
    repo.mkdir()
    run("git", "init", "-q", "-b", "main", cwd=repo)
    for key, value in (("user.email", "t@example.com"), ("user.name", "t"), ("lfs.url", url)):
        run("git", "config", key, value, cwd=repo)
    run("git", "lfs", "install", "--local", cwd=repo)
    run("git", "lfs", "track", "*.bin", cwd=repo)
    (repo / "weights.bin").write_bytes(content)
    (repo / ".lfsconfig").write_text(f"[lfs]\n\turl = {url}\n")
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "lfs", cwd=repo)
    run("git", "remote", "add", "origin", str(bare), cwd=repo)
    run("git", "push", "-q", "origin", "main", cwd=repo)
    return repo


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write files (relative path → bytes) under root."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def digest_of(files: dict[str, bytes]) -> str:
    """The tree digest xrun computes for these files."""
    return tree_digest(ListedFile(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items())


def manifest(root: Path, data: list[dict]) -> Path:
    """A manifest in root whose only interesting part is `data` (for fetch and plan tests)."""
    doc = {"apiVersion": "xrun/v1", "kind": "Experiment", "name": "data",
           "image": {"base": "alpine@sha256:" + "0" * 64}, "code": {"path": "code"},
           "data": data, "seeds": {"global": 1}, "hardware": {"class": "cpu-1"},
           "run": {"command": ["ls"]}, "outputs": [{"path": "x"}]}
    (root / "code").mkdir(parents=True, exist_ok=True)
    path = root / "experiment.yaml"
    path.write_text(json.dumps(doc, indent=1))
    return path
