"""Row 3: hashing a 10,000-file tree (code tree and output hashing) vs sha256sum with xargs -P2, and vs `dvc add`;
what choosing the code tree adds to hashing it (ignore rules and the secret check, runner/codetree.py).

Run by hand: `python bench/bench_hash.py [--quick]`. DVC is installed into the benchmark's own venv
(bench/.venv-dvc) on first use; without network the DVC row is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, markdown, median_s, row  # noqa: E402
from runner.codetree import OwnPaths, collect  # noqa: E402
from runner.hashing import hash_tree, tree_digest  # noqa: E402
from runner.manifest import CodeSpec  # noqa: E402

DVC_VENV = Path(__file__).resolve().parent / ".venv-dvc"


def make_tree(root: Path, files: int, size: int = 4096) -> None:
    """`files` files of `size` random bytes in 100 folders."""
    for i in range(files):
        folder = root / f"d{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))


def _sha256sum(root: Path) -> None:
    subprocess.run(f"find {root} -type f -print0 | xargs -0 -P2 sha256sum > /dev/null", shell=True, check=True)


def _dvc() -> Path | None:
    exe = DVC_VENV / "bin" / "dvc"
    if exe.exists():
        return exe
    venv.create(DVC_VENV, with_pip=True)
    proc = subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc"], capture_output=True)
    return exe if proc.returncode == 0 and exe.exists() else None


def _dvc_add(dvc: Path, tree: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(tree, Path(work) / "data", copy_function=os.link)
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=work, check=True)
        subprocess.run([str(dvc), "add", "-q", "data"], cwd=work, check=True, capture_output=True)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for hashing a many-file tree."""
    files, runs = (1_000, 3) if quick else (10_000, 5)
    with tempfile.TemporaryDirectory() as work:
        tree = Path(work) / "tree"
        make_tree(tree, files)
        ours = median_s(lambda: tree_digest(hash_tree(tree)), runs)
        base = median_s(lambda: _sha256sum(tree), runs)
        rows = [row(f"hash a {files:,}-file tree (4 KiB files)", ours, base, 1.3,
                    note=f"{files / ours:,.0f} files/s", baseline="find|xargs -P2 sha256sum")]
        # The code tree as `xrun plan` chooses it: walk with the ignore rules, hash, each file's head
        # checked for secrets from the hashing read; against hashing the bare tree.
        spec = CodeSpec(path=tree, exclude=("*.tmp", "build/"))
        chosen = median_s(lambda: tree_digest(collect(spec, OwnPaths()).files), runs)
        rows.append(row(f"code tree of {files:,} files: rules + secret check + hash", chosen, ours, 1.3,
                        note=f"{(chosen - ours) * 1000:+.0f} ms over hashing alone", baseline="hash alone"))
        dvc = _dvc()
        if dvc is not None:
            dvc_s = median_s(lambda: _dvc_add(dvc, tree), 3 if quick else 5)
            rows.append(row(f"hash a {files:,}-file tree vs dvc add", ours, dvc_s, 0.5, baseline="dvc add"))
        else:
            rows.append(row("hash vs dvc add", ours, None, 0.5, note="skipped: dvc could not be installed"))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(machine())
    print(markdown(run(parser.parse_args().quick)))
