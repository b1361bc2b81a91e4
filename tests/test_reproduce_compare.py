"""Comparison logic of `xrun reproduce` (pure functions; the end-to-end path is in test_reproduce.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from runner.attest.recorded import RecordedRun, read_statement
from runner.errors import IntegrityError
from runner.reproduce import (
    Tolerance,
    changed_inputs,
    compare_metrics,
    compare_outputs,
    diff_fields,
    tolerance_for,
)


def test_tolerance_semantics():
    assert Tolerance(rtol=1e-6).accepts(1.0, 1.0 + 1e-9)
    assert not Tolerance().accepts(1.0, 1.0 + 1e-9)
    assert Tolerance(atol=0.1).accepts(0.0, 0.05)


def test_tolerance_precedence():
    spec = {"rtol": 1e-3, "keys": {"loss": {"atol": 1e-9}}}
    assert tolerance_for("loss", spec, None, None) == Tolerance(0.0, 1e-9)
    assert tolerance_for("acc", spec, None, None) == Tolerance(1e-3, 0.0)
    assert tolerance_for("acc", spec, 1e-6, None) == Tolerance(1e-6, 0.0)
    assert tolerance_for("acc", {}, None, None) is None


def test_metrics_within_tolerance_only_with_rtol():
    rec, now = {"loss": 0.5, "acc": 0.9}, {"loss": 0.5 + 1e-9, "acc": 0.9}
    assert not all(m.ok for m in compare_metrics(rec, now, {}, None, None))
    rows = compare_metrics(rec, now, {}, 1e-6, None)
    assert all(m.ok for m in rows)
    loss = next(m for m in rows if m.key == "loss")
    assert loss.abs_diff == pytest.approx(1e-9) and loss.rel_diff == pytest.approx(2e-9)


def test_output_states():
    rows = compare_outputs(
        {"same": "a", "diff": "b", "gone": "c", "m.json": "d"},
        {"same": "a", "diff": "x", "new": "y", "m.json": "e"},
        metrics_recorded={"m.json": {"v": 1.0}}, metrics_now={"m.json": {"v": 1.0 + 1e-12}},
        tolerances={}, rtol=1e-9, atol=None,
    )
    states = {r.path: r.state for r in rows}
    assert states == {"same": "identical", "diff": "different", "gone": "missing", "new": "new",
                      "m.json": "within-tolerance"}


def test_diff_fields_paths():
    a = {"seeds": {"global": 1}, "data": [{"sha256": "a"}], "name": "x"}
    b = {"seeds": {"global": 2}, "data": [{"sha256": "b"}], "name": "x"}
    assert diff_fields(a, b) == ["data[0].sha256", "seeds.global"]


def _statement(deps, cls="cpu-1", manifest=None):
    manifest = {**(manifest or {}), "hardware": {"class": cls}}
    return RecordedRun.from_statement(
        {"predicate": {"buildDefinition": {"resolvedDependencies": deps,
                                           "externalParameters": {"manifest": manifest,
                                                                  "manifestDigest": {"sha256": "m"}}},
                       "runDetails": {"builder": {"builderDependencies": []}, "byproducts": []}}})


def test_changed_inputs_names_each_dependency():
    old = _statement([{"name": "data/iris", "uri": "u", "digest": {"sha256": "1"}},
                      {"name": "code", "digest": {"sha256": "c"}}])
    new = _statement([{"name": "data/iris", "uri": "u", "digest": {"sha256": "2"}},
                      {"name": "code", "digest": {"sha256": "c"}}], cls="cpu-2")
    names = [c.name for c in changed_inputs(old, new)]
    assert names == ["data/iris", "hardware class"]


def test_a_users_env_key_does_not_hide_the_recorded_hardware_class():
    # The schema allows run.env: {xrun_hardware_class: …}; a depth-first search used to find it first.
    manifest = {"run": {"env": {"xrun_hardware_class": "cpu-1"}}}
    old = _statement([], cls="cpu-1", manifest=manifest)
    new = _statement([], cls="cpu-2", manifest=manifest)
    assert old.hardware_class == "cpu-1"
    assert [(c.name, c.recorded, c.now) for c in changed_inputs(old, new)] == [("hardware class", "cpu-1", "cpu-2")]


def test_read_statement_accepts_both_base64_alphabets(tmp_path: Path):
    statement = {"_type": "https://in-toto.io/Statement/v1", "predicate": {"x": "?>?>"}}
    raw = json.dumps(statement).encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        env = {"payloadType": "application/vnd.in-toto+json", "payload": encode(raw).decode().rstrip("="),
               "signatures": []}
        f = tmp_path / "a.jsonl"
        f.write_text(json.dumps(env) + "\n")
        assert read_statement(f) == statement
    (tmp_path / "b.jsonl").write_text("not json\n")
    with pytest.raises(IntegrityError):
        read_statement(tmp_path / "b.jsonl")


def _statement_for(manifest_text: bytes, manifest_path: str | None) -> dict:
    import hashlib

    params: dict = {"manifest": {"code": {"path": "."}}, "manifestDigest": {"sha256": hashlib.sha256(manifest_text).hexdigest()}}
    if manifest_path:
        params["manifestPath"] = manifest_path
    return {"predicate": {"buildDefinition": {"externalParameters": params}}}


def test_a_repository_root_finds_the_manifest_at_its_recorded_path(tmp_path: Path) -> None:
    from runner.reproduce import manifest_for

    text = b"name: x\n"
    (tmp_path / "repo" / "examples" / "exp").mkdir(parents=True)
    (tmp_path / "repo" / "examples" / "exp" / "experiment.yaml").write_bytes(text)
    statement = _statement_for(text, "examples/exp/experiment.yaml")
    found = manifest_for(statement, tmp_path / "att.jsonl", None, tmp_path / "repo")
    assert found == tmp_path / "repo" / "examples" / "exp" / "experiment.yaml"
    # The experiment's own folder still works.
    assert manifest_for(statement, tmp_path / "att.jsonl", None, found.parent) == found
    # A recorded path that climbs out of the root is never followed.
    assert manifest_for(_statement_for(text, "../repo/examples/exp/experiment.yaml"), tmp_path / "att.jsonl", None,
                        found.parent) == found


def test_hints_name_flags_the_command_has(tmp_path: Path) -> None:
    from runner.errors import UsageError
    from runner.reproduce import manifest_for

    (tmp_path / "repo").mkdir()
    statement = _statement_for(b"name: x\n", "examples/exp/experiment.yaml")
    with pytest.raises(UsageError) as rebuild:  # rebuild has no --manifest: its hint does not offer one
        manifest_for(statement, tmp_path / "att.jsonl", None, tmp_path / "repo", manifest_hint="")
    assert "--manifest" not in rebuild.value.message
    assert "examples/exp/experiment.yaml" in rebuild.value.message and "--code" in rebuild.value.message
    with pytest.raises(UsageError) as reproduce:
        manifest_for(statement, tmp_path / "att.jsonl", None, tmp_path / "repo")
    assert "--manifest FILE" in reproduce.value.message


def test_an_unreadable_file_beside_the_manifest_is_passed_over(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from runner.reproduce import _find_manifest

    text = b"name: x\n"
    (tmp_path / "a.yaml").write_bytes(b"other\n")
    (tmp_path / "b.yaml").write_bytes(text)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "a.yaml":  # root reads any mode: the refusal is simulated
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert _find_manifest(tmp_path, hashlib.sha256(text).hexdigest(), None) == tmp_path / "b.yaml"


def test_the_checked_code_tree_is_the_one_the_rerun_plans_with(tmp_path: Path, monkeypatch) -> None:
    import runner.plan
    from runner.context import RunOptions
    from runner.manifest import load_manifest
    from runner.reproduce import check_code

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    manifest = folder / "experiment.yaml"
    manifest.write_text((Path(__file__).resolve().parent.parent / "examples/quickstart/experiment.yaml").read_text())
    options = RunOptions(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    unrecorded = RecordedRun.from_statement({})
    tree = check_code(manifest, unrecorded, options)
    recorded = RecordedRun.from_statement({"predicate": {"buildDefinition": {"resolvedDependencies": [
        {"name": "code", "digest": {"sha256": tree.digest.removeprefix("sha256:")}}]}}})
    assert check_code(manifest, recorded, options) == tree
    loaded = load_manifest(manifest)

    def hashed_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("the code tree was hashed a second time")

    monkeypatch.setattr(runner.plan, "resolve_code", hashed_again)
    assert runner.plan.resolve_plan(loaded, options.own_paths(loaded.root), tree).code is tree
    (folder / "train.py").write_text("print('changed')\n")
    monkeypatch.undo()
    with pytest.raises(IntegrityError):
        check_code(manifest, recorded, options)
