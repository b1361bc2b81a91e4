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
import sys
from runner.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": sorted(m for m in ("cryptography", "runner.attest.keys") if m in sys.modules)}))
""".replace("import sys", "import json, sys", 1)


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
