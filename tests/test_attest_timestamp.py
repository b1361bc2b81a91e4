"""RFC 3161 trusted time: a real TSA (`openssl ts -reply` on 127.0.0.1, its own CA) countersigns the
signature; xrun and cosign 3 check the timestamp and refuse tampered, foreign and misplaced ones."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cosignbin import cosign_from_debian, debian_version
from runner.attest import generate_keypair, load_signer
from runner.attest.policy import Policy
from runner.attest.samples import sample_facts
from runner.attest.sign import write_attestation
from runner.attest.statement import Subject, build_statement
from runner.attest.timestamp import load_trusted_root, load_tsa_chain
from runner.attest.verify import verify_attestation
from runner.cli import main
from runner.errors import EnvironmentProblem, UsageError
from tsaserver import TsaServer


@pytest.fixture(scope="module")
def tsa(tmp_path_factory):
    server = TsaServer(tmp_path_factory.mktemp("tsa")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other_tsa(tmp_path_factory):
    server = TsaServer(tmp_path_factory.mktemp("tsa-other"), "another TSA").start()
    yield server
    server.stop()


def _attest(tmp_path: Path, tsa_url: str | None, name: str = "p", weights: bytes = b"weights") -> dict[str, Path]:
    keys = tmp_path / "keys"
    if not (keys / "xrun.key").exists():
        generate_keypair("ecdsa-p256", keys)
    model = tmp_path / "model.pkl"
    model.write_bytes(weights)
    statement = build_statement([Subject("model.pkl", hashlib.sha256(weights).hexdigest())], sample_facts())
    write_attestation(statement, load_signer(keys / "xrun.key"), tmp_path / f"{name}.intoto.jsonl",
                      tmp_path / f"{name}.sigstore.json", tsa_url=tsa_url)
    return {"pub": keys / "xrun.pub", "model": model, "jsonl": tmp_path / f"{name}.intoto.jsonl",
            "bundle": tmp_path / f"{name}.sigstore.json", "dir": tmp_path}


@pytest.fixture()
def stamped(tmp_path, tsa):
    return _attest(tmp_path, tsa.url)


def _check(verdict, name):
    (found,) = [c for c in verdict.checks if c.name == name]
    return found


def _replies(bundle: Path) -> list[str]:
    material = json.loads(bundle.read_text())["verificationMaterial"]
    return [t["signedTimestamp"] for t in material["timestampVerificationData"]["rfc3161Timestamps"]]


def _with_replies(bundle: Path, replies: list[str], out: Path) -> Path:
    doc = json.loads(bundle.read_text())
    doc["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"] = [
        {"signedTimestamp": r} for r in replies]
    out.write_text(json.dumps(doc))
    return out


def test_the_bundle_carries_one_rfc3161_timestamp_in_the_v03_place(stamped, tsa):
    doc = json.loads(stamped["bundle"].read_text())
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert len(_replies(stamped["bundle"])) == 1
    assert tsa.requests >= 1


@pytest.mark.parametrize("trust", ["chain", "trusted_root"])
def test_xrun_verifies_the_timestamp_and_reports_the_signing_time(stamped, tsa, trust):
    tsas = ([load_tsa_chain(tsa.chain)] if trust == "chain"
            else load_trusted_root(tsa.write_trusted_root(stamped["dir"] / "trusted_root.json")))
    verdict = verify_attestation(stamped["bundle"], [stamped["pub"]], [stamped["model"]], tsas=tsas)
    assert verdict.ok, verdict.lines()
    assert "xrun test TSA" in _check(verdict, "timestamp").detail
    assert abs(verdict.timestamp.time - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert verdict.to_json()["timestamp"]["time"].endswith("Z")


def test_a_tampered_timestamp_is_rejected(stamped, tsa):
    der = bytearray(base64.b64decode(_replies(stamped["bundle"])[0]))
    der[-10] ^= 0x01  # inside the TSA's signature
    bundle = _with_replies(stamped["bundle"], [base64.b64encode(bytes(der)).decode()], stamped["dir"] / "t.json")
    verdict = verify_attestation(bundle, [stamped["pub"]], [], tsas=[load_tsa_chain(tsa.chain)])
    assert not verdict.ok
    assert not _check(verdict, "timestamp").ok
    assert _check(verdict, "signature").ok  # the DSSE signature itself is intact


def test_a_timestamp_from_another_tsa_is_rejected(tmp_path, tsa, other_tsa):
    att = _attest(tmp_path, other_tsa.url)
    verdict = verify_attestation(att["bundle"], [att["pub"]], [], tsas=[load_tsa_chain(tsa.chain)])
    assert not verdict.ok
    assert "no trusted TSA verifies it" in _check(verdict, "timestamp").detail


def test_a_timestamp_over_another_signature_is_rejected(tmp_path, tsa):
    first = _attest(tmp_path, tsa.url, "a", b"weights")
    second = _attest(tmp_path, tsa.url, "b", b"other weights")
    moved = _with_replies(second["bundle"], _replies(first["bundle"]), tmp_path / "moved.json")
    verdict = verify_attestation(moved, [second["pub"]], [], tsas=[load_tsa_chain(tsa.chain)])
    assert not verdict.ok
    assert "Mismatch between messages" in _check(verdict, "timestamp").detail


def test_a_tsa_that_is_down_fails_with_exit_4_and_writes_nothing(tmp_path, tsa):
    down = TsaServer(tmp_path / "down").start()
    url = down.url
    down.stop()
    with pytest.raises(EnvironmentProblem) as caught:
        _attest(tmp_path, url)
    assert caught.value.exit_code == 4 and url in caught.value.message
    assert not list(tmp_path.glob("p.*"))


def test_a_policy_can_require_a_timestamp_and_a_maximum_age(tmp_path, stamped, tsa):
    trust = [load_tsa_chain(tsa.chain)]
    policy = Policy.from_json({"timestamp": {"maxAge": "1d"}})
    assert verify_attestation(stamped["bundle"], [stamped["pub"]], [], policy, tsas=trust).ok
    later = datetime.now(timezone.utc) + timedelta(days=2)
    old = verify_attestation(stamped["bundle"], [stamped["pub"]], [], policy, later, tsas=trust)
    assert "older than 1d" in _check(old, "policy: timestamp age").detail and not old.ok
    plain = _attest(tmp_path / "plain", None)
    required = Policy.from_json({"timestamp": {"required": True}})
    missing = verify_attestation(plain["bundle"], [plain["pub"]], [], required, tsas=trust)
    assert not missing.ok and "no RFC 3161 timestamp" in _check(missing, "timestamp").detail
    untrusted = verify_attestation(stamped["bundle"], [stamped["pub"]], [], required)
    assert not untrusted.ok and "NOT CHECKED" in _check(untrusted, "timestamp").detail
    # Without a requirement an unchecked timestamp is reported but not a failure.
    assert verify_attestation(stamped["bundle"], [stamped["pub"]], []).ok


def test_trusted_root_without_tsas_is_a_usage_error(tmp_path):
    root = tmp_path / "trusted_root.json"
    root.write_text(json.dumps({"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}))
    with pytest.raises(UsageError, match="no timestampAuthorities"):
        load_trusted_root(root)


# --- cosign 3 ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cosign3() -> str:
    """cosign 3.x from Debian sid's package (Debian 13 ships 2.5)."""
    binary = cosign_from_debian("sid")
    version = debian_version(binary)
    if not version.startswith("3."):
        pytest.fail(f"Debian sid's cosign is {version}, not 3.x", pytrace=False)
    return binary


