"""s3:// against moto's real S3 server on 127.0.0.1 (skipped only when moto is not installed)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from runner.errors import FetchError, IntegrityError  # noqa: E402
from runner.fetch import Cache, FetchOptions, fetch_blob  # noqa: E402
from runner.fetch.s3 import endpoint_url  # noqa: E402

FAST = FetchOptions(retries=2, backoff_s=0.01, timeout_s=5, progress=False)
V1 = os.urandom(1_300_000)
V2 = os.urandom(700_000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    return monkeypatch


@pytest.fixture()
def bucket(aws, endpoint: str, request: pytest.FixtureRequest) -> dict[str, str]:
    import boto3

    name = "xrun-" + hashlib.md5(request.node.name.encode()).hexdigest()[:12]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=name, Key="sets/train.bin", Body=V1)["VersionId"]
    v2 = s3.put_object(Bucket=name, Key="sets/train.bin", Body=V2)["VersionId"]
    return {"name": name, "v1": v1, "v2": v2}


def test_endpoint_variables(monkeypatch: pytest.MonkeyPatch):
    assert endpoint_url({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}) == "http://b"
    assert endpoint_url({"AWS_ENDPOINT_URL": "http://a"}) == "http://a"
    assert endpoint_url({}) is None


def test_fetch_latest_then_hit(bucket, tmp_path: Path):
    cache = Cache(tmp_path / "cache")
    uri = f"s3://{bucket['name']}/sets/train.bin"
    blob = fetch_blob(cache, uri, {"sha256": sha(V2)}, name="train", options=FAST)
    assert blob.fetched and blob.path.read_bytes() == V2
    assert not fetch_blob(cache, uri, {"sha256": sha(V2)}, name="train", options=FAST).fetched


def test_version_id_pins_the_old_version(bucket, tmp_path: Path):
    cache = Cache(tmp_path / "cache")
    uri = f"s3://{bucket['name']}/sets/train.bin?versionId={bucket['v1']}"
    assert fetch_blob(cache, uri, {"sha256": sha(V1)}, name="train", options=FAST).path.read_bytes() == V1
    with pytest.raises(IntegrityError, match="md5 mismatch"):
        fetch_blob(cache, f"s3://{bucket['name']}/sets/train.bin", {"md5": hashlib.md5(V1).hexdigest()},
                   name="train", options=FAST)


def test_generic_endpoint_variable_is_honoured(bucket, aws, endpoint: str, tmp_path: Path):
    aws.delenv("AWS_ENDPOINT_URL_S3")
    aws.setenv("AWS_ENDPOINT_URL", endpoint)
    blob = fetch_blob(Cache(tmp_path / "c"), f"s3://{bucket['name']}/sets/train.bin", {"sha256": sha(V2)},
                      name="train", options=FAST)
    assert blob.size == len(V2)


@pytest.mark.parametrize("path", ["sets/missing.bin", "sets/train.bin?versionId=nope"])
def test_missing_key_or_version_fails_at_once(bucket, tmp_path: Path, path: str):
    with pytest.raises(FetchError) as err:
        fetch_blob(Cache(tmp_path / "c"), f"s3://{bucket['name']}/{path}", {"sha256": sha(V2)}, name="train",
                   options=FAST)
    assert err.value.exit_code == 4 and "train" in err.value.message and "\n" not in err.value.message


def test_missing_bucket_fails_at_once(aws, tmp_path: Path):
    with pytest.raises(FetchError, match="not found"):
        fetch_blob(Cache(tmp_path / "c"), "s3://no-such-bucket-xrun/x.bin", {"sha256": sha(V2)}, name="x",
                   options=FAST)


def test_partial_download_resumes_with_range(bucket, tmp_path: Path):
    cache = Cache(tmp_path / "cache")
    partial = cache.partial_path("sha256", sha(V2))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(V2[:300_000])
    blob = fetch_blob(cache, f"s3://{bucket['name']}/sets/train.bin", {"sha256": sha(V2)}, name="t", options=FAST)
    assert blob.path.read_bytes() == V2 and not partial.exists()


def test_corrupt_partial_is_refetched_clean(bucket, tmp_path: Path):
    cache = Cache(tmp_path / "cache")
    partial = cache.partial_path("sha256", sha(V2))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 300_000)
    blob = fetch_blob(cache, f"s3://{bucket['name']}/sets/train.bin", {"sha256": sha(V2)}, name="t", options=FAST)
    assert blob.path.read_bytes() == V2


def test_unreachable_endpoint_retries_then_fails(aws, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    aws.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(FetchError, match="gave up"):
        fetch_blob(Cache(tmp_path / "c"), "s3://b/k.bin", {"sha256": sha(V2)}, name="k", options=FAST)


def test_without_credentials_requests_go_unsigned(bucket, aws, endpoint: str, tmp_path: Path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.put_object_acl(Bucket=bucket["name"], Key="sets/train.bin", ACL="public-read")
    s3.put_object(Bucket=bucket["name"], Key="sets/private.bin", Body=V1)
    aws.delenv("AWS_ACCESS_KEY_ID")
    aws.delenv("AWS_SECRET_ACCESS_KEY")
    blob = fetch_blob(Cache(tmp_path / "c"), f"s3://{bucket['name']}/sets/train.bin", {"sha256": sha(V2)},
                      name="public", options=FAST)
    assert blob.size == len(V2)
    # A private object without credentials: refused at once, and the message says what to set.
    with pytest.raises(FetchError, match="access denied.*AWS_ACCESS_KEY_ID"):
        fetch_blob(Cache(tmp_path / "c"), f"s3://{bucket['name']}/sets/private.bin",
                   {"sha256": sha(V1)}, name="private", options=FAST)
