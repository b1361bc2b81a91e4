"""Run every benchmark and print one Markdown table (and write JSON): `python -m bench [--quick] [--only NAME]`.

Run by hand, never in CI's test run. Each row: what, xrun's median, the baseline's median, the ratio,
the goal, pass/fail. Results go to bench/results/latest.json; copy the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, markdown  # noqa: E402

MODULES = ["bench_run", "bench_fetch", "bench_hash", "bench_build", "bench_attest", "bench_cluster", "bench_report"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs (a smoke test)")
    parser.add_argument("--only", action="append", help="run only these modules (e.g. bench_hash)")
    args = parser.parse_args()
    rows = []
    started = time.monotonic()
    for name in args.only or MODULES:
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}")
            rows += module.run(args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            rows.append({"what": f"{name}: ERROR {type(exc).__name__}: {exc}", "xrun_s": None, "baseline_s": None,
                         "ratio": None, "goal": None, "pass": False, "note": ""})
        print(f"# {name} done in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    facts = machine()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": facts,
              "quick": args.quick, "seconds": round(time.monotonic() - started), "rows": rows}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"{result['date']} · {facts['cores']} cores · {facts['memory_gib']} GiB · {facts['cpu']} · "
          f"Docker {facts['docker']} · Python {facts['python']}\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
