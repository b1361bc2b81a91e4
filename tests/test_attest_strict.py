"""The provenance parses with the official in-toto attestation protobuf bindings, strictly.

`google.protobuf.json_format.Parse` without ignore_unknown_fields refuses any field the SLSA v1
and in-toto Statement v1 messages do not define: what Go's and Python's strict verifiers do.
"""

from __future__ import annotations

import pytest

from runner.attest.samples import sample_facts, sample_subjects
from runner.attest.statement import build_statement
from statementcheck import assert_strictly_valid

json_format = pytest.importorskip("google.protobuf.json_format")
statement_pb2 = pytest.importorskip("in_toto_attestation.v1.statement_pb2")
provenance_pb2 = pytest.importorskip("in_toto_attestation.predicates.provenance.v1.provenance_pb2")


def test_sample_statement_parses_strictly() -> None:
    assert_strictly_valid(build_statement(sample_subjects(3), sample_facts()))


def test_a_vendor_field_is_refused_by_the_strict_parser() -> None:
    """Control: the bindings do refuse what the old statements carried (runDetails.xrun_metrics)."""
    statement = build_statement(sample_subjects(1), sample_facts())
    statement["predicate"]["runDetails"]["xrun_metrics"] = {}
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())


def test_purls_are_written_by_packageurl() -> None:
    from packageurl import PackageURL

    from runner.build.bootstrap import DebPackage
    from runner.provenance import purl

    deb = DebPackage("python3-numpy", "1:1.24.2-1+b1", "amd64").purl
    assert PackageURL.from_string(deb).version == "1:1.24.2-1+b1"
    assert deb == PackageURL(type="deb", namespace="debian", name="python3-numpy", version="1:1.24.2-1+b1",
                             qualifiers={"arch": "amd64"}).to_string()
    assert purl("generic", "docker-engine", "20.10.24+dfsg1") == PackageURL(
        type="generic", name="docker-engine", version="20.10.24+dfsg1").to_string()
