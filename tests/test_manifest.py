"""The manifest: schema, the rules a schema cannot express, and the invalid-manifest corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import ManifestError, UsageError
from runner.manifest import load_manifest, parse_duration

HERE = Path(__file__).parent / "manifests"
CORPUS = sorted((HERE / "invalid").glob("*.yaml"))
REPO = Path(__file__).resolve().parent.parent


def expectations(path: Path) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("# expect:")]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


def test_valid_manifest_loads():
    m = load_manifest(HERE / "valid.yaml")
    assert m.name == "corpus-valid"
    assert m.data[0].digests == {"sha256": "1f" * 32}
    assert m.run.timeout_s == 1800
    assert m.run.command == ("python3", "train.py")
    assert m.outputs[1].metrics


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_a_clear_line(path: Path):
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    err = info.value
    assert err.exit_code == 2
    text = "\n".join([err.message, *err.lines])
    for expected in expectations(path):
        assert expected in text, f"{expected!r} not in:\n{text}"
    # Every problem line names the file and, where known, the line.
    for line in err.lines:
        assert line.startswith(str(path)), line
        assert "\n" not in line


def test_all_problems_reported_at_once():
    with pytest.raises(ManifestError) as info:
        load_manifest(HERE / "invalid" / "42-multiple-problems.yaml")
    assert len(info.value.lines) >= 2


def test_problem_lines_carry_line_numbers():
    with pytest.raises(ManifestError) as info:
        load_manifest(HERE / "invalid" / "15-bad-sha256.yaml")
    (line,) = info.value.lines
    number = int(re.search(r"15-bad-sha256.yaml:(\d+):", line).group(1))
    source = (HERE / "invalid" / "15-bad-sha256.yaml").read_text().splitlines()
    assert "sha256: 12ab" in source[number - 1]


def test_yaml_bomb_fails_fast():
    import time

    start = time.monotonic()
    with pytest.raises(ManifestError):
        load_manifest(HERE / "invalid" / "38-yaml-bomb.yaml")
    assert time.monotonic() - start < 5


def test_recursive_alias_is_refused(tmp_path: Path):
    f = tmp_path / "x.yaml"
    f.write_text("a: &a [1, *a]\n")
    with pytest.raises(ManifestError, match="recursive|refers to itself"):
        load_manifest(f)


def test_missing_file_is_usage_error(tmp_path: Path):
    with pytest.raises(UsageError, match="no such file"):
        load_manifest(tmp_path / "nope.yaml")


def test_tag_with_digest_accepted_digest_wins(tmp_path: Path):
    text = (HERE / "valid.yaml").read_text().replace("127.0.0.1:5000/xrun-base@", "127.0.0.1:5000/xrun-base:v1@")
    (tmp_path / "code").mkdir()
    (tmp_path / "m.yaml").write_text(text)
    from runner.plan import parse_image_ref

    ref = parse_image_ref(load_manifest(tmp_path / "m.yaml").image.base)
    assert ref.tag == "v1" and ref.pinned == "127.0.0.1:5000/xrun-base@sha256:" + "0" * 64


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5m", 90), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def _xrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


@pytest.mark.parametrize("path", CORPUS[:12] + CORPUS[-6:], ids=lambda p: p.stem)
def test_cli_validate_exit_2_without_traceback(path: Path):
    proc = _xrun("validate", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("xrun: error:")


def test_cli_validate_json():
    import json

    proc = _xrun("validate", "--json", str(HERE / "invalid" / "42-multiple-problems.yaml"))
    assert proc.returncode == 2
    body = json.loads(proc.stdout)
    assert body["valid"] is False and len(body["problems"]) >= 2


def test_cli_schema_prints_the_schema():
    import json

    proc = _xrun("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["$schema"].startswith("https://json-schema.org/draft/2020-12")


def test_cli_version_and_help():
    assert _xrun("--version").stdout.startswith("xrun ")
    out = _xrun("--help").stdout
    for sub in ("run", "validate", "plan", "schema"):
        assert sub in out
    assert "example:" in _xrun("plan", "--help").stdout
