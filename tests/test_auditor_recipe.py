"""The README's auditor recipe, run literally from the repository's root, for the quickstart.

The quickstart is committed in a git repository as it sits in ours (examples/quickstart/), run there
with a key, then an auditor clones the repository and types the commands of README.md's "Auditors:
rebuild the image" block, read out of README.md so that docs and test cannot drift. `xrun reproduce
--code .` from the same root must work too and write nothing into the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.reproduce import read_statement

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> list[str]:
    """The `xrun …` lines of the first sh block under a README heading, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("xrun ")]


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True,
                          timeout=120).stdout


def _xrun(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "xrun"
    return subprocess.run([sys.executable, "-m", "runner.cli", *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)


def test_readme_auditor_recipe_from_the_repository_root(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    commands = readme_block("Auditors: rebuild the image")
    assert len(commands) == 1 and commands[0].startswith("xrun rebuild provenance.intoto.jsonl "), commands
    env = dict(os.environ, PYTHONPATH=str(REPO), XRUN_CACHE_DIR=str(tmp_path / "cache"),
               XDG_STATE_HOME=str(tmp_path / "state"))
    # The experiment's repository, laid out as ours: the quickstart in examples/quickstart/.
    origin = tmp_path / "origin"
    shutil.copytree(REPO / "examples" / "quickstart", origin / "examples" / "quickstart",
                    ignore=shutil.ignore_patterns(".xrun"))
    _git(origin, "init", "-q")
    _git(origin, "add", "-A")
    _git(origin, "commit", "-q", "-m", "quickstart")
    keys = tmp_path / "keys"
    assert _xrun(["xrun", "keygen", "--out", str(keys)], origin, env).returncode == 0
    run = _xrun(["xrun", "run", "examples/quickstart/experiment.yaml", "--key", str(keys / "xrun.key"), "--json",
                 "--quiet", "--runs-dir", str(tmp_path / "runs")], origin, env)
    assert run.returncode == 0, run.stderr
    attestation = Path(json.loads(run.stdout)["attestation"])
    params = read_statement(attestation)["predicate"]["buildDefinition"]["externalParameters"]
    assert params["manifestPath"] == "examples/quickstart/experiment.yaml"

    # The auditor: a clone, the attestation and the public key, nothing else.
    checkout = tmp_path / "checkout"
    _git(tmp_path, "clone", "-q", str(origin), str(checkout))
    shutil.copyfile(attestation, checkout / "provenance.intoto.jsonl")
    shutil.copyfile(keys / "xrun.pub", checkout / "xrun.pub")
    rebuilt = _xrun(shlex.split(commands[0]), checkout, env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "Traceback" not in rebuilt.stderr

    # reproduce from the same root: the recorded manifest is found by its recorded path; the re-run's
    # run directory goes outside the checkout, which stays exactly as cloned.
    trust = re.search(r"--(key|trust) xrun\.pub", commands[0])
    assert trust is not None
    reproduced = _xrun(["xrun", "reproduce", "provenance.intoto.jsonl", f"--{trust[1]}", "xrun.pub", "--code", ".",
                        "--json", "--quiet"], checkout, env)
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    run_dir = Path(json.loads(reproduced.stdout)["runDir"])
    assert run_dir.is_relative_to(tmp_path / "state" / "xrun" / "runs"), run_dir
    untracked = _git(checkout, "status", "--porcelain", "--ignored").split("\n")
    assert sorted(filter(None, untracked)) == ["?? provenance.intoto.jsonl", "?? xrun.pub"]
