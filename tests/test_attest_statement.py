"""The statement: exact in-toto/SLSA shape, the decoupling contract, and the schema."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from runner.attest.samples import sample_facts, sample_subjects
from runner.attest.statement import (
    BUILD_TYPE,
    ResourceDescriptor,
    Subject,
    build_statement,
    builder_id_for_host,
    parse_rfc3339,
    parse_statement,
    rfc3339,
    statement_problems,
)

UTC = dt.timezone.utc
FINISHED = dt.datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)
Z_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def _statement(**changes) -> dict:
    return build_statement(sample_subjects(3), dataclasses.replace(sample_facts(finished_on=FINISHED), **changes))


def test_statement_and_predicate_types_are_exact() -> None:
    st = _statement()
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert list(st) == ["_type", "subject", "predicateType", "predicate"]


def test_subjects_are_sorted_names_with_sha256() -> None:
    st = build_statement([Subject("b.txt", "b" * 64), Subject("a/x.bin", "a" * 64)], sample_facts())
    assert st["subject"] == [{"name": "a/x.bin", "digest": {"sha256": "a" * 64}},
                             {"name": "b.txt", "digest": {"sha256": "b" * 64}}]


def test_external_parameters_are_the_manifest_and_its_digest_only() -> None:
    facts = sample_facts()
    definition = _statement()["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {"manifest": facts.manifest,
                                                "manifestDigest": {"sha256": facts.manifest_sha256}}
    assert not set(definition["externalParameters"]) & set(definition["internalParameters"])
    assert definition["internalParameters"] == facts.internal


def test_run_details() -> None:
    run = _statement()["predicate"]["runDetails"]
    assert run["builder"]["id"] == "https://xrun.dev/builders/host/v1/ci-runner-1"
    assert run["builder"]["version"] == {"xrun": "0.1.0"}
    assert [d["name"] for d in run["builder"]["builderDependencies"]] == ["xrun", "docker-engine", "container-runtime"]
    assert run["metadata"] == {"invocationId": sample_facts().invocation_id,
                               "startedOn": "2026-11-23T10:03:00Z", "finishedOn": "2026-11-23T10:15:00Z"}
    assert [b["name"] for b in run["byproducts"]] == ["logs/run.log", "run.json"]


def test_no_vendor_fields_xrun_values_in_internal_parameters() -> None:
    """Strict SLSA parsers refuse unknown fields: xrun's values sit in internalParameters, none in runDetails."""
    st = _statement()
    run = st["predicate"]["runDetails"]
    assert set(run) <= {"builder", "metadata", "byproducts"}
    internal = st["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["hermetic"] is True and internal["hardwareMismatch"] == []
    assert "runsDir" not in internal
    assert "xrun_" not in json.dumps(st)


def test_resolved_dependency_names_and_uris() -> None:
    deps = {d["name"]: d for d in _statement()["predicate"]["buildDefinition"]["resolvedDependencies"]}
    base_uri = deps["base-image"]["uri"]
    assert base_uri.startswith("pkg:docker/") and base_uri.endswith("?platform=linux/amd64")
    assert deps["wheel/package0"]["uri"] == "pkg:pypi/package0@1.0.0"
    assert deps["wheel/package0"]["downloadLocation"].startswith("https://")
    assert set(deps["code"]["digest"]) == {"sha256", "gitCommit"}
    assert {"image", "lockfile", "data/iris"} <= set(deps)


def test_resource_descriptor_to_json_is_camel_case_and_omits_empty_fields() -> None:
    rd = ResourceDescriptor(name="x", uri="pkg:pypi/x@1", digest={"sha256": "0" * 64}, annotations={"k": 1},
                            download_location="https://example.org/x.whl", media_type="application/zip",
                            content=b"hi")
    assert rd.to_json() == {"name": "x", "uri": "pkg:pypi/x@1", "digest": {"sha256": "0" * 64}, "content": "aGk=",
                            "downloadLocation": "https://example.org/x.whl", "mediaType": "application/zip",
                            "annotations": {"k": 1}}
    assert ResourceDescriptor(uri="pkg:generic/a@1").to_json() == {"uri": "pkg:generic/a@1"}


def test_timestamps_are_rfc3339_utc_with_z() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    assert rfc3339(dt.datetime(2026, 11, 23, 11, 0, tzinfo=cet)) == "2026-11-23T10:00:00Z"
    assert rfc3339(dt.datetime(2026, 11, 23, 10, 0, 0, 250000, tzinfo=UTC)) == "2026-11-23T10:00:00.25Z"
    meta = _statement()["predicate"]["runDetails"]["metadata"]
    assert Z_TIME.match(meta["startedOn"]) and Z_TIME.match(meta["finishedOn"])


@pytest.mark.parametrize("text, expected", [
    ("2026-11-23T10:15:00Z", dt.datetime(2026, 11, 23, 10, 15, tzinfo=UTC)),
    ("2026-11-23T10:15:00.5Z", dt.datetime(2026, 11, 23, 10, 15, 0, 500000, tzinfo=UTC)),
    ("2026-11-23t11:15:00+01:00", dt.datetime(2026, 11, 23, 10, 15, tzinfo=UTC)),
    ("2026-11-23T10:15:60Z", dt.datetime(2026, 11, 23, 10, 15, 59, tzinfo=UTC)),
])
def test_parse_rfc3339(text: str, expected: dt.datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("text", ["2026-11-23 10:15:00", "2026-11-23T10:15:00", "yesterday", None])
def test_parse_rfc3339_rejects(text) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_builder_id_for_host() -> None:
    assert builder_id_for_host("CI-Runner-1.example.org.") == "https://xrun.dev/builders/host/v1/ci-runner-1.example.org"
    assert builder_id_for_host("") == "https://xrun.dev/builders/host/v1/unknown"
    assert builder_id_for_host("a b/c") == "https://xrun.dev/builders/host/v1/a%20b%2Fc"


# --- contract violations are caught before anything is signed ------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"internal": {"manifest": {}}}, "repeat external keys: manifest"),
    ({"started_on": dt.datetime(2026, 1, 1)}, "timezone-aware"),
    ({"started_on": FINISHED + dt.timedelta(hours=1)}, "before started_on"),
    ({"manifest_sha256": "ABC"}, "manifest_sha256"),
    ({"builder_id": "ci-runner-1"}, "not a URI"),
    ({"invocation_id": ""}, "invocation_id"),
    ({"byproducts": (ResourceDescriptor(name="host", annotations={"cpu": 4}),)}, "needs a uri, a digest or content"),
    ({"dependencies": (ResourceDescriptor(name="code", digest={"sha256": "XYZ"}),)}, "lowercase hex"),
    ({"dependencies": (ResourceDescriptor(name="a", uri="pkg:x/a@1"), ResourceDescriptor(name="a", uri="pkg:x/b@1"))},
     "used twice"),
    ({"manifest": {"when": dt.date(2026, 1, 1)}}, "not plain JSON"),
    ({"manifest": {"lr": float("nan")}}, "not plain JSON"),
])
def test_contract_violations_raise(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _statement(**changes)


@pytest.mark.parametrize("subjects, message", [
    ([], "no subjects"),
    ([Subject("a", "a" * 64), Subject("a", "b" * 64)], "appears twice"),
    ([Subject("a", "A" * 64)], "lowercase hex"),
    ([Subject("", "a" * 64)], "empty name"),
])
def test_bad_subjects_raise(subjects: list[Subject], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_statement(subjects, sample_facts())


# --- the schema ----------------------------------------------------------------------------------

def test_built_statement_matches_the_schema() -> None:
    assert statement_problems(_statement()) == []


def _mutated(mutate) -> list[str]:
    st = copy.deepcopy(_statement())
    mutate(st)
    return statement_problems(st)


@pytest.mark.parametrize("mutate, where", [
    (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1.0"), "predicateType"),
    (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
    (lambda s: s.update(subject=[]), "subject"),
    (lambda s: s["subject"][0].pop("digest"), "subject[0]"),
    (lambda s: s["subject"][0]["digest"].update(sha256="xyz"), "subject[0].digest.sha256"),
    (lambda s: s["predicate"]["buildDefinition"]["externalParameters"].update(extra=1),
     "predicate.buildDefinition.externalParameters"),
    (lambda s: s["predicate"]["buildDefinition"]["internalParameters"].update(manifestDigest={}),
     "predicate.buildDefinition.internalParameters"),
    (lambda s: s["predicate"]["buildDefinition"].pop("buildType"), "predicate.buildDefinition"),
    (lambda s: s["predicate"]["runDetails"]["builder"].update(version="0.1.0"), "predicate.runDetails.builder.version"),
    (lambda s: s["predicate"]["runDetails"]["metadata"].update(finishedOn="2026-11-23T10:15:00+00:00"),
     "predicate.runDetails.metadata.finishedOn"),
    (lambda s: s["predicate"]["buildDefinition"]["resolvedDependencies"].append({"name": "x"}),
     "predicate.buildDefinition.resolvedDependencies[45]"),
    (lambda s: s["predicate"]["runDetails"].pop("builder"), "predicate.runDetails"),
])
def test_schema_rejects(mutate, where: str) -> None:
    problems = _mutated(mutate)
    assert problems and any(p.startswith(where + ":") for p in problems), problems


def test_schema_refuses_fields_slsa_v1_does_not_have() -> None:
    assert _mutated(lambda s: s["predicate"]["runDetails"].update(xrun_metrics={})) != []
    assert _mutated(lambda s: s["predicate"]["runDetails"]["builder"].update(other=1)) != []
    assert _mutated(lambda s: s["predicate"].update(extra=1)) != []


def test_other_build_types_keep_their_own_external_parameters() -> None:
    def other(s: dict) -> None:
        s["predicate"]["buildDefinition"]["buildType"] = "https://example.org/other/v1"
        s["predicate"]["buildDefinition"]["externalParameters"] = {"repository": "x"}
    assert _mutated(other) == []


def test_schema_file_is_valid_draft_2020_12() -> None:
    import jsonschema

    from runner.resources import resource_dir
    for name in ("statement.schema.json", "policy.schema.json"):
        schema = json.loads((resource_dir("schemas") / name).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


# --- strict payload parsing ----------------------------------------------------------------------

@pytest.mark.parametrize("payload, message", [
    (b'{"a":1,"a":2}', "repeats the key 'a'"),
    (b'{"a":NaN}', "NaN"),
    (b"\xff{}", "not UTF-8"),
    (b"[1]", "not a JSON object"),
    (b"{", "not JSON"),
])
def test_parse_statement_is_strict(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_statement(payload)


@pytest.mark.parametrize("subject", [
    {"name": "m", "digest": {"sha256": "a" * 64}},
    {"name": "m", "digest": {"sha256": "a" * 64, "sha512": "b" * 128}},
    {"name": "m", "digest": {"sha256": "a" * 64}, "annotations": {"x": 1}},
    {"name": "m", "digest": {"sha256": "A" * 64}},
    {"name": "m", "digest": {"sha256": "a" * 64 + "\n"}},
    {"name": "", "digest": {"sha256": "a" * 64}},
    {"name": 3, "digest": {"sha256": "a" * 64}},
    {"name": "m", "uri": "pkg:x/y@1"},
    {"name": "m", "digest": {}},
    {"digest": {"sha256": "a" * 64}},
    "model.pkl",
])
def test_fast_subject_path_gives_the_schemas_verdict(subject) -> None:
    import jsonschema

    from runner.resources import resource_dir
    schema = json.loads((resource_dir("schemas") / "statement.schema.json").read_text())
    st = _statement()
    st["subject"] = [st["subject"][0], subject, st["subject"][1]]
    reference = list(jsonschema.Draft202012Validator(schema).iter_errors(st))
    problems = statement_problems(st)
    assert bool(problems) == bool(reference)
    assert all(p.startswith("subject[1]") for p in problems)


def test_buildtype_doc_shows_the_base_image_purl_as_xrun_writes_it() -> None:
    from runner.provenance import purl

    written = purl("docker", "python", "sha256:" + "a" * 64, "library", {"platform": "linux/amd64"})
    doc = (Path(__file__).resolve().parent.parent / "docs" / "buildtype.md").read_text()
    assert "?platform=linux/amd64" in written and "?platform=linux/amd64&repository_url=" in doc
    assert "%2F" not in doc
