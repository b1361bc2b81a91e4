"""Credentials in messages: one redaction for every URL xrun prints or records, per source kind, against real servers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from datatools import giftless, http_root, lfs_repo, manifest, moto_endpoint, s3_env  # noqa: F401
from faultserver import FaultServer
from runner.cli import main
from runner.errors import IntegrityError
from runner.redact import REDACTED, credential_params, redact


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("text, secret, kept", [
    ("w: http://h:1/o/x?jwt=eyJh.eyJl.0CYm-nP: sha256 mismatch", "eyJh", "http://h:1/o/x?jwt=REDACTED: sha256 mismatch"),
    ("https://u:pa55@h/x?a=1&X-Amz-Signature=abc&versionId=3 then", "pa55", "https://REDACTED@h/x?a=1&X-Amz-Signature="
     "REDACTED&versionId=3 then"),
    ("Max retries exceeded with url: /x?token=S3CRET (Caused by", "S3CRET", "/x?token=REDACTED (Caused by"),
    ("found for 'ftp://h/x?sig=S3CRET'", "S3CRET", "'ftp://h/x?sig=REDACTED'"),
    ("Authorization: Bearer abcdefghijkl", "abcdefghijkl", "Bearer REDACTED"),
    ("?tokenizer=bert&upload_token=S3CRET, next", "S3CRET", "?tokenizer=bert&upload_token=REDACTED, next"),
    ("/x?Signature=a%2Fb&Expires=17&AWSAccessKeyId=AKIA", "AKIA", "Signature=REDACTED&Expires=17&AWSAccessKeyId=REDACTED"),
])
def test_redact_keeps_the_url_readable(text, secret, kept):
    assert secret not in redact(text) and kept in redact(text)


def test_errors_are_redacted_where_they_are_made():
    exc = IntegrityError("x: https://h/o?X-Amz-Credential=AKIA%2F1&X-Amz-Security-Token=T0K: bad", lines=["?jwt=J.W.T"])
    assert "AKIA" not in exc.message and "T0K" not in str(exc) and exc.lines == [f"?jwt={REDACTED}"]
    assert credential_params("https://h/o?X-Amz-Signature=1&versionId=2") == ["x-amz-signature"]


def test_lfs_signed_href_of_a_corrupt_object_is_not_printed_or_recorded(tmp_path, capsys, giftless):
    """giftless hands out `…?jwt=…` links; a corrupt object's error names the link without its token."""
    url, storage = giftless
    content = os.urandom(3000)
    oid = hashlib.sha256(content).hexdigest()
    lfs_repo(tmp_path, url, content)
    stored = [p for p in storage.rglob("*") if p.is_file() and p.name == oid]
    stored[0].write_bytes(os.urandom(3000))
    path = manifest(tmp_path / "m", [{"name": "w", "lfs": {"oid": oid, "size": len(content), "url": url}}])
    capsys.readouterr()
    rc = main(["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 3 and "sha256 mismatch" in err and f"jwt={REDACTED}" in err, err
    assert "eyJ" not in err
    records = list((tmp_path / "runs").rglob("run.json"))
    assert records, list((tmp_path / "runs").rglob("*"))
    error = json.loads(records[0].read_text())["error"]
    assert "sha256 mismatch" in error and f"jwt={REDACTED}" in error and "eyJ" not in error
    for written in (tmp_path / "runs").rglob("*"):  # run.json, logs, whatever else the run folder holds
        assert not written.is_file() or b"eyJ" not in written.read_bytes(), written


def lfs_batch_server(server: FaultServer, oid: str, size: int, href: str) -> str:
    """A Git LFS batch endpoint on the fault server that hands out `href` for `oid`; returns the LFS URL."""
    answer = {"transfer": "basic", "objects": [{"oid": oid, "size": size, "actions": {"download": {"href": href}}}]}
    server.add("/repo.git/info/lfs/objects/batch", json.dumps(answer).encode())
    return server.url("/repo.git/info/lfs")


def test_s3_presigned_href_is_redacted(tmp_path, capsys, s3_env, moto_endpoint):
    """An LFS server backed by S3 hands out presigned URLs (X-Amz-Signature, -Credential, -Security-Token)."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      config=Config(signature_version="s3v4"))
    s3.create_bucket(Bucket="lfs-store")
    content = b"expected bytes\n"
    oid = hashlib.sha256(content).hexdigest()
    s3.put_object(Bucket="lfs-store", Key=oid, Body=b"corrupt bytes!!")
    href = s3.generate_presigned_url("get_object", Params={"Bucket": "lfs-store", "Key": oid}, ExpiresIn=600)
    href += "&X-Amz-Security-Token=SESSIONT0KEN"  # what temporary credentials add
    assert "X-Amz-Signature=" in href and "X-Amz-Credential=" in href
    signature = href.split("X-Amz-Signature=")[1].split("&")[0]
    with FaultServer() as server:
        url = lfs_batch_server(server, oid, len(content), href)
        path = manifest(tmp_path, [{"name": "w", "lfs": {"oid": oid, "size": len(content), "url": url}}])
        capsys.readouterr()
        rc = main(["fetch", str(path)])
    err = capsys.readouterr().err
    assert rc == 3 and "lfs-store" in err and f"X-Amz-Signature={REDACTED}" in err, err
    assert signature not in err and "SESSIONT0KEN" not in err and "testing/" not in err


def test_http_redirect_to_a_signed_link_is_redacted(tmp_path, capsys):
    """A plain http URL that redirects to a signed link the transport cannot follow: the error shows no token."""
    with FaultServer() as server:
        server.redirect("/data.bin", "gopher://elsewhere/data.bin?token=S3CRETT0KEN&sig=S1G")
        path = manifest(tmp_path, [{"name": "d", "uri": server.url("/data.bin"), "sha256": "a" * 64}])
        capsys.readouterr()
        rc = main(["fetch", str(path)])
    err = capsys.readouterr().err
    assert rc != 0 and "elsewhere/data.bin?token=REDACTED" in err, err
    assert "S3CRETT0KEN" not in err and "S1G" not in err


def test_dvc_http_remote_redirect_is_redacted(tmp_path, capsys):
    """A DVC http remote whose object redirects to a signed link: the error names the remote, not the token."""
    content = b"one\n"
    md5 = hashlib.md5(content).hexdigest()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.txt.dvc").write_text(f"outs:\n- md5: {md5}\n  size: 4\n  hash: md5\n  path: a.txt\n")
    with FaultServer() as server:
        server.redirect(f"/store/files/md5/{md5[:2]}/{md5[2:]}", "gopher://cdn/obj?X-Amz-Signature=S1GNATURE")
        path = manifest(tmp_path, [{"name": "a", "dvc": {"file": "code/a.txt.dvc", "remote": server.url("/store")}}])
        capsys.readouterr()
        rc = main(["fetch", str(path)])
    err = capsys.readouterr().err
    assert rc != 0 and "X-Amz-Signature=REDACTED" in err, err
    assert "S1GNATURE" not in err


def test_an_internal_error_quoting_a_signed_link_is_redacted(tmp_path, capsys, monkeypatch):
    """Even a bug of ours (exit 70) must not print the token it stumbled over."""
    import runner.cli.commands.fetch as fetch_command

    def broken(*args, **kwargs):
        raise RuntimeError("bad answer from https://u:pa55@h/o?jwt=eyJ.SECRET.sig")

    monkeypatch.setattr(fetch_command, "fetch_data", broken)
    path = manifest(tmp_path, [{"name": "d", "uri": "http://127.0.0.1:9/x", "sha256": "a" * 64}])
    capsys.readouterr()
    assert main(["fetch", str(path)]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "jwt=REDACTED" in err and "SECRET" not in err and "pa55" not in err, err


def test_the_attestation_and_a_tracker_record_no_credentials(tmp_path, capsys):
    """The attestation's data URIs and a tracker's saved error go through the same redaction."""
    import socket

    from runner.progress import StderrProgress
    from runner.provenance import data_uri
    from runner.runs.record import RunRecord
    from runner.trackers.track import Destination, track_run

    assert data_uri("https://h/x.bin?versionId=3&sig=S1G") == f"https://h/x.bin?versionId=3&sig={REDACTED}"
    with socket.socket() as s:  # a port nothing listens on: the tracker's error quotes its URL
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "runs" / "20250101T000000Z-cccccc"
    (run / "outputs").mkdir(parents=True)
    RunRecord(run_id=run.name, name="x", status="succeeded", manifest="/m", manifest_sha256="a", plan_digest="b",
              started_on="2025-01-01T00:00:00Z").save(run / "run.json")
    capsys.readouterr()
    state = track_run(run, Destination(f"http://me:S3CRETPW@127.0.0.1:{port}", "e"), StderrProgress())
    err = capsys.readouterr().err
    assert state.state == "pending" and state.error and "S3CRETPW" not in state.error, state.error
    assert "S3CRETPW" not in err and "S3CRETPW" not in (run / "run.json").read_text(), err
    assert f"http://{REDACTED}@127.0.0.1:{port}" in (run / "run.json").read_text()