def _cosign3_cmd(cosign: str, att: dict[str, Path], root: Path, *, bundle: Path | None = None) -> list[str]:
    # cosign requires a transparency-log entry unless --insecure-ignore-tlog (cmd/cosign/cli/verify and
    # pkg/cosign/verify.go: WithTransparencyLog(1) whenever IgnoreTlog is false); xrun writes no Rekor
    # entry, so that one flag stays. --use-signed-timestamps then makes the RFC 3161 timestamp mandatory
    # and checks it against the TSA in the trusted root.
    return [cosign, "verify-blob-attestation", "--key", str(att["pub"]), "--bundle", str(bundle or att["bundle"]),
            "--trusted-root", str(root), "--use-signed-timestamps", "--insecure-ignore-tlog",
            "--type", "slsaprovenance1", str(att["model"])]


def test_cosign3_verifies_the_timestamp_against_the_trusted_root(cosign3, stamped, tsa):
    root = tsa.write_trusted_root(stamped["dir"] / "trusted_root.json")
    proc = subprocess.run(_cosign3_cmd(cosign3, stamped, root), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Verified OK" in proc.stderr + proc.stdout


def test_cosign3_refuses_a_timestamp_from_another_tsa_or_over_another_signature(cosign3, tmp_path, tsa, other_tsa):
    root = tsa.write_trusted_root(tmp_path / "trusted_root.json")
    foreign = _attest(tmp_path / "foreign", other_tsa.url)
    proc = subprocess.run(_cosign3_cmd(cosign3, foreign, root), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "timestamp" in proc.stderr
    first, second = _attest(tmp_path / "a", tsa.url, "a"), _attest(tmp_path / "b", tsa.url, "b", b"other")
    moved = _with_replies(second["bundle"], _replies(first["bundle"]), tmp_path / "moved.json")
    proc = subprocess.run(_cosign3_cmd(cosign3, second, root, bundle=moved), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "timestamp" in proc.stderr


def test_cosign3_without_the_insecure_flag_wants_a_transparency_log_entry(cosign3, stamped, tsa):
    """Records why one --insecure-* flag remains: cosign 3 demands a Rekor entry for every bundle."""
    root = tsa.write_trusted_root(stamped["dir"] / "trusted_root.json")
    argv = [a for a in _cosign3_cmd(cosign3, stamped, root) if a != "--insecure-ignore-tlog"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "transparency log" in proc.stderr
def test_cli_verify_reports_the_signing_time(stamped, tsa, capsys):
    code = main(["verify", str(stamped["bundle"]), "--key", str(stamped["pub"]), "--tsa-cert", str(tsa.chain),
                 "--artifact", str(stamped["model"]), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["timestamp"]["authority"].startswith("CN=xrun test TSA")


def test_cli_verify_refuses_a_timestamp_from_an_untrusted_tsa(tmp_path, other_tsa, tsa, capsys):
    att = _attest(tmp_path, other_tsa.url)
    code = main(["verify", str(att["bundle"]), "--key", str(att["pub"]), "--tsa-cert", str(tsa.chain)])
    assert code == 3
    assert "FAIL  timestamp" in capsys.readouterr().out




# --- a real run --------------------------------------------------------------------------------

@pytest.mark.docker
def test_xrun_run_with_tsa_timestamps_the_bundle_and_a_tsa_down_fails_it_with_exit_4(
        tmp_path, tsa, base_image, monkeypatch, capsys):
    from experiments import probe_experiment

    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XRUN_TSA_URL", raising=False)
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "keys")
    manifest = probe_experiment(tmp_path / "exp", base_image, seed=5)
    runs = tmp_path / "runs"
    assert main(["run", str(manifest), "--key", str(key), "--tsa", tsa.url, "--runs-dir", str(runs), "-q",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    bundle = Path(summary["bundle"])
    assert len(_replies(bundle)) == 1
    assert main(["verify", str(bundle), "--key", str(pub), "--tsa-cert", str(tsa.chain)]) == 0
    assert "PASS  timestamp: signed no later than" in capsys.readouterr().out

    down = TsaServer(tmp_path / "down").start()
    monkeypatch.setenv("XRUN_TSA_URL", down.url)  # the CI setting, without --tsa
    down.stop()
    assert main(["run", str(manifest), "--key", str(key), "--runs-dir", str(runs), "-q"]) == 4
    assert "the TSA at" in capsys.readouterr().err
    (failed,) = [d for d in runs.iterdir() if d.name != Path(summary["runDir"]).name and d.is_dir()]
    record = json.loads((failed / "run.json").read_text())
    assert record["status"] == "failed" and "TSA" in record["error"]
    assert not (failed / "provenance.intoto.jsonl").exists() and not (failed / "provenance.sigstore.json").exists()
    assert (failed / "outputs" / "probe.json").exists()  # the outputs stay; only the attestation is missing


def test_the_tsa_comes_from_the_flag_or_the_ci_setting_and_needs_a_signing_key():
    from runner.context import timestamp_authority

    env = {"XRUN_TSA_URL": "http://127.0.0.1:1/tsr"}
    assert timestamp_authority(None, True, env) == env["XRUN_TSA_URL"]
    assert timestamp_authority("https://tsa.example/", True, env) == "https://tsa.example/"
    assert timestamp_authority(None, False, env) is None  # the CI-wide setting skips unsigned runs
    with pytest.raises(UsageError, match="signing key"):
        timestamp_authority("https://tsa.example/", False, env)
    with pytest.raises(UsageError, match="not an http"):
        timestamp_authority("tsa.example", True, {})


def test_the_policy_schema_checks_the_timestamp_block(tmp_path):
    from runner.attest.policy import load_policy
    from runner.errors import ManifestError

    path = tmp_path / "policy.yaml"
    path.write_text("apiVersion: xrun/v1\nkind: Policy\ntimestamp: {maxAge: 30d}\n")
    policy = load_policy(path)
    assert policy.timestamp_required and policy.timestamp_requirement().max_age == timedelta(days=30)
    for bad, said in (("{maxAge: 0d}", "timestamp.maxAge: the duration '0d' is zero"),
                      ("{required: yes-please}", "timestamp.required"), ("{when: now}", "timestamp")):
        path.write_text(f"apiVersion: xrun/v1\nkind: Policy\ntimestamp: {bad}\n")
        with pytest.raises(ManifestError) as caught:
            load_policy(path)
        assert said in " ".join(caught.value.lines), caught.value.lines
