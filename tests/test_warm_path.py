"""What a warm `xrun run` loads: only what the run uses (issue 19, row 1 of docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import probe_experiment

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent

# Runs the real CLI in a fresh interpreter, then says which of the heavy libraries it loaded.
_PROBE = """
import json, sys
from runner.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": sorted(m for m in ("cryptography", "runner.attest.keys") if m in sys.modules)}))
"""


def _run(tmp_path: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XRUN_SIGNING_KEY", "XRUN_TSA_URL", "XRUN_KEY_PASSWORD")}
    env["XRUN_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_unsigned_run_never_loads_the_crypto_library(tmp_path, base_image):
    manifest = probe_experiment(tmp_path / "exp", base_image)
    runs = str(tmp_path / "runs")
    unsigned = _run(tmp_path, "run", str(manifest), "--quiet", "--runs-dir", runs)
    assert unsigned == {"rc": 0, "loaded": []}
    # The same run with a key still signs, through the signing code loaded on demand.
    assert _run(tmp_path, "keygen", "--out", str(tmp_path / "keys"))["rc"] == 0
    signed = _run(tmp_path, "run", str(manifest), "--quiet", "--runs-dir", runs, "--key", str(tmp_path / "keys" / "xrun.key"))
    assert signed == {"rc": 0, "loaded": ["cryptography", "runner.attest.keys"]}
    latest = max((tmp_path / "runs").iterdir(), key=lambda p: p.name)
    assert (latest / "provenance.sigstore.json").is_file()


def test_engine_facts_asked_ahead_are_those_engine_info_gives(docker_client):
    from runner.provenance import ask_engine_info, engine_info

    assert ask_engine_info(docker_client)() == engine_info(docker_client)


def test_engine_facts_asked_ahead_raise_the_engines_error_where_they_are_used():
    from runner.provenance import ask_engine_info

    class GoneEngine:  # an engine that stops answering during the run
        def info(self):
            raise ConnectionError("engine gone")

    answer = ask_engine_info(GoneEngine())
    with pytest.raises(ConnectionError, match="engine gone"):
        answer()


# --- the manifest's schema verdicts (runner/manifest.py SchemaVerdict) --------------------------------------------

QUICKSTART = REPO / "examples" / "quickstart"


def _quickstart_copy(tmp_path: Path, text: str | None = None) -> Path:
    folder = tmp_path / "exp"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text("print('hi')\n")
    manifest = folder / "experiment.yaml"
    manifest.write_text(text if text is not None else (QUICKSTART / "experiment.yaml").read_text())
    return manifest


def _refusal(manifest: Path, verdicts: Path | None) -> list[str]:
    from runner.errors import ManifestError
    from runner.manifest import load_manifest

    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest, verdicts=verdicts)
    return [caught.value.message, *caught.value.lines]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_manifest_that_passed_is_not_schema_checked_again(tmp_path):
    from runner.manifest import load_manifest

    manifest, verdicts = _quickstart_copy(tmp_path), tmp_path / "verdicts"
    first = load_manifest(manifest, verdicts=verdicts)
    assert len(_files(verdicts)) == 1
    # A fresh interpreter loads the same manifest without loading jsonschema at all.
    code = ("import sys; from pathlib import Path; from runner.manifest import load_manifest; "
            "m = load_manifest(sys.argv[1], verdicts=Path(sys.argv[2])); "
            "print(m.sha256, 'jsonschema' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(manifest), str(verdicts)], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert proc.stdout.split() == [first.sha256, "False"]
    assert load_manifest(manifest, verdicts=verdicts) == first


def test_a_changed_manifest_is_checked_again_and_refused_as_without_verdicts(tmp_path):
    from runner.manifest import load_manifest

    manifest, verdicts = _quickstart_copy(tmp_path), tmp_path / "verdicts"
    load_manifest(manifest, verdicts=verdicts)
    manifest.write_text(manifest.read_text().replace("global: 42", "global: forty-two"))
    refused = _refusal(manifest, verdicts)
    assert refused == _refusal(manifest, None) and "seeds.global" in "\n".join(refused)
    assert len(_files(verdicts)) == 1  # still only the first manifest's


def test_an_invalid_manifest_is_never_remembered(tmp_path):
    manifest = _quickstart_copy(tmp_path, (QUICKSTART / "experiment.yaml").read_text() + "colour: blue\n")
    verdicts = tmp_path / "verdicts"
    first = _refusal(manifest, verdicts)
    assert _files(verdicts) == []
    assert _refusal(manifest, verdicts) == first == _refusal(manifest, None)


def test_a_verdict_under_another_schema_is_not_used(tmp_path, monkeypatch):
    import runner.manifest

    # Under a schema that allows any field, the manifest with an unknown one passes and is remembered…
    manifest = _quickstart_copy(tmp_path, (QUICKSTART / "experiment.yaml").read_text() + "colour: blue\n")
    verdicts = tmp_path / "verdicts"
    loose = tmp_path / "schemas"
    loose.mkdir()
    (loose / "experiment.schema.json").write_text(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema"}))
    real_resource_dir = runner.manifest.resource_dir
    monkeypatch.setattr(runner.manifest, "resource_dir", lambda name: loose if name == "schemas" else real_resource_dir(name))
    runner.manifest.load_schema.cache_clear()
    try:
        runner.manifest.load_manifest(manifest, verdicts=verdicts)
    finally:
        runner.manifest.load_schema.cache_clear()  # the loose schema must not outlive this test
    assert len(_files(verdicts)) == 1
    # …but xrun's own schema has not seen it: checked again, refused.
    monkeypatch.setattr(runner.manifest, "resource_dir", real_resource_dir)
    assert any("colour" in line for line in _refusal(manifest, verdicts))


def test_a_verdict_file_that_is_not_its_key_counts_as_none(tmp_path):
    from runner.manifest import SchemaVerdict

    manifest = _quickstart_copy(tmp_path, (QUICKSTART / "experiment.yaml").read_text() + "colour: blue\n")
    verdict = SchemaVerdict.of(tmp_path / "verdicts", manifest.read_bytes())
    verdict.file.parent.mkdir(parents=True)
    verdict.file.write_bytes(verdict.key.encode()[:10])  # a torn or foreign file
    assert not verdict.passed()
    assert any("colour" in line for line in _refusal(manifest, tmp_path / "verdicts"))


def test_the_rules_a_schema_cannot_express_are_checked_on_every_load(tmp_path):
    from runner.manifest import load_manifest

    manifest = _quickstart_copy(tmp_path, (QUICKSTART / "experiment.yaml").read_text().replace("path: .", "path: src"))
    (manifest.parent / "src").mkdir()
    verdicts = tmp_path / "verdicts"
    load_manifest(manifest, verdicts=verdicts)
    (manifest.parent / "src").rmdir()
    assert any("code.path" in line for line in _refusal(manifest, verdicts))
