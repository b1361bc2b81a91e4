"""Shared pieces of the benchmarks: timing medians, result rows, the Markdown table, machine facts."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Callable


def median_s(fn: Callable[[], Any], runs: int, warmup: int = 1) -> float:
    """Median wall time in seconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved_medians(timed: Sequence[Callable[[], Any]], runs: int, warmup: int = 1) -> list[float]:
    """Median wall times in seconds of commands timed in turn (a, b, …, a, b, …) after `warmup` rounds."""
    for _ in range(warmup):
        for fn in timed:
            fn()
    samples: list[list[float]] = [[] for _ in timed]
    for _ in range(runs):
        for fn, into in zip(timed, samples):
            start = time.perf_counter()
            fn()
            into.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def row(what: str, xrun_s: float, baseline_s: float | None, goal: float | None, note: str = "",
        baseline: str = "") -> dict[str, Any]:
    """One result row; `pass` is None where there is no goal or no baseline."""
    ratio = xrun_s / baseline_s if baseline_s else None
    passed = None if goal is None or ratio is None else ratio <= goal
    return {"what": what, "xrun_s": xrun_s, "baseline_s": baseline_s, "baseline": baseline, "ratio": ratio,
            "goal": goal, "pass": passed, "note": note}


def normalise(r: dict[str, Any]) -> dict[str, Any]:
    """Rows that report a bare timing (operation, median_ms) as result rows without a baseline."""
    if "what" in r:
        return r
    what = f"{r.get('operation', '?')} ({r.get('key', '-')}, {r.get('subjects', '?')} subjects)"
    return row(what, r.get("median_ms", 0) / 1000, None, None,
               note=f"min {r.get('min_ms')} ms, {r.get('runs')} runs, payload {r.get('payload_kib')} KiB")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    out = ["| what | xrun (median) | baseline (median) | ratio | goal | pass | note |",
           "|---|---|---|---|---|---|---|"]
    for r in map(normalise, rows):
        base = f"{_fmt_s(r['baseline_s'])} {r.get('baseline', '')}".strip() if r.get("baseline_s") else "–"
        ratio = f"{r['ratio']:.3f}" if r.get("ratio") is not None else "–"
        goal = f"≤ {r['goal']}" if r.get("goal") is not None else "–"
        passed = {True: "pass", False: "FAIL", None: "–"}[r.get("pass")]
        out.append(f"| {r['what']} | {_fmt_s(r['xrun_s'])} | {base} | {ratio} | {goal} | {passed} | {r.get('note', '')} |")
    return "\n".join(out)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None or not isinstance(seconds, (int, float)):
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, Docker version: recorded with every result."""
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line for line in f if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    docker = ""
    if shutil.which("docker"):
        docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                text=True).stdout.strip()
    return {"cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "cpu": cpu, "docker": docker,
            "python": platform.python_version(), "kernel": platform.release()}
