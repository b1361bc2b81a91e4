"""Checks of a statement that several test modules make: strict parsing by the official bindings, portability."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest


def assert_strictly_valid(statement: dict[str, Any]) -> None:
    """Statement and predicate parsed with no unknown field allowed, then validated by the bindings."""
    json_format = pytest.importorskip("google.protobuf.json_format")
    statement_pb2 = pytest.importorskip("in_toto_attestation.v1.statement_pb2")
    provenance_pb2 = pytest.importorskip("in_toto_attestation.predicates.provenance.v1.provenance_pb2")
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    text = json.dumps(statement)
    parsed = json_format.Parse(text, statement_pb2.Statement())  # strict: ignore_unknown_fields=False
    Statement.copy_from_pb(parsed).validate()
    predicate = json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())
    definition = predicate.build_definition
    assert definition.build_type and definition.external_parameters
    for descriptor in [*definition.resolved_dependencies, *predicate.run_details.byproducts,
                       *predicate.run_details.builder.builder_dependencies]:
        ResourceDescriptor.copy_from_pb(descriptor).validate()
    assert predicate.run_details.builder.id


def assert_portable(statement: dict[str, Any], *host_paths: str) -> None:
    """No relative file: URIs and no host paths anywhere in the statement."""
    text = json.dumps(statement)
    for path in host_paths:
        assert path not in text, f"host path {path} recorded"
    uris = re.findall(r'"(?:uri|downloadLocation)": "([^"]*)"', text)
    assert not [u for u in uris if u.startswith("file:")], uris
