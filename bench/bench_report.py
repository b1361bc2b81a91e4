"""`xrun report` at sweep scale: a 200-member Slurm sweep (100 Debian packages, 30 wheels, 50 steps per run),
written, then opened in headless chromium. Rows: the write, the page's size against its 6 MB goal, and the time
to open it (every plot drawn) against 3 s, beside the same browser opening an empty page.

Run by hand: `python bench/bench_report.py [--quick]` (Debian's chromium, `pip install 'xrun[report]'`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.common import machine, markdown, row  # noqa: E402
from runner.report.html import write_report  # noqa: E402
from sweepruns import SWEEP, write_sweep  # noqa: E402

GOAL_OPEN_S = 3.0
GOAL_BYTES = 6_000_000


def _open(page: Path) -> tuple[float, int | None]:
    """Wall seconds for chromium to load the page and run its scripts, and the page's own data-ready-ms."""
    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    start = time.perf_counter()
    done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--virtual-time-budget=10000", "--window-size=1280,2000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=300, check=True)
    seconds = time.perf_counter() - start
    found = re.search(r'data-ready-ms="(\d+)"', done.stdout)
    return seconds, int(found.group(1)) if found else None


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Write and open the report of a 200-member (quick: 50) sweep."""
    members, tries = (50, 2) if quick else (200, 3)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        write_sweep(root / "runs", members)
        page = root / "report.html"
        written = write_report(root / "runs", [], [SWEEP], page, keys=[])
        blank = root / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body>blank</body></html>")
        opened = [_open(page) for _ in range(tries)]
        empty = statistics.median(_open(blank)[0] for _ in range(tries))
    wall = statistics.median(s for s, _ in opened)
    ready = [ms for _, ms in opened if ms is not None]
    in_page = statistics.median(ready) / 1000 if ready else float("nan")
    return [
        row(f"`xrun report` of a {members}-member sweep: write (select, read {members} attestations, render)",
            written.seconds, None, None, note=f"{written.size_bytes / 1e6:.2f} MB (goal ≤ 6 MB: "
            f"{'pass' if written.size_bytes <= GOAL_BYTES else 'FAIL'})"),
        row(f"open it in headless chromium until every plot is drawn (page's own clock, median of {tries})",
            in_page, GOAL_OPEN_S, 1.0, baseline="the 3 s goal",
            note=f"chromium process wall {wall:.2f} s vs {empty:.2f} s for an empty page"),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(machine())
    print(markdown(run(parser.parse_args().quick)))
