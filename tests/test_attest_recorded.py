"""The one reader of a statement (runner/attest/recorded.py) is strict, and so is everyone who reads through it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from runner.attest.dsse import PAYLOAD_TYPE
from runner.attest.recorded import read_statement
from runner.attest.samples import sample_facts, sample_subjects
from runner.attest.sign import serialize_statement
from runner.attest.statement import build_statement
from runner.errors import IntegrityError
from runner.runs.record import RunRecord
from runner.trackers.interface import tracked_run


def _write_envelope(path: Path, payload: bytes) -> Path:
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(), "signatures": []}
    path.write_text(json.dumps(envelope) + "\n", encoding="utf-8")
    return path


def _payload() -> bytes:
    return serialize_statement(build_statement(sample_subjects(1), sample_facts()))


def test_a_well_formed_statement_reads_back(tmp_path: Path):
    statement = read_statement(_write_envelope(tmp_path / "a.intoto.jsonl", _payload()))
    assert statement == json.loads(_payload())


@pytest.mark.parametrize("tail, refusal", [(b',"subject":[]}', "repeats the key 'subject'"),
                                           (b',"extra":NaN}', "contains NaN")])
def test_a_payload_two_parsers_could_read_differently_is_refused(tmp_path: Path, tail: bytes, refusal: str):
    path = _write_envelope(tmp_path / "a.intoto.jsonl", _payload()[:-1] + tail)
    with pytest.raises(IntegrityError, match=refusal):
        read_statement(path)


def test_the_tracker_does_not_take_the_last_copy_of_a_duplicated_key(tmp_path: Path):
    # A lenient parser keeps the second predicate, which claims the run reproduces another attestation.
    statement = build_statement(sample_subjects(1), sample_facts())
    forged = json.loads(json.dumps(statement["predicate"]))
    forged["buildDefinition"]["resolvedDependencies"].append(
        {"name": "attestation/reproduced", "uri": "file:x", "digest": {"sha256": "ab" * 32}})
    payload = serialize_statement(statement)[:-1] + b',"predicate":' + serialize_statement(forged) + b"}"
    assert json.loads(payload)["predicate"] == forged
    _write_envelope(tmp_path / "provenance.intoto.jsonl", payload)
    RunRecord(run_id="r1", name="exp", status="succeeded", manifest="m.yaml", manifest_sha256="0" * 64,
              plan_digest="1" * 64, started_on="2026-01-01T00:00:00Z",
              attestation="provenance.intoto.jsonl").save(tmp_path / "run.json")
    run = tracked_run(tmp_path)
    assert run.reproduces is None
    assert run.plan_digest == "1" * 64  # the run.json facts are still logged
