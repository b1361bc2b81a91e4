"""Row 1: warm re-run of the quickstart (image and data cached) vs a bare `docker run` of the same
image and command with the same mounts and isolation flags. Goal ≤ 1.15.

Run by hand: `python bench/bench_run.py [--quick] [--before DIR]`. The first (cold) run bootstraps the
image. `--before DIR` also times the xrun of another checkout in turn (e.g. `git worktree add
/tmp/before main`), so that a change is measured against the code before it in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import interleaved_medians, machine, markdown, row  # noqa: E402

QUICKSTART = REPO / "examples" / "quickstart" / "experiment.yaml"


def _env(work: Path, repo: Path = REPO) -> dict[str, str]:
    """xrun with its bytecode cached, as a pip-installed xrun has it (pip compiles at install time).

    Under PYTHONDONTWRITEBYTECODE (set in some CI and sandbox images) every start compiled all of
    runner/ again: about 90 ms of the warm run that no installed xrun pays. The cache goes into
    the bench's own folder; the first (cold, untimed) run fills it.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return dict(env, PYTHONPATH=str(repo), PYTHONPYCACHEPREFIX=str(work / f"pycache-{repo.name}"))


def _xrun(runs_dir: Path, repo: Path = REPO) -> dict[str, Any]:
    env = _env(runs_dir.parent, repo)
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(QUICKSTART), "--json",
                           "--runs-dir", str(runs_dir)], capture_output=True, text=True, env=env, check=True,
                          cwd=repo)
    return json.loads(proc.stdout)


def _bare(image: str, data: Path, out: Path) -> None:
    out.mkdir(exist_ok=True)
    os.chmod(out, 0o777)
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "65534:65534",
                    "--cpus", "1", "--memory", "2g", "--pids-limit", "4096", "-w", "/workspace",
                    "-e", "XRUN_SEED=42", "-e", "PYTHONHASHSEED=42",
                    "--mount", f"type=bind,source={data},target=/data/iris.csv,readonly",
                    "--mount", f"type=bind,source={out},target=/outputs",
                    image, "python3", "train.py", "--epochs", "300"],
                   check=True, capture_output=True)


def run(quick: bool = False, before: Path | None = None) -> list[dict[str, Any]]:
    """Warm xrun run vs bare docker run (and the xrun of `before`, a checkout, in turn with both)."""
    runs = 3 if quick else 5
    with tempfile.TemporaryDirectory() as work:
        runs_dir = Path(work) / "runs"
        first = _xrun(runs_dir)  # cold: builds the image and fills the caches
        data = REPO / "examples" / "quickstart" / "data" / "iris.csv"
        counter = iter(range(1000))
        timed = [lambda: _xrun(runs_dir),
                 lambda: _bare(first["imageId"], data, Path(work) / f"out{next(counter)}")]
        if before is not None:
            timed.append(lambda: _xrun(Path(work) / "runs-before", before))
        # Interleaved, so that a busy spell of a shared machine weighs on every side alike.
        ours, base, *old = interleaved_medians(timed, runs)
    rows = [row("warm `xrun run` of the quickstart vs bare `docker run`", ours, base, 1.15,
                note=f"xrun overhead {(ours - base) * 1000:.0f} ms", baseline="docker run")]
    if old:
        rows.append(row(f"the same, the xrun of {before}", old[0], base, 1.15,
                        note=f"xrun overhead {(old[0] - base) * 1000:.0f} ms", baseline="docker run"))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", type=Path, metavar="DIR", help="another checkout of xrun, timed in turn")
    print(machine())
    options = parser.parse_args()
    print(markdown(run(options.quick, options.before)))
