"""Policies: each rule passing and failing, loading with clear errors, and policy inside verify."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner.attest import (
    build_statement,
    generate_keypair,
    load_policy,
    load_signer,
    verify_attestation,
    write_attestation,
)
from runner.attest.policy import (
    AllowedBaseImages,
    AllowedBuilders,
    AllowedHardwareClasses,
    HardwareMatched,
    ManifestDigest,
    MaxAge,
    Policy,
    RequiredData,
    format_duration,
    parse_duration,
)
from runner.attest.samples import BASE_DIGEST, DATA_DIGEST, MANIFEST_SHA256, sample_facts, sample_subjects
from runner.errors import EXIT_USAGE, ManifestError, UsageError
from runner.hardware import catalog

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
FINISHED = NOW - timedelta(days=2)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def statement() -> dict:
    return build_statement(sample_subjects(2), sample_facts(finished_on=FINISHED))


def _edit(statement: dict, edit) -> dict:
    changed = copy.deepcopy(statement)
    edit(changed)
    return changed


def _deps(statement: dict) -> list[dict]:
    return statement["predicate"]["buildDefinition"]["resolvedDependencies"]


# --- each rule -----------------------------------------------------------------------------------

@pytest.mark.parametrize("patterns, ok", [
    (("https://xrun.dev/builders/host/v1/ci-runner-1",), True),
    (("https://xrun.dev/builders/host/v1/ci-*",), True),
    (("https://xrun.dev/builders/host/v1/ci-runner-[0-9]",), True),
    (("https://xrun.dev/builders/host/v1/laptop", "https://xrun.dev/builders/host/v1/*"), True),
    (("https://xrun.dev/builders/host/v1/ci-runner",), False),  # exact ids are not prefixes
    (("https://xrun.dev/builders/host/v1/laptop-*",), False),
])
def test_allowed_builders(statement: dict, patterns: tuple, ok: bool) -> None:
    check = AllowedBuilders(patterns).check(statement)
    assert check.ok is ok and check.name == "policy: builder"
    assert "ci-runner-1" in check.detail


def test_allowed_builders_without_builder(statement: dict) -> None:
    edited = _edit(statement, lambda s: s["predicate"]["runDetails"]["builder"].pop("id"))
    assert not AllowedBuilders(("*",)).check(edited).ok


def test_allowed_base_images(statement: dict) -> None:
    assert AllowedBaseImages((f"sha256:{BASE_DIGEST}",)).check(statement).ok
    check = AllowedBaseImages(("sha256:" + "0" * 64,)).check(statement)
    assert not check.ok and BASE_DIGEST in check.detail
    missing = _edit(statement, lambda s: _deps(s).pop(0))
    assert "found 0" in AllowedBaseImages((f"sha256:{BASE_DIGEST}",)).check(missing).detail


def test_required_data(statement: dict) -> None:
    assert RequiredData("iris", f"sha256:{DATA_DIGEST}").check(statement).ok
    wrong = RequiredData("iris", "sha256:" + "1" * 64).check(statement)
    assert not wrong.ok and f"recorded sha256:{DATA_DIGEST}" in wrong.detail and wrong.name == "policy: data iris"
    absent = RequiredData("mnist", f"sha256:{DATA_DIGEST}").check(statement)
    assert not absent.ok and "no data item named 'mnist'" in absent.detail
    other_algorithm = RequiredData("iris", "md5:" + "2" * 32).check(statement)
    assert not other_algorithm.ok and "without a md5 digest (has: sha256)" in other_algorithm.detail


def test_manifest_digest(statement: dict) -> None:
    assert ManifestDigest(f"sha256:{MANIFEST_SHA256}").check(statement).ok
    check = ManifestDigest("sha256:" + "3" * 64).check(statement)
    assert not check.ok and MANIFEST_SHA256 in check.detail


def test_allowed_hardware_classes(statement: dict) -> None:
    assert AllowedHardwareClasses(("cpu-2", "gpu-1")).check(statement).ok
    assert not AllowedHardwareClasses(("gpu-1",)).check(statement).ok


def test_hardware_matched() -> None:
    matched = build_statement(sample_subjects(1), sample_facts())
    assert HardwareMatched().check(matched).ok
    mismatched = build_statement(sample_subjects(1), sample_facts(hardware_mismatch=["memory: 8 GiB < 16 GiB"]))
    check = HardwareMatched().check(mismatched)
    assert not check.ok and "8 GiB < 16 GiB" in check.detail
    unrecorded = _edit(matched, lambda s: s["predicate"]["buildDefinition"]["internalParameters"].pop(
        "hardwareMismatch"))
    assert not HardwareMatched().check(unrecorded).ok  # fail closed


@pytest.mark.parametrize("limit, ok", [("7d", True), ("1w", True), ("2d", True), ("1d23h", False), ("12h", False)])
def test_max_age(statement: dict, limit: str, ok: bool) -> None:
    check = MaxAge(parse_duration(limit), NOW, limit).check(statement)
    assert check.ok is ok and "2d ago" in check.detail


def test_max_age_rejects_the_future_and_missing_times(statement: dict) -> None:
    future = build_statement(sample_subjects(1), sample_facts(finished_on=NOW + timedelta(hours=1)))
    check = MaxAge(timedelta(days=7), NOW, "7d").check(future)
    assert not check.ok and "in the future" in check.detail
    slightly = build_statement(sample_subjects(1), sample_facts(finished_on=NOW + timedelta(minutes=2)))
    assert MaxAge(timedelta(days=7), NOW, "7d").check(slightly).ok  # clock skew
    no_time = _edit(statement, lambda s: s["predicate"]["runDetails"]["metadata"].pop("finishedOn"))
    assert not MaxAge(timedelta(days=7), NOW, "7d").check(no_time).ok


@pytest.mark.parametrize("text, expected", [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)),
                                            ("1d12h", timedelta(hours=36)), ("90m", timedelta(minutes=90)),
                                            ("2w", timedelta(weeks=2)), ("30s", timedelta(seconds=30))])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "0d", "7 d", "-1d", "1y"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(timedelta(days=3, hours=4, minutes=5)) == "3d 4h"
    assert format_duration(timedelta(seconds=40)) == "40s"


def test_policy_rules_order_and_selection() -> None:
    policy = Policy("p", allowed_builders=("*",), allowed_base_images=(f"sha256:{BASE_DIGEST}",),
                    required_data=(("iris", f"sha256:{DATA_DIGEST}"),), manifest_digest=f"sha256:{MANIFEST_SHA256}",
                    allowed_hardware_classes=("cpu-2",), max_age="7d")
    assert [r.name for r in policy.rules(NOW)] == [
        "policy: builder", "policy: base image", "policy: data iris", "policy: manifest digest",
        "policy: hardware class", "policy: hardware match", "policy: max age"]
    relaxed = dataclasses.replace(policy, allow_hardware_mismatch=True)
    assert "policy: hardware match" not in [r.name for r in relaxed.rules(NOW)]
    only_match = Policy("p", allow_hardware_mismatch=False)
    assert [r.name for r in only_match.rules(NOW)] == ["policy: hardware match"]
    assert Policy("p").rules(NOW) == []


# --- loading -------------------------------------------------------------------------------------

def test_example_policy_loads() -> None:
    policy = load_policy(REPO / "examples" / "policy.yaml")
    assert policy.allowed_builders == ("https://xrun.dev/builders/host/v1/ci-runner-*",)
    assert policy.required_data[0][0] == "iris" and policy.max_age == "30d"
    assert policy.allow_hardware_mismatch is False
    assert set(policy.allowed_hardware_classes) <= set(catalog())


def test_verify_refuses_a_policy_naming_an_unknown_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    policy = tmp_path / "policy.yaml"
    policy.write_text(HEAD + "allowedHardwareClasses: [gpu-1xa100]\n")
    attestation = tmp_path / "provenance.intoto.jsonl"
    attestation.write_text("{}\n")
    assert main(["verify", str(attestation), "--policy", str(policy), "--allow-unsigned"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "gpu-1xa100" in err and "gpu-1x-a100-80gb" in err and "Traceback" not in err


def test_json_policy_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"apiVersion": "xrun/v1", "kind": "Policy", "maxAge": "12h"}))
    assert load_policy(path).max_age == "12h"


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as exc:
        load_policy(path)
    assert exc.value.exit_code == EXIT_USAGE
    return [exc.value.message, *exc.value.lines]


HEAD = "apiVersion: xrun/v1\nkind: Policy\n"


@pytest.mark.parametrize("body, expected", [
    ("allowedBuilder: [x]\n", ":3: allowedBuilder: unknown field; did you mean allowedBuilders?"),
    ("rules: [x]\n", ":3: rules: unknown field; known fields: apiVersion, kind"),
    ("allowedBaseImages: [sha256:abc]\n", ":3: allowedBaseImages[0]: 'sha256:abc' does not match"),
    ("requiredData:\n  iris: abc\n", ":4: requiredData.iris: 'abc' does not match"),
    ("manifestDigest: 42\n", ":3: manifestDigest: 42 is not of type 'string'"),
    ("maxAge: 7 days\n", ":3: maxAge: '7 days' does not match"),
    ("maxAge: 0d\n", ":3: maxAge: the duration '0d' is zero"),
    ("allowedHardwareClasses: []\n", ":3: allowedHardwareClasses: [] should be non-empty"),
    ("allowHardwareMismatch: maybe\n", ":3: allowHardwareMismatch: 'maybe' is not of type 'boolean'"),
    ("allowedHardwareClasses: [cpu-2, gpu-1xa100]\n",
     ":3: allowedHardwareClasses[1]: unknown hardware class 'gpu-1xa100'; did you mean gpu-1x-a100-80gb?"),
])
def test_policy_errors_name_file_line_and_field(tmp_path: Path, body: str, expected: str) -> None:
    problems = _problems(tmp_path, HEAD + body)
    assert problems[0] == f"{tmp_path / 'policy.yaml'}: invalid policy (1 problem)"
    assert problems[1].startswith(str(tmp_path / "policy.yaml") + expected), problems


def test_policy_hints_say_how_to_fix(tmp_path: Path) -> None:
    problems = _problems(tmp_path, HEAD + "maxAge: soon\n")
    assert "e.g. 7d, 12h" in problems[1] or "such as 7d" in problems[1]


@pytest.mark.parametrize("text, expected", [
    ("kind: Policy\n", "'apiVersion' is a required property"),
    ("apiVersion: xrun/v2\nkind: Policy\n", "apiVersion: 'xrun/v1' was expected"),
    ("- a\n- b\n", "must be a mapping"),
    (HEAD + "maxAge: 7d\nmaxAge: 8d\n", ":4: maxAge: duplicate key"),
    (HEAD + "allowedHardwareClasses: &c [cpu-1]\ndescription: *c\n", "anchors/aliases are not allowed"),
    (HEAD + "allowedBuilders: [x\n", "YAML syntax error"),
    ("", "the policy file is empty"),
])
def test_policy_structure_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert any(expected in line for line in _problems(tmp_path, text))


def test_missing_policy_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such policy file"):
        load_policy(tmp_path / "nope.yaml")


# --- policy within verify ------------------------------------------------------------------------

def _signed_run(tmp_path: Path, **facts_changes) -> tuple[Path, Path, Path]:
    key, pub = generate_keypair("ed25519", tmp_path / "keys")
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights")
    import hashlib

    from runner.attest.statement import Subject
    facts = dataclasses.replace(sample_facts(finished_on=FINISHED), **facts_changes)
    statement = build_statement([Subject("model.pkl", hashlib.sha256(b"weights").hexdigest())], facts)
    jsonl = tmp_path / "provenance.intoto.jsonl"
    write_attestation(statement, load_signer(key), jsonl)
    return jsonl, pub, model


def _policy_file(tmp_path: Path, **rules) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"apiVersion": "xrun/v1", "kind": "Policy", **rules}))
    return path


def test_policy_passes_within_verify(tmp_path: Path) -> None:
    jsonl, pub, model = _signed_run(tmp_path)
    policy = load_policy(_policy_file(
        tmp_path, allowedBuilders=["https://xrun.dev/builders/host/v1/ci-*"],
        allowedBaseImages=[f"sha256:{BASE_DIGEST}"],
        requiredData={"iris": f"sha256:{DATA_DIGEST}"}, manifestDigest=f"sha256:{MANIFEST_SHA256}",
        allowedHardwareClasses=["cpu-2"], maxAge="7d"))
    verdict = verify_attestation(jsonl, [pub], [model], policy, NOW)
    assert verdict.ok, verdict.lines()
    assert len([c for c in verdict.checks if c.name.startswith("policy: ")]) == 7


@pytest.mark.parametrize("rules, failing", [
    ({"allowedBuilders": ["https://xrun.dev/builders/host/v1/laptop"]}, "policy: builder"),
    ({"allowedBaseImages": ["sha256:" + "0" * 64]}, "policy: base image"),
    ({"requiredData": {"iris": "sha256:" + "0" * 64}}, "policy: data iris"),
    ({"manifestDigest": "sha256:" + "0" * 64}, "policy: manifest digest"),
    ({"allowedHardwareClasses": ["gpu-8x-h100-80gb"]}, "policy: hardware class"),
    ({"maxAge": "1d"}, "policy: max age"),
])
def test_each_policy_rule_can_fail_verify(tmp_path: Path, rules: dict, failing: str) -> None:
    jsonl, pub, model = _signed_run(tmp_path)
    verdict = verify_attestation(jsonl, [pub], [model], load_policy(_policy_file(tmp_path, **rules)), NOW)
    assert not verdict.ok and verdict.exit_code == 3
    assert [c.name for c in verdict.checks if not c.ok] == [failing]


def test_policy_is_not_evaluated_on_an_unauthenticated_payload(tmp_path: Path) -> None:
    jsonl, _, model = _signed_run(tmp_path)
    _, stranger = generate_keypair("ed25519", tmp_path / "stranger")
    policy = load_policy(_policy_file(tmp_path, maxAge="7d"))
    verdict = verify_attestation(jsonl, [stranger], [model], policy, NOW)
    age = next(c for c in verdict.checks if c.name == "policy: max age")
    assert not age.ok and "not authenticated" in age.detail


def test_mismatched_hardware_run_fails_a_hardware_policy(tmp_path: Path) -> None:
    facts = sample_facts(finished_on=FINISHED, hardware_mismatch=["gpus: 0 < 1"])
    jsonl, pub, model = _signed_run(tmp_path, internal=facts.internal)
    policy = load_policy(_policy_file(tmp_path, allowedHardwareClasses=["cpu-2"]))
    verdict = verify_attestation(jsonl, [pub], [model], policy, NOW)
    assert [c.name for c in verdict.checks if not c.ok] == ["policy: hardware match"]
    relaxed = load_policy(_policy_file(tmp_path, allowedHardwareClasses=["cpu-2"], allowHardwareMismatch=True))
    assert verify_attestation(jsonl, [pub], [model], relaxed, NOW).ok
